"""The run directory on disk: atomic writes, datasets as JSONL, manifests written last."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Rows as JSON lines (what `datasets.load_dataset("json", ...)` reads), atomically."""
    import json

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    import json

    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_manifest(stage_dir: Path) -> dict | None:
    import json

    p = stage_dir / "manifest.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None  # a torn manifest means the stage is not complete


def write_manifest(stage_dir: Path, manifest: dict) -> None:
    """Written last: its presence with `complete: true` is what marks a stage done."""
    import json

    atomic_write_text(stage_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str))
