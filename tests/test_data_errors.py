"""Broken problem files: a file that cannot be read is one error with file:line (exit 2); a row
that can be dropped is a reject with its line and reason; read = kept + rejected (+ rows the
recipe's max_solution_steps and limit leave out). Fuzzed: no byte pattern escapes as a traceback."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from _cli import REPO, run_cli
from orca_recipe.errors import UserError
from orca_recipe.problems import load_problems

GOOD = '{"question": "Tom has 2 apples and buys 3. How many?", "answer": "2+3=5\\n#### 5"}\n'


def load(path: Path, **kw):
    args = dict(limit=None, shuffle=False, seed=0, prefix="seed", key="seeds.path")
    return load_problems(str(path), "auto", "question", "answer", "gsm8k", **(args | kw))


def write(tmp: Path, name: str, data: str | bytes) -> Path:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


@pytest.mark.parametrize("name,data,needle", [
    ("empty.jsonl", "", "holds no rows"),
    ("blank.jsonl", "\n  \n\n", "holds no rows"),
    ("decode.jsonl", GOOD + GOOD + '{"question": "x", "answer": }\n', ":3: seeds.path: not JSON Lines"),
    ("latin1.jsonl", GOOD.encode() + b'{"question": "caf\xe9"}\n', "not UTF-8"),
    ("scalar.json", "42", "JSON holding int"),
    ("string.json", '"questions"', "JSON holding str"),
    ("object.json", '{"name": "x", "count": 3}', "holding no list of rows"),
    ("broken.json", '[{"question": "a"},\n {"question": }]', ":2: seeds.path: not JSON"),
    ("nofield.jsonl", '{"q": "a", "answer": "#### 1"}\n', "no row of"),
    ("allbad.jsonl", '[1]\n{"question": null}\n{"question": "  "}\n', "no usable row"),
    ("garbage.parquet", b"PAR1 not really", "not a Parquet file"),
])
def test_an_unreadable_file_is_one_error_with_its_place(tmp_path, name, data, needle):
    p = write(tmp_path, name, data)
    with pytest.raises(UserError) as e:
        load(p)
    assert needle in str(e.value), str(e.value)


def test_an_empty_folder_is_not_a_dataset(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(UserError, match="not a `datasets` folder"):
        load(tmp_path / "ds")


def test_droppable_rows_are_rejects_with_line_and_reason(tmp_path):
    lines = [GOOD, "[1, 2]\n", "\n", "7\n", '{"question": null, "answer": "#### 1"}\n', '{"question": "", "answer": "#### 1"}\n',
             '{"question": ["a"], "answer": "#### 1"}\n', '{"answer": "#### 1"}\n', GOOD.replace("apples", "pears")]
    p = write(tmp_path, "mixed.jsonl", "".join(lines))
    got = load(p)
    assert [r["source_line"] for r in got.rows] == [1, 9] and got.read == got.records == 8
    assert {r["source_line"]: r["reason"].split(" (")[0] for r in got.rejects} == {
        2: "not an object: a JSON list", 4: "not an object: a JSON int", 5: "'question' is null", 6: "'question' is empty",
        7: "'question' is a list, not text", 8: "no 'question'"}
    assert all(f"{p}:{r['source_line']}" in r["reason"] for r in got.rejects)
    rep = got.report()
    assert rep["read"] == rep["kept"] + rep["rejected"] + rep["outside_max_solution_steps"] and rep["not_read"] == 0


def test_a_bom_does_not_hide_the_first_field(tmp_path):
    csv_file = write(tmp_path, "bom.csv", "\ufeffquestion,answer\nHow many?,#### 4\n")
    assert load(csv_file).rows[0]["gold"] == "4"
    jsonl = write(tmp_path, "bom.jsonl", "\ufeff" + GOOD)
    assert load(jsonl).rows[0]["gold"] == "5"


def test_an_eval_answer_without_gold_is_a_reject_not_a_wrong_answer(tmp_path):
    p = write(tmp_path, "eval.jsonl", GOOD + '{"question": "How many?", "answer": "about five"}\n')
    got = load(p, need_gold=True)
    assert len(got.rows) == 1 and got.rejects[0]["reason"].startswith("no gold answer in 'answer'")
    assert len(load(p).rows) == 2  # seeds do not need gold


def test_ids_and_order_do_not_move_when_a_bad_row_is_fixed(tmp_path):
    rows = [json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(20)]
    clean = [r["id"] for r in load(write(tmp_path, "clean.jsonl", "".join(rows)), shuffle=True, seed=3).rows]
    broken = rows.copy()
    broken[int(clean[0].split("-")[1])] = '{"question": null}\n'  # the first row the shuffle picks
    dirty = load(write(tmp_path, "dirty.jsonl", "".join(broken)), shuffle=True, seed=3, limit=10)
    assert [r["id"] for r in dirty.rows] == clean[1:11]


def test_fuzzed_files_load_or_fail_cleanly(tmp_path):
    """Random byte damage to a good file: either rows come back or one UserError, nothing else."""
    base = (GOOD * 6).encode()
    rng = random.Random(0)
    for i in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            op, at = rng.random(), rng.randrange(len(data))
            if op < 0.4:
                data[at] = rng.randrange(256)
            elif op < 0.7:
                del data[at:at + rng.randint(1, 20)]
            else:
                data[at:at] = bytes(rng.choice(b'{}[]",:\n\\0nul\xff') for _ in range(rng.randint(1, 5)))
        for suffix in (".jsonl", ".json", ".csv"):
            p = write(tmp_path, f"f{i}{suffix}", bytes(data))
            try:
                got = load(p)
            except UserError:
                continue
            assert got.rows and got.read == len(got.rows) + len(got.rejects) == got.records


def test_validate_and_plan_report_a_malformed_data_file_with_its_line(tmp_path):
    data = write(tmp_path, "seeds.jsonl", GOOD + "{oops\n")
    recipe = (REPO / "recipes" / "tiny.yaml").read_text().replace("../data/gsm8k/train.jsonl", str(data))
    recipe = recipe.replace("../", str(REPO) + "/")
    r = write(tmp_path, "r.yaml", recipe)
    for cmd in ("validate", "plan"):
        proc = run_cli(cmd, r)
        assert proc.returncode == 2 and f"{data}:2" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def test_a_limit_reads_only_as_many_lines_as_it_keeps(tmp_path):
    """200k-row inputs stream: with a limit, lines past the point where enough rows were kept
    are never parsed (a broken one there is not even seen; validate's full pass reports it)."""
    rows = [json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(5000)]
    rows[4999] = "{broken\n"
    p = write(tmp_path, "big.jsonl", "".join(rows))
    got = load(p, limit=10)
    assert len(got.rows) == 10 and got.read == 10 and got.records == 5000 and got.report()["not_read"] == 4990
    with pytest.raises(UserError, match=":5000: seeds.path: not JSON Lines"):
        load(p)
    from orca_recipe.problems import count_problems
    with pytest.raises(UserError, match=":5000:"):
        count_problems(str(p), "auto", "question", "answer", "gsm8k", None, key="seeds.path")


def test_nothing_within_max_steps_is_an_error(tmp_path):
    p = write(tmp_path, "long.jsonl", '{"question": "q", "answer": "<<1+1=2>>2 <<2+1=3>>3\\n#### 3"}\n')  # two steps
    with pytest.raises(UserError, match="max_solution_steps=1"):
        load(p, max_steps=1)


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "float", "str", "list", "dict"] if depth < 3 else ["null", "bool", "int", "str"]
    k = rng.choice(kinds)
    if k == "null":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "int":
        return rng.randint(-10**6, 10**6)
    if k == "float":
        return rng.uniform(-1e6, 1e6)
    if k == "str":
        return rng.choice(["", " ", "question", "answer", "#### 5", "How many?", "\u00e9\u4e2d", "\n"]) * rng.randint(0, 3)
    if k == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["question", "answer", "data", "rows", "x", ""]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_random_json_shapes_load_or_fail_cleanly_and_drop_nothing_silently(tmp_path):
    """Rows and whole files of random JSON: rows come back with every other record a reject
    (read = kept + rejected, nothing silently dropped), or one UserError."""
    rng = random.Random(1)
    for i in range(400):
        rows = [_random_json(rng) for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.5:
            rows.append({"question": "Tom has 2 apples. How many?", "answer": "#### 2"})
        rng.shuffle(rows)
        jsonl = write(tmp_path, f"r{i}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        whole = write(tmp_path, f"w{i}.json", json.dumps(rng.choice([rows, {"data": rows}, _random_json(rng)])))
        for p in (jsonl, whole):
            for need_gold in (False, True):
                try:
                    got = load(p, need_gold=need_gold)
                except UserError:
                    continue
                assert got.rows and got.read == got.records == len(got.rows) + len(got.rejects)
                assert all(isinstance(r["question"], str) and r["question"].strip() for r in got.rows)
