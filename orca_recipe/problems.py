"""Problem files (seeds, the eval set, the decontamination set): read, checked row by row.

A file that cannot be read as its format is one `UserError` naming `file:line`. A row that
can be dropped (not an object, no question, an empty question, an eval answer with no
parsable gold) becomes a reject with its line and reason, so that rows read = rows kept +
rows rejected. An input with no usable row is an error, never a stage of 0 rows.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from orca_recipe.answers import gsm8k_gold, solution_steps
from orca_recipe.bounded import LIMITS, check_regular, json_loads
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


class Records:
    """The records of a problem file, by position: `len`, `get(i)` -> (line, record), and
    `scan()` in file order. JSON Lines are indexed by byte offset and parsed on demand, so
    taking `limit` shuffled rows of a 200k-row file parses about `limit` lines and holds no
    more than their offsets; the other formats are read whole by their libraries."""

    def __init__(self, path: str | Path, fmt: str = "auto", *, key: str):
        self.path, self.key = Path(path), key
        if not self.path.exists() and not self.path.is_symlink():
            raise UserError(f"data not found: {self.path}", key=key)
        check_regular(self.path, "data", key=key, allow_dir=True)  # a FIFO or /dev/zero: one error, no hang
        self.fmt = data_format(self.path, fmt)
        self._offsets: list[tuple[int, int]] = []  # JSONL: (line number, byte offset) of each record
        self._items: list[tuple[int, Any]] = []
        self._fh: Any = None
        with self._errors():
            if self.fmt == "jsonl":
                with self.path.open("rb") as f:
                    offset = 0
                    for lineno, raw in enumerate(_lines(f, self.path, key), 1):
                        if raw.strip() and not (lineno == 1 and raw.strip() == b"\xef\xbb\xbf"):
                            self._offsets.append((lineno, offset))
                        offset += len(raw)
            else:
                self._items = list(_READERS[self.fmt](self.path, key))

    def __len__(self) -> int:
        return len(self._offsets) if self.fmt == "jsonl" else len(self._items)

    def get(self, i: int) -> tuple[int, Any]:
        if self.fmt != "jsonl":
            return self._items[i]
        lineno, offset = self._offsets[i]
        with self._errors():
            if self._fh is None:  # one open file for all the gets (close() ends it)
                self._fh = self.path.open("rb")
            self._fh.seek(offset)
            raw = self._fh.readline(LIMITS["data line"] + 1)
            return lineno, _parse_jsonl_line(raw.decode("utf-8-sig" if offset == 0 else "utf-8"), self.path, lineno, self.key)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def scan(self) -> Iterator[tuple[int, Any]]:
        if self.fmt != "jsonl":
            yield from self._items
            return
        with self._errors():
            yield from _jsonl(self.path, self.key)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except UnicodeDecodeError as e:
            raise UserError(f"{self.path} is not UTF-8 text ({self.fmt}): byte {e.start}: {e.reason}", key=self.key) from None
        except OSError as e:
            raise UserError(f"cannot read {self.path}: {e.strerror or e}", key=self.key) from None


def _lines(f: Any, p: Path, key: str) -> Iterator[bytes]:
    """The lines of a binary file, each at most LIMITS['data line'] bytes (a record is a few KB)."""
    cap = LIMITS["data line"]
    lineno = 0
    while True:
        raw = f.readline(cap + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > cap and not raw.endswith(b"\n"):
            raise UserError(f"a line over {cap >> 20} MiB; a JSON Lines record is one problem", where=f"{p}:{lineno}", key=key)
        yield raw


def _parse_jsonl_line(line: str, p: Path, lineno: int, key: str) -> Any:
    try:
        return json_loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"not JSON Lines: {e.msg} (column {e.colno})", where=f"{p}:{lineno}", key=key) from None
    except ValueError as e:  # nested too deep, NaN / Infinity
        raise UserError(f"not JSON Lines: {e}", where=f"{p}:{lineno}", key=key) from None


def _jsonl(p: Path, key: str) -> Iterator[tuple[int, Any]]:
    with p.open("rb") as f:
        for lineno, raw in enumerate(_lines(f, p, key), 1):
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            if line.strip():
                yield lineno, _parse_jsonl_line(line, p, lineno, key)


def _json(p: Path, key: str) -> Iterator[tuple[int, Any]]:
    try:
        data = json_loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise UserError(f"not JSON: {e.msg} (column {e.colno})", where=f"{p}:{e.lineno}", key=key) from None
    except ValueError as e:  # nested too deep, NaN / Infinity
        raise UserError(f"not JSON: {e}", where=str(p), key=key) from None
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
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError, OSError) as e:  # a malformed state.json too
        raise UserError(f"{p}: cannot load the `datasets` folder: {e}", key=key) from None
    if hasattr(ds, "keys"):  # a DatasetDict: take train, else the first split
        ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
    yield from enumerate(ds.to_list(), 1)


_READERS = {"json": _json, "csv": _csv, "parquet": _parquet, "hf_disk": _hf_disk}  # JSONL: Records indexes it


@dataclass
class Problems:
    """What a problem file yielded: `rows` kept (after order and limit), `rejects` with line and
    reason; records past the point where `limit` rows were kept are not read."""

    rows: list[Row]
    rejects: list[Row] = field(default_factory=list)
    records: int = 0        # in the file
    read: int = 0           # looked at: kept + rejected + outside_steps
    outside_steps: int = 0  # usable rows left out by max_solution_steps
    held_out: int = 0       # usable rows left out because a held-out file (a dev split) has them

    def report(self) -> dict[str, Any]:
        return {"records": self.records, "read": self.read, "kept": len(self.rows), "rejected": len(self.rejects),
                "rejected_by_reason": dict(Counter(r["reason"].split(":")[0] for r in self.rejects)),
                "outside_max_solution_steps": self.outside_steps, "held_out": self.held_out, "not_read": self.records - self.read}


def _check(rec: Any, question_field: str, answer_field: str | None, answer_format: str, need_gold: bool) -> tuple[Row | None, str | None]:
    """(question, answer, gold) of one record, or the reason it cannot be used."""
    if not isinstance(rec, dict):
        return None, f"not an object: a JSON {type(rec).__name__}" if not isinstance(rec, str) else "not an object: a string"
    q = rec.get(question_field)
    if q is None:
        return None, f"no '{question_field}'" if question_field not in rec else f"'{question_field}' is null"
    if not isinstance(q, (str, int, float)) or isinstance(q, bool):
        return None, f"'{question_field}' is a {type(q).__name__}, not text"
    if isinstance(q, float) and not math.isfinite(q):
        return None, f"'{question_field}' is {q}, not text"
    question = str(q).strip()
    if not question:
        return None, f"'{question_field}' is empty"
    a = rec.get(answer_field) if answer_field else None
    if isinstance(a, float) and not math.isfinite(a):
        return None, f"'{answer_field}' is {a}, not an answer"
    answer = "" if a is None else str(a)
    for name, text in ((question_field, question), (answer_field, answer)):
        if not _encodable(text):
            return None, f"'{name}' is not valid Unicode (a lone surrogate)"
    gold = gsm8k_gold(answer) if answer_format == "gsm8k" else (answer.strip() or None)
    if need_gold and gold is None:
        return None, f"no gold answer in '{answer_field}'" + (" (expected '#### N')" if answer_format == "gsm8k" else "")
    return {"question": question, "answer": answer, "gold": gold}, None


def question_key(question: str) -> str:
    """A question as the held-out check compares it: case and spacing do not make a new problem."""
    return " ".join(question.split()).casefold()


def held_out_questions(path: str | None, *, key: str) -> frozenset[str]:
    """The questions (as `question_key`) of a held-out problem file; empty without one."""
    if path is None:
        return frozenset()
    found = frozenset(question_key(q) for _, rec in Records(path, "auto", key=key).scan()
                      if isinstance(rec, dict) and isinstance(q := rec.get("question"), str))
    if not found:
        raise UserError(f"{path} holds no row with a 'question': a held-out split is problems", key=key)
    return found


def _is_loop(p: Path) -> bool:
    try:
        p.stat()
        return False
    except OSError as e:
        import errno

        return e.errno == errno.ELOOP


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def load_problems(path: str, fmt: str, question_field: str, answer_field: str | None, answer_format: str, *, limit: int | None,
                  shuffle: bool, seed: int, prefix: str, key: str, max_steps: int | None = None, need_gold: bool = False,
                  held_out: frozenset[str] = frozenset()) -> Problems:
    """Rows `{id, question, answer, gold, source_index, source_line}` of a problem file, shuffled
    (by `seed`), restricted to `max_steps` reference steps, then to `limit`. Row ids (`prefix-i`,
    i the record's 0-based position) and order do not change when a bad row is added or fixed."""
    src = Records(path, fmt, key=key)
    try:
        return _take(src, path, limit, question_field, answer_field, answer_format, shuffle, seed, prefix, key, max_steps,
                     need_gold, held_out)
    finally:
        src.close()


def _take(src: Records, path: str, limit: int | None, question_field: str, answer_field: str | None, answer_format: str,
          shuffle: bool, seed: int, prefix: str, key: str, max_steps: int | None, need_gold: bool,
          held_out: frozenset[str] = frozenset()) -> Problems:
    if not len(src):
        raise UserError(f"{path} holds no rows", key=key)
    order = list(range(len(src)))
    if shuffle:
        random.Random(seed).shuffle(order)
    out = Problems(rows=[], records=len(src))
    field_seen = answer_seen = False
    for i in order:
        if limit is not None and len(out.rows) >= limit:
            break
        line, rec = src.get(i)
        out.read += 1
        field_seen = field_seen or (isinstance(rec, dict) and question_field in rec)
        answer_seen = answer_seen or (isinstance(rec, dict) and bool(answer_field) and answer_field in rec)
        ok, reason = _check(rec, question_field, answer_field, answer_format, need_gold)
        if ok is None:
            out.rejects.append({"id": f"{prefix}-{i}", "source_index": i, "source_line": line, "reason": f"{reason} ({path}:{line})"})
        elif max_steps is not None and answer_field and solution_steps(ok["answer"], answer_format) > max_steps:
            out.outside_steps += 1
        elif held_out and question_key(ok["question"]) in held_out:
            out.held_out += 1
        else:
            out.rows.append({"id": f"{prefix}-{i}", **ok, "source_index": i, "source_line": line})
    if out.rows:
        got, answered = gold_share(out.rows)
        first = next((r["answer"] for r in out.rows if r["answer"].strip()), "")
        fields = next((list(rec) for _, rec in (src.get(j) for j in range(min(len(src), 50))) if isinstance(rec, dict)), [])
        _check_answers(answer_field, answer_format, path, key, answer_seen=answer_seen, answered=answered, gold=got,
                       first_answer=first, fields=fields)
    if not out.rows:
        if not field_seen:  # the recipe names the wrong field
            fields = next((list(rec) for _, rec in (src.get(j) for j in range(min(len(src), 50))) if isinstance(rec, dict)), [])
            raise UserError(f"no row of {path} has a field '{question_field}' (fields: {', '.join(map(str, fields)) or 'none'})", key=key)
        if out.rejects:
            reasons = Counter(r["reason"].split(" (")[0] for r in out.rejects).most_common(3)
            raise UserError(f"no usable row in {path}: {len(out.rejects)} of {out.read} rejected ({'; '.join(f'{n}x {r}' for r, n in reasons)})"
                            + (f", {out.outside_steps} beyond max_solution_steps={max_steps}" if out.outside_steps else "")
                            + f"; first: {out.rejects[0]['reason']}", key=key)
        raise UserError(f"no row of {path} has at most max_solution_steps={max_steps} reference steps", key=key)
    return out


MIN_GOLD_SHARE = 0.5  # below this share of answers parsing as `answer_format`, a warning


def _check_answers(answer_field: str | None, answer_format: str, path: str, key: str, *, answer_seen: bool, answered: int,
                   gold: int, first_answer: str, fields: list[str]) -> None:
    """An answer column no row has, or an answer format that matches no answer, is a recipe
    mistake that would silently leave every problem without gold: one error, not a quiet run."""
    section = key.rsplit(".", 1)[0]
    if not answer_field:
        return
    if not answer_seen:
        raise UserError(f"no row of {path} has a field '{answer_field}'; set it to your answer column, or to null for problems "
                        f"without answers (fields: {', '.join(map(str, fields)) or 'none'})", key=f"{section}.answer_field")
    if answer_format == "gsm8k" and answered and not gold:
        raise UserError(f"answer_format gsm8k expects answers ending in '#### N', but none of the {answered} answers in {path} do "
                        f"(first: {first_answer[:60]!r}); set answer_format: plain", key=f"{section}.answer_format")


def gold_share(rows: list[Row]) -> tuple[int, int]:
    """(answers that parsed to a gold answer, answers given) among kept rows."""
    answered = [r for r in rows if r["answer"].strip()]
    return sum(r["gold"] is not None for r in answered), len(answered)


def count_problems(path: str, fmt: str, question_field: str, answer_field: str | None, answer_format: str,
                   max_steps: int | None, *, key: str, need_gold: bool = False, held_out: frozenset[str] = frozenset(),
                   warnings: list[str] | None = None) -> int | None:
    """Usable rows within `max_steps` (for `plan`'s call counts), None while the file is missing.
    One pass in file order, nothing kept; a malformed file, an answer column no row has or an
    answer format no answer matches fails here, at `validate`, with the same message as at
    `run`; an answer format few answers match is a warning (appended to `warnings`)."""
    if not Path(path).exists():
        if Path(path).is_symlink() and _is_loop(Path(path)):
            check_regular(path, "data", key=key)  # a loop of links: one error now, not at run time
        return None
    n = gold = answered = 0
    answer_seen = False
    first_answer, fields = "", []  # type: tuple[str, list[str]]
    for _, rec in Records(path, fmt, key=key).scan():
        if not fields and isinstance(rec, dict):
            fields = list(rec)
        answer_seen = answer_seen or (isinstance(rec, dict) and bool(answer_field) and answer_field in rec)
        ok, _ = _check(rec, question_field, answer_field, answer_format, need_gold)
        if ok is not None and not (max_steps is not None and answer_field and solution_steps(ok["answer"], answer_format) > max_steps) \
                and not (held_out and question_key(ok["question"]) in held_out):
            n += 1
            if ok["answer"].strip():
                answered += 1
                gold += ok["gold"] is not None
                first_answer = first_answer or ok["answer"]
    if n == 0:
        load_problems(path, fmt, question_field, answer_field, answer_format, limit=None, shuffle=False, seed=0,
                      prefix="count", key=key, max_steps=max_steps, need_gold=need_gold, held_out=held_out)  # raises the precise error
    if n:
        _check_answers(answer_field, answer_format, path, key, answer_seen=answer_seen, answered=answered, gold=gold,
                       first_answer=first_answer, fields=fields)
    if warnings is not None and answered and gold < MIN_GOLD_SHARE * answered:
        warnings.append(f"{key.rsplit('.', 1)[0]}.answer_format {answer_format}: only {gold} of {answered} answers in {path} parse to a "
                        f"gold answer; the others get none (no gold rule, no gold judge for them)")
    return n
