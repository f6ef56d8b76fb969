"""Where a run writes, checked before it writes, and held by one run at a time.

A --run-dir that is a file (or lies under one), a folder without write permission, a --cache
that is a folder: each is one `error:` line before anything starts. Two `run`s on one run
directory would each pay for the same requests; the second is refused, naming the first
(`filelock`: an OS lock, so a killed run's lock goes with its process).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orca_recipe.bounded import maybe_json
from orca_recipe.errors import UserError


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: Path, flag: str) -> None:
    """`path` is (or can become) a folder this process can write into."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a directory")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"{flag} {path} cannot be made: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} is not writable here (no write permission on {base})")


def check_cache_file(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"--cache {path} is a directory; it names the request cache's SQLite file (e.g. {path / 'requests.sqlite'})")
    if path.exists() and not path.is_file():
        raise UserError(f"--cache {path} is not a regular file")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise UserError(f"--cache {path} is not readable and writable by this user")
    check_writable_dir(path.parent, "--cache's folder")


@contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """The run directory's lock for the length of a run; refused at once when another run holds it."""
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    owner = run_dir / ".run.owner"
    lock = FileLock(str(run_dir / ".run.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        held = "another process"
        for _ in range(20):  # the holder writes its name just after it takes the lock
            who = maybe_json(owner, "run file")
            if isinstance(who, dict) and isinstance(who.get("since", 0), (int, float)):
                held = f"pid {who.get('pid')} since {time.strftime('%H:%M:%S', time.localtime(who.get('since', 0)))}"
                break
            time.sleep(0.05)
        raise UserError(f"another run ({held}) is using {run_dir}; wait for it to finish, or pass another --run-dir") from None
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "since": time.time()}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
