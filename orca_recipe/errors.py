"""Errors a user can cause: the CLI prints their message (one line) and exits 2."""


class UserError(Exception):
    """An error the user can fix (bad input, missing install, unreachable endpoint).

    The CLI prints ``str(error)`` without a traceback and exits with status 2.
    """
