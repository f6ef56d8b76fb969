"""Every read the product makes from a user's path is bounded: regular files only, a size cap
per kind of file, and JSON with a nesting limit. A FIFO would block `open` forever, a
character device such as /dev/zero never ends, and a 10 GB "recipe" is a mistake: each is one
`error:` line naming the path (exit 2), never a hang or a MemoryError.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from orca_recipe.errors import UserError

MIB = 1 << 20
# Caps by kind of file: far above any real one, far below what would hurt.
LIMITS = {
    "recipe": 4 * MIB,
    "prompt": 1 * MIB,
    "chat template": 1 * MIB,
    "DeepSpeed config": 4 * MIB,
    "data": 64 * 1024 * MIB,  # a seeds / eval file: 64 GiB
    "data line": 16 * MIB,    # one JSON Lines record
    "training progress": 4096,  # the progress plugin's {step, max_steps, loss, epoch}
    "run file": 256 * MIB,    # a run directory's plan.json, manifest.json, stage.json, batch job, report
    "model config": 16 * MIB,  # a model folder's config.json
    "licence": 16 * MIB,      # a data folder's LICENSE, dataset card, dataset_info.json
    "price map": 64 * MIB,    # litellm's bundled model price file
}
MAX_JSON_DEPTH = 64

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str | os.PathLike[str], what: str, *, key: str | None = None, where: str | None = None,
                  allow_dir: bool = False) -> os.stat_result:
    """stat `path` (following links) and refuse anything but a regular file (or, with
    `allow_dir`, a folder) within its kind's size cap. Never opens it."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {p}", where=where, key=key) from None
    except (OSError, ValueError) as e:  # a loop of links, a name too long, a NUL byte
        raise UserError(f"cannot read {what} {p}: {getattr(e, 'strerror', None) or e}", where=where, key=key) from None
    if stat.S_ISDIR(st.st_mode) and allow_dir:
        return st
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {p} is {file_kind(st.st_mode)}; expected a regular file", where=where, key=key)
    limit = LIMITS.get(what, LIMITS["data"])
    if st.st_size > limit:
        raise UserError(f"{what} {p} is {st.st_size / MIB:,.1f} MiB, over the {limit / MIB:,.0f} MiB a {what} may be",
                        where=where, key=key)
    return st


def read_text(path: str | os.PathLike[str], what: str, *, key: str | None = None, where: str | None = None) -> str:
    """The UTF-8 text of a regular file of at most LIMITS[what] bytes."""
    check_regular(path, what, key=key, where=where)
    limit = LIMITS.get(what, LIMITS["data"])
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}", where=where, key=key) from None
    if len(data) > limit:  # it grew between stat and read
        raise UserError(f"{what} {path} is over the {limit / MIB:,.0f} MiB a {what} may be", where=where, key=key)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason})", where=where, key=key) from None


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping past `limit`."""
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > limit:
            return depth
        level = [v for x in level if isinstance(x, (dict, list)) for v in (x.values() if isinstance(x, dict) else x)]
    return depth


def json_loads(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads that refuses nesting past `max_depth` (ValueError) instead of a RecursionError,
    and NaN / Infinity, which are not JSON and not text."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if isinstance(value, (dict, list)) and _depth(value, max_depth) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def read_json(path: str | os.PathLike[str], what: str, *, key: str | None = None, where: str | None = None) -> Any:
    """The JSON value of a regular UTF-8 file of at most LIMITS[what] bytes: a UserError when the
    file cannot be read as such, a ValueError when it is not JSON."""
    return json_loads(read_text(path, what, key=key, where=where))


def maybe_json(path: str | os.PathLike[str], what: str) -> Any:
    """`read_json`, or None where the file is missing, not a regular file, too large, not text
    or not JSON: for files the product wrote itself and only consults (a marker, a lock note)."""
    try:
        return read_json(path, what)
    except (UserError, ValueError):
        return None

