"""Problem files (seeds, the eval set, the decontamination set): read, checked row by row.

A file that cannot be read as its format is one `UserError` naming `file:line`. A row that
can be dropped (not an object, no question, an empty question, an eval answer with no
parsable gold) becomes a reject with its line and reason, so that rows read = rows kept +
rows rejected. An input with no usable row is an error, never a stage of 0 rows.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from orca_recipe.answers import gsm8k_gold, solution_steps
from orca_recipe.errors import UserError

Row = dict[str, Any]
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
JSON_LIST_KEYS = ("data", "rows", "train", "examples", "problems")  # where a JSON object keeps its rows


def data_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    if path.is_dir():
        return "hf_disk"
    return FORMATS.get(path.suffix.lower(), "jsonl")


def records(path: str | Path, fmt: str = "auto", *, key: str) -> list[tuple[int, Any]]:
    """(line, record) for every record of the file; `line` is the file line for JSONL and CSV,
    the 1-based position otherwise. Raises UserError (file:line) when the file is unreadable."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"data not found: {p}", key=key)
    fmt = data_format(p, fmt)
    try:
        return list(_READERS[fmt](p, key))
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not UTF-8 text ({fmt}): byte {e.start}: {e.reason}", key=key) from None
    except OSError as e:
        raise UserError(f"cannot read {p}: {e.strerror or e}", key=key) from None


def _jsonl(p: Path, key: str) -> Iterator[tuple[int, Any]]:
    with p.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"not JSON Lines: {e.msg} (column {e.colno})", where=f"{p}:{lineno}", key=key) from None


def _json(p: Path, key: str) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise UserError(f"not JSON: {e.msg} (column {e.colno})", where=f"{p}:{e.lineno}", key=key) from None
    if isinstance(data, dict):
        lists = [k for k in JSON_LIST_KEYS if isinstance(data.get(k), list)] or [k for k, v in data.items() if isinstance(v, list)]
        if not lists:
            raise UserError(f"{p}: a JSON object holding no list of rows (keys: {', '.join(map(str, data)) or 'none'}); "
                            f"expected a list of objects, or an object with one under {'/'.join(JSON_LIST_KEYS)}", key=key)
        data = data[lists[0]]
    if not isinstance(data, list):
        raise UserError(f"{p}: JSON holding {type(data).__name__}, expected a list of row objects", key=key)
    yield from enumerate(data, 1)


def _csv(p: Path, key: str) -> Iterator[tuple[int, Any]]:
    with p.open(encoding="utf-8-sig", newline="") as f:  # -sig: a BOM is not part of the first field name
        reader = csv.DictReader(f)
        try:
            for rec in reader:
                yield reader.line_num, rec
        except csv.Error as e:
            raise UserError(f"not CSV: {e}", where=f"{p}:{reader.line_num}", key=key) from None


