"""Content identities for data files and model folders: what they hold, never where they are.

Fingerprints and request-cache keys use these, so a project folder copied elsewhere keeps
its finished stages and its cache, while new weights in the same folder (or a changed
config or tokenizer) are a different model.

Small files are hashed whole. A large file (weights) is identified by its size and a hash of
three 1 MiB samples (start, middle, end): retrained weights differ everywhere, and hashing
a 15 GB checkpoint in full on every `plan` would cost half a minute.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

WHOLE_FILE_LIMIT = 64 << 20  # hashed in full up to 64 MiB
SAMPLE = 1 << 20


def _file_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            for offset in (0, size // 2 - SAMPLE // 2, size - SAMPLE):
                f.seek(offset)
                h.update(f.read(SAMPLE))
    return h.hexdigest()[:16]


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
