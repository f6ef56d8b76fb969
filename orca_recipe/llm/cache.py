"""The request cache: a finished LLM request is never paid for twice, even after a crash.

One SQLite file in WAL mode; one row per sample, keyed by a sha256 of (model identity, messages,
sampling params, sample index), holding the completion as JSON (text, finish reason, tokens,
cost). Every `put` is committed before it returns: in WAL mode with ``synchronous=NORMAL`` a
committed transaction survives the process being killed (only a power cut / OS crash can take
the last few back). API keys never reach this file: callers store completions, not requests.

All access goes through one connection guarded by a lock, so any number of coroutines on one
event loop (or threads) can share a `RequestCache` without "database is locked"; other
processes opening the same file wait on ``busy_timeout``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from orca_recipe.errors import UserError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID
"""
_CHUNK = 500  # keys per SELECT ... IN (...), under SQLite's variable limit
SCHEMA_VERSION = 1  # PRAGMA user_version of a cache this code wrote


def well_formed(value: Any) -> bool:
    """Whether a cached value is a completion this code wrote: anything else (a `{}`, a string,
    negative tokens) is a miss, never an empty answer."""
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        return False
    if not (value.get("finish_reason") is None or isinstance(value.get("finish_reason"), str)):
        return False
    for k in ("prompt_tokens", "completion_tokens"):
        v = value.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            return False
    cost = value.get("cost")
    return cost is None or (isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0)


def _truncated(path: Path) -> str | None:
    """Why a SQLite file is shorter than its own header says (a truncated copy), or None. SQLite
    would read such a file as if the cut-off rows had never been written, and pay for them again."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(100)
    except OSError:
        return None
    if size == 0 or len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return None if size == 0 else ("not a SQLite database" if not head.startswith(b"SQLite format 3\x00") else "truncated header")
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages, changes, valid_for = (int.from_bytes(head[i:i + 4], "big") for i in (28, 24, 92))
    if changes == valid_for and pages and size < page * pages:
        return f"truncated: {size:,} bytes where its header says {page * pages:,}"
    return None


def _unusable(path: Path, why: str) -> UserError:
    return UserError(f"the request cache {path} cannot be used ({why}); move it aside (the run directory is untouched and a "
                     f"new cache starts empty) or pass --cache another file")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class RequestCache:
    def __init__(self, path: str | Path, *, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.damaged = 0  # reads of values that were not well-formed completions (treated as misses)
        if self.path.is_dir():
            raise _unusable(self.path, "it is a directory")
        if self.path.exists() and not self.path.is_file():
            raise _unusable(self.path, "it is not a regular file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _unusable(self.path, f"its folder cannot be made: {e.strerror or e}") from None
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, each statement is its own committed transaction
        # unless we open one explicitly (put_many).
        try:
            self._db = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
            with self._lock:
                self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._check_and_create()
        except sqlite3.Error as e:  # not a database, truncated, read-only, no permission
            raise _unusable(self.path, f"SQLite: {e}") from None

    def _check_and_create(self) -> None:
        """Integrity and schema on open: a damaged file is one clear error, not a traceback mid-run."""
        truncated = _truncated(self.path)
        if truncated:
            raise sqlite3.DatabaseError(truncated)
        ok = self._db.execute("PRAGMA quick_check").fetchone()
        if not ok or ok[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {ok[0] if ok else 'no answer'}")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "responses" in tables:
            cols = [r[1] for r in self._db.execute("PRAGMA table_info(responses)")]
            if cols != ["key", "value", "created"]:
                raise sqlite3.DatabaseError(f"table 'responses' has columns {cols}, not this version's [key, value, created]")
        elif tables:
            raise sqlite3.DatabaseError(f"not an orca-recipe request cache (tables: {', '.join(sorted(tables))})")
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"written by a newer orca-recipe (schema {version}; this one reads {SCHEMA_VERSION})")
        self._db.execute(_SCHEMA)
        if version == 0:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _value(self, text: str) -> dict | None:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = None
        if well_formed(value):
            return value
        self.damaged += 1
        return None

    # ---- keys ------------------------------------------------------------------------------
    @staticmethod
    def key(identity: str, messages: list[dict], params: Mapping[str, Any], sample_index: int) -> str:
        """sha256 of the canonical JSON of the request's identity. Params set to None are
        dropped, so ``{"temperature": None}`` and ``{}`` are the same request."""
        clean = {k: v for k, v in dict(params).items() if v is not None}
        payload = {"identity": identity, "messages": messages, "params": clean, "sample_index": int(sample_index)}
        return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()

    # ---- reads -----------------------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return self._value(row[0]) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """The cached values of those `keys` that are present (missing keys are left out)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for k, v in self._db.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk):
                    value = self._value(v)
                    if value is not None:
                        out[k] = value
        return out

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    # ---- writes ----------------------------------------------------------------------------
    def put(self, key: str, value: dict) -> None:
        """Store and commit at once (autocommit)."""
        text = _canonical(value)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                             (key, text, time.time()))

    def put_many(self, items: Iterable[tuple[str, dict]]) -> None:
        """Store several rows in one transaction, committed before returning."""
        rows = [(k, _canonical(v), time.time()) for k, v in items]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass
                self._db.close()
                self._db = None  # type: ignore[assignment]

    def __enter__(self) -> "RequestCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r})"
