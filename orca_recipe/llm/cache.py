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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID
"""
_CHUNK = 500  # keys per SELECT ... IN (...), under SQLite's variable limit


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class RequestCache:
    def __init__(self, path: str | Path, *, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, each statement is its own committed transaction
        # unless we open one explicitly (put_many).
        self._db = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)

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
        return json.loads(row[0]) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """The cached values of those `keys` that are present (missing keys are left out)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for k, v in self._db.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk):
                    out[k] = json.loads(v)
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
