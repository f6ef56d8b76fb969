"""The run directory on disk: atomic writes, datasets as JSONL, manifests written last."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, ValidationError


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
    """A dataset the run wrote: a regular file of JSON objects, one a line, each line within the
    "data line" cap; a damaged one is one UserError naming its file:line."""
    from orca_recipe.bounded import LIMITS, check_regular, json_loads
    from orca_recipe.errors import UserError

    check_regular(path, "data")
    limit = LIMITS["data line"]
    rows: list[dict] = []
    n = 0
    try:
        with path.open(encoding="utf-8") as f:
            while True:
                n += 1
                line = f.readline(limit + 1)
                if not line:
                    break
                if len(line) > limit:
                    raise UserError(f"line {n} of {path} is over the {limit >> 20} MiB a row may be", where=f"{path}:{n}")
                if line.strip():
                    row = json_loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("not a JSON object")
                    rows.append(row)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged at line {n} ({e}); remove the stage's folder and run again to rebuild it",
                        where=f"{path}:{n}") from None
    return rows


def read_manifest(stage_dir: Path) -> dict | None:
    """A stage's manifest, or None: missing, torn, or not a manifest at all (a FIFO, a 10 GB
    file, a list, a field of the wrong type) all mean the stage is not complete, and it runs
    again (its requests from the cache)."""
    from orca_recipe.bounded import maybe_json

    m = maybe_json(stage_dir / "manifest.json", "run file")
    if not isinstance(m, dict):
        return None
    try:
        Manifest.model_validate(m)
        if m.get("kind") == "eval" and m.get("complete"):
            EvalReport.model_validate(m.get("report"))
    except ValidationError:
        return None
    return m


class _Usage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    requests: NonNegativeInt = 0
    cache_hits: NonNegativeInt = 0
    prompt_tokens: NonNegativeInt = 0
    completion_tokens: NonNegativeInt = 0
    cost: NonNegativeFloat | None = 0.0


class Manifest(BaseModel):
    """The fields of a manifest the product reads back, typed (any others are kept as they are)."""

    model_config = ConfigDict(extra="allow")
    stage: str
    kind: str
    fingerprint: str
    complete: bool
    rows: NonNegativeInt = 0
    rejects: NonNegativeInt = 0
    failures: NonNegativeInt = 0
    llm_failures: NonNegativeInt = 0
    seconds: NonNegativeFloat = 0.0
    usage: _Usage = _Usage()
    report: dict[str, Any] = {}
    inputs: dict[str, str] = {}
    input_data: dict[str, str] = {}
    files: dict[str, str] = {}


Fraction = Annotated[float, Field(ge=0, le=1)]


class EvalReport(BaseModel):
    """What `report` reads of an eval stage's report."""

    model_config = ConfigDict(extra="allow")
    model: str
    n: NonNegativeInt
    correct: NonNegativeInt
    pass_at_1: Fraction
    ci95: tuple[Fraction, Fraction]


def read_plan_stages(run_dir: Path) -> list[dict[str, Any]]:
    """The stages RUN_DIR/plan.json lists ({name, kind, fingerprint, calls}); one UserError when
    there is none or it is damaged."""
    from orca_recipe.bounded import read_json
    from orca_recipe.errors import UserError

    plan_file = run_dir / "plan.json"
    if not plan_file.is_file():
        raise UserError(f"{run_dir} is not a run directory (no plan.json)")
    try:
        stages = read_json(plan_file, "run file").get("stages")
    except (ValueError, AttributeError) as e:
        raise UserError(f"{plan_file} is damaged ({e or 'not a JSON object'}); `orca-recipe run` writes it again") from None
    if not isinstance(stages, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("fingerprint"), str)
                                               and s["name"].isidentifier() for s in stages):
        raise UserError(f"{plan_file} is damaged (its 'stages' are not a list of named stages); `orca-recipe run` writes it again")
    return stages


def write_manifest(stage_dir: Path, manifest: dict) -> None:
    """Written last: its presence with `complete: true` is what marks a stage done."""
    import json

    atomic_write_text(stage_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str))
