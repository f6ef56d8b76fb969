"""Errors a user can cause. The CLI prints them as one message and exits 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: bad input, a missing install, an unreachable endpoint.

    `where` is "file:line:col" when known and `key` the dotted recipe key; both lead the
    message so the user can jump straight to the spot.
    """

    def __init__(self, message: str, *, where: str | None = None, key: str | None = None):
        self.where = where
        self.key = key
        super().__init__(message)

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        keypart = f"{self.key}: " if self.key else ""
        return f"{prefix}{keypart}{self.args[0]}"
