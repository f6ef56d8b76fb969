"""What can go wrong with a request, in the door's own terms.

Every transport turns its failures into one `Failure` with a `kind` (what the door should do
about it), a short `reason` a person can read, and the server's ``Retry-After`` if it sent one.
The door then raises `LLMError` (this request failed for good: a failures row) or
`EndpointError` (nothing will work until the user fixes something: exit 2).
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from typing import Mapping

from orca_recipe.errors import UserError

# What to do about a failure.
RETRY = "retry"        # 429, 5xx, timeouts, dropped connections, unreadable bodies
FAIL = "fail"          # this request is bad (400, 422): retrying will not help
AUTH = "auth"          # the key is missing or rejected: fatal for the endpoint
NOTFOUND = "notfound"  # no such model at this endpoint: fatal
CONFIG = "config"      # litellm cannot tell the provider: fatal
QUOTA = "quota"        # the account is out of credit: fatal


class LLMError(Exception):
    """One request failed for good (after retries, or a 400-type error). `reason` is short."""

    def __init__(self, reason: str, *, endpoint: str | None = None, attempts: int = 0):
        self.reason = reason
        self.endpoint = endpoint
        self.attempts = attempts
        where = f"models.{endpoint}: " if endpoint else ""
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{where}{reason}{tries}")


class EndpointError(UserError):
    """The endpoint cannot work at all: no key, key rejected, unknown model, unreachable."""


class Failure(Exception):
    """One failed attempt, classified by the transport that saw it."""

    def __init__(self, kind: str, reason: str, *, status: int | None = None, retry_after: float | None = None,
                 refused: bool = False):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.refused = refused  # the connection was refused: nobody listens at the api_base
        self.attempts = 1


def kind_of_status(status: int, body: str = "") -> str:
    """How the door treats an HTTP status (the OpenAI error conventions every compatible server follows)."""
    if status in (401, 403):
        return AUTH
    if status == 404:
        return NOTFOUND
    if status == 429:
        low = body.lower()
        return QUOTA if "insufficient_quota" in low or "exceeded your current quota" in low else RETRY
    if status in (408, 409, 425) or status >= 500:
        return RETRY
    if 400 <= status < 500:
        return FAIL
    return RETRY  # 1xx/3xx: nothing a chat completion should answer with; try again


def http_failure(status: int, body: str, headers: Mapping[str, str] | None, where: str = "") -> Failure:
    """A non-200 answer as a `Failure`: its kind by status, the server's words, its Retry-After."""
    kind = kind_of_status(status, body)
    return Failure(kind, f"{where}HTTP {status}: {server_words(body)}", status=status,
                   retry_after=retry_after(headers) if kind == RETRY else None)


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds, or an HTTP date)."""
    if not headers:
        return None
    try:
        lower = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    except (TypeError, ValueError):
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0), ("llm_provider-retry-after", 1.0)):
        v = lower.get(name)
        if v is None:
            continue
        try:
            return max(0.0, float(v) * scale)
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(v).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    return None


_JSON_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"')


def server_words(body: str, limit: int = 200) -> str:
    """The server's own message out of an error body (OpenAI's ``{"error": {"message": ...}}``), else the body."""
    m = _JSON_MESSAGE.search(body)
    text = m.group(1).replace('\\"', '"') if m else body
    text = " ".join(text.split("Traceback (most recent call last)")[0].split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- secrets ----------------------------------------------------------------------------------
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",}]+")
_SK = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")


_SECRET_NAME = re.compile(r"(?i)(api_?key|token|secret|password|passwd|credential)")


def process_secrets(names: list[str] | None = None) -> list[str]:
    """Every secret value this process holds: the variables `names` (a recipe's api_key_env) and
    any variable whose name says it is one (OPENAI_API_KEY, HF_TOKEN, ...), longest first."""
    found = {os.environ.get(n, "") for n in names or []}
    found |= {v for k, v in os.environ.items() if _SECRET_NAME.search(k)}
    return sorted((v for v in found if len(v) >= 8), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """The text with every secret, bearer token and ``sk-...`` key replaced by ``***``."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    text = _BEARER.sub(r"\1***", text)
    return _SK.sub("sk-***", text)
