"""Seed problems from a local file or a `datasets` folder: fields mapped, shuffled, limited."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from orca_recipe.answers import gsm8k_gold, solution_steps
from orca_recipe.errors import UserError
from orca_recipe.stages.base import Row, StageContext, StageResult


def _format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    if path.is_dir():
        return "hf_disk"
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix, "jsonl")


def read_rows(path: str, fmt: str = "auto", *, key: str = "seeds.path") -> list[dict[str, Any]]:
    """Rows of a JSONL/JSON/Parquet/CSV file or a `datasets.save_to_disk` folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"data not found: {p}", key=key)
    fmt = _format(p, fmt)
    try:
        if fmt == "jsonl":
            with p.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if fmt == "json":
            data = json.loads(p.read_text(encoding="utf-8"))
            return data if isinstance(data, list) else data.get("data", [])
        if fmt == "csv":
            with p.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pylist()
        from datasets import load_from_disk

        ds = load_from_disk(str(p))
        if hasattr(ds, "keys"):  # a DatasetDict: take train, else the first split
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
        return ds.to_list()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError) as e:
        raise UserError(f"cannot read {p} as {fmt}: {e.__class__.__name__}: {e}", key=key) from None


def load_problems(path: str, fmt: str, question_field: str, answer_field: str | None, answer_format: str,
                  *, limit: int | None, shuffle: bool, seed: int, prefix: str, key: str, max_steps: int | None = None) -> list[Row]:
    raw = read_rows(path, fmt, key=key)
    order = list(range(len(raw)))
    if shuffle:
        random.Random(seed).shuffle(order)
    if max_steps is not None and answer_field:
        order = [i for i in order if solution_steps(str(raw[i].get(answer_field, "")), answer_format) <= max_steps]
    if limit is not None:
        order = order[:limit]
    rows = []
    for idx in order:
        r = raw[idx]
        if question_field not in r:
            raise UserError(f"row {idx} of {path} has no field '{question_field}' (fields: {', '.join(r)})", key=key)
        answer = str(r.get(answer_field, "")) if answer_field else ""
        gold = gsm8k_gold(answer) if answer_format == "gsm8k" else (answer.strip() or None)
        rows.append({"id": f"{prefix}-{idx}", "question": str(r[question_field]).strip(), "answer": answer, "gold": gold, "source_index": idx})
    return rows


async def run(ctx: StageContext) -> StageResult:
    s = ctx.recipe.seeds
    rows = load_problems(s.path, s.format, s.question_field, s.answer_field, s.answer_format,
                         limit=s.limit, shuffle=s.shuffle, seed=s.seed, prefix="seed", key="seeds.path", max_steps=s.max_solution_steps)
    for r in rows:
        r.update(seed_id=r["id"], parent_id=None, origin="seeds", round=0)
    ctx.set_total(len(rows))
    ctx.advance(len(rows))
    return StageResult(rows=rows)
