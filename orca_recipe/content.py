"""Content identities for data files and model folders: what they hold, never where they are.

Fingerprints and request-cache keys use these, so a project folder copied elsewhere keeps
its finished stages and its cache, while new weights in the same folder (or a changed
config or tokenizer) are a different model.

Every file is identified by the sha256 of all its bytes: a same-length edit anywhere in a
200 MB seeds file (`#### 72` -> `#### 73`) is a new identity. A large file's digest is
remembered by (path, size, mtime, inode) in `$ORCA_RECIPE_HOME/content-ids.json`, so a rerun or
a `plan` does not hash a 15 GB checkpoint again while it is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

REMEMBER_FROM = 8 << 20  # digests of files this large are remembered across processes
_memo: dict[str, str] | None = None


def _memo_path() -> Path:
    from orca_recipe.home import cache_home

    return cache_home() / "content-ids.json"


def _remembered() -> dict[str, str]:
    global _memo
    if _memo is None:
        from orca_recipe.bounded import maybe_json

        loaded = maybe_json(_memo_path(), "run file")
        _memo = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
    return _memo


def _remember(stamp: str, digest: str) -> None:
    memo = _remembered()
    memo[stamp] = digest
    try:
        from orca_recipe.store import atomic_write_text

        atomic_write_text(_memo_path(), json.dumps(memo))
    except OSError:
        pass  # a read-only home: the digest is only not remembered


def _file_digest(path: Path, size: int) -> str:
    st = path.stat()
    stamp = f"{path.resolve()}\0{size}\0{st.st_mtime_ns}\0{st.st_ino}"
    if size >= REMEMBER_FROM and (hit := _remembered().get(stamp)):
        return hit
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()[:16]
    if size >= REMEMBER_FROM:
        _remember(stamp, digest)
    return digest


def content_id(path: str | os.PathLike[str] | None) -> str:
    """A 16-hex identity of a file's or a folder's content; "missing" if there is nothing.

    A folder is the sorted (relative name, size, digest) of its files, hidden caches and
    Axolotl's intermediate `checkpoint-N` folders left out.
    """
    if path is None:
        return "missing"
    p = Path(path)
    if p.is_file():
        return _file_digest(p, p.stat().st_size)
    if not p.is_dir():
        return "missing"
    h = hashlib.sha256()
    for q in sorted(p.rglob("*")):
        rel = q.relative_to(p)
        if not q.is_file() or any(part.startswith((".", "checkpoint-")) for part in rel.parts):
            continue
        size = q.stat().st_size
        h.update(f"{rel.as_posix()}\0{size}\0{_file_digest(q, size)}\n".encode())
    return h.hexdigest()[:16]