def _parquet(p: Path, key: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except (pa.ArrowException, ValueError) as e:
        raise UserError(f"{p}: not a Parquet file: {e}", key=key) from None
    yield from enumerate(table.to_pylist(), 1)


def _hf_disk(p: Path, key: str) -> Iterator[tuple[int, Any]]:
    if not p.is_dir() or not any((p / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise UserError(f"{p}: not a `datasets` folder (one written by save_to_disk: dataset_info.json, state.json or "
                        f"dataset_dict.json); give a .jsonl/.json/.csv/.parquet file or such a folder", key=key)
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(p))
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UserError(f"{p}: cannot load the `datasets` folder: {e}", key=key) from None
    if hasattr(ds, "keys"):  # a DatasetDict: take train, else the first split
        ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
    yield from enumerate(ds.to_list(), 1)


_READERS = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet, "hf_disk": _hf_disk}


@dataclass
class Problems:
    """What a problem file yielded: `rows` kept (after order and limit), `rejects` with line and
    reason, and how many records were read."""

    rows: list[Row]
    rejects: list[Row] = field(default_factory=list)
    read: int = 0
    outside_steps: int = 0  # usable rows left out by max_solution_steps
    beyond_limit: int = 0   # usable rows left out by limit

    def report(self) -> dict[str, Any]:
        return {"read": self.read, "kept": len(self.rows), "rejected": len(self.rejects),
                "rejected_by_reason": dict(Counter(r["reason"].split(":")[0] for r in self.rejects)),
                "outside_max_solution_steps": self.outside_steps, "beyond_limit": self.beyond_limit}


def _check(rec: Any, question_field: str, answer_field: str | None, answer_format: str, need_gold: bool) -> tuple[Row | None, str | None]:
    """(question, answer, gold) of one record, or the reason it cannot be used."""
    if not isinstance(rec, dict):
        return None, f"not an object: a JSON {type(rec).__name__}" if not isinstance(rec, str) else "not an object: a string"
    q = rec.get(question_field)
    if q is None:
        return None, f"no '{question_field}'" if question_field not in rec else f"'{question_field}' is null"
    if not isinstance(q, (str, int, float)) or isinstance(q, bool):
        return None, f"'{question_field}' is a {type(q).__name__}, not text"
    question = str(q).strip()
    if not question:
        return None, f"'{question_field}' is empty"
    a = rec.get(answer_field) if answer_field else None
    answer = "" if a is None else str(a)
    gold = gsm8k_gold(answer) if answer_format == "gsm8k" else (answer.strip() or None)
    if need_gold and gold is None:
        return None, f"no gold answer in '{answer_field}'" + (" (expected '#### N')" if answer_format == "gsm8k" else "")
    return {"question": question, "answer": answer, "gold": gold}, None


def load_problems(path: str, fmt: str, question_field: str, answer_field: str | None, answer_format: str, *, limit: int | None,
                  shuffle: bool, seed: int, prefix: str, key: str, max_steps: int | None = None, need_gold: bool = False) -> Problems:
    """Rows `{id, question, answer, gold, source_index, source_line}` of a problem file, shuffled
    (by `seed`), restricted to `max_steps` reference steps, then to `limit`. Row ids (`prefix-i`,
    i the record's 0-based position) and order do not change when a bad row is added or fixed."""
    recs = records(path, fmt, key=key)
    if not recs:
        raise UserError(f"{path} holds no rows", key=key)
    checked = [_check(rec, question_field, answer_field, answer_format, need_gold) for _, rec in recs]
    if not any(isinstance(rec, dict) and question_field in rec for _, rec in recs):  # the recipe names the wrong field
        fields = next((list(rec) for _, rec in recs if isinstance(rec, dict)), [])
        raise UserError(f"no row of {path} has a field '{question_field}' (fields: {', '.join(map(str, fields)) or 'none'})", key=key)
    out = Problems(rows=[], read=len(recs))
    for idx, ((line, _), (ok, reason)) in enumerate(zip(recs, checked)):
        if ok is None:
            out.rejects.append({"id": f"{prefix}-{idx}", "source_index": idx, "source_line": line, "reason": f"{reason} ({path}:{line})"})
    if len(out.rejects) == len(recs):
        reasons = Counter(r["reason"].split(" (")[0] for r in out.rejects).most_common(3)
        raise UserError(f"no usable row in {path}: every one of {len(recs)} was rejected ({'; '.join(f'{n}x {r}' for r, n in reasons)}); "
                        f"first: {out.rejects[0]['reason']}", key=key)
    order = list(range(len(recs)))
    if shuffle:
        random.Random(seed).shuffle(order)
    order = [i for i in order if checked[i][0] is not None]
    if max_steps is not None and answer_field:
        within = [i for i in order if solution_steps(checked[i][0]["answer"], answer_format) <= max_steps]  # type: ignore[index]
        out.outside_steps = len(order) - len(within)
        order = within
    if limit is not None:
        out.beyond_limit = max(0, len(order) - limit)
        order = order[:limit]
    out.rows = [{"id": f"{prefix}-{i}", **checked[i][0], "source_index": i, "source_line": recs[i][0]} for i in order]  # type: ignore[dict-item]
    return out


def count_problems(path: str, fmt: str, question_field: str, answer_field: str | None, answer_format: str,
                   max_steps: int | None, *, key: str, need_gold: bool = False) -> int | None:
    """Usable rows within `max_steps` (for `plan`'s call counts), None while the file is missing.
    Malformed files fail here, at `validate`, with the same file:line as at `run`."""
    if not Path(path).exists():
        return None
    got = load_problems(path, fmt, question_field, answer_field, answer_format, limit=None, shuffle=False, seed=0,
                        prefix="count", key=key, max_steps=max_steps, need_gold=need_gold)
    return len(got.rows)
