"""Hostile input at run time: output paths of the wrong kind, a damaged request cache, two runs
on one run directory, the same request twice at once. Against the loopback fake endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import REPO, run_cli
from fake_openai import FakeOpenAI, fake_recipe, pipeline_reply

from orca_recipe.errors import UserError
from orca_recipe.llm.cache import RequestCache, well_formed
from orca_recipe.llm.door import LLM, Endpoint, Usage

SMALL = {"seeds": {"limit": 3, "path": str(REPO / "data" / "gsm8k" / "train.jsonl"), "holdout": None}, "evolve": None,
         "ask_me_anything": {"limit": 2}, "solve": {"inputs": ["ask_me_anything"]}}


def pipeline(**kw) -> FakeOpenAI:
    """The fake endpoint answering as the pipeline's agents would (parseable questions and solutions)."""
    return FakeOpenAI(responder=pipeline_reply, **kw)


def one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-800:], proc.stderr[-800:])
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr[-800:]
    return proc.stderr


def test_output_paths_of_the_wrong_kind(tmp_path):
    with pipeline() as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **SMALL)
        a_file = tmp_path / "a-file"
        a_file.write_text("not a folder")
        assert "exists and is not a directory" in one_error(run_cli("run", recipe, "--run-dir", a_file))
        assert "is a file, not a directory" in one_error(run_cli("run", recipe, "--run-dir", a_file / "under"))
        assert "is a directory" in one_error(run_cli("run", recipe, "--run-dir", tmp_path / "run", "--cache", tmp_path))
        assert "is not a directory" in one_error(run_cli("run", recipe, "--run-dir", tmp_path / "run", "--cache", a_file / "c.sqlite"))
        if os.geteuid() != 0:  # root may write anywhere
            locked = tmp_path / "locked"
            locked.mkdir(mode=0o500)
            assert "not writable" in one_error(run_cli("run", recipe, "--run-dir", locked / "run"))
        assert "--until needs a stage name" in one_error(run_cli("run", recipe, "--run-dir", tmp_path / "run", "--until", ""))
        assert "no stage named 'sovle'" in one_error(run_cli("run", recipe, "--run-dir", tmp_path / "run", "--until", "sovle"))
        assert fake.requests_by_prompt_seed.total() == 0  # nothing was sent
        dots = fake_recipe(tmp_path / "dots.yaml", fake.api_base, name="..", **SMALL)
        assert "would make runs/.. a folder outside runs/" in one_error(run_cli("validate", dots))


def _damage(path: Path, how: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: rng.randint(1, max(1, len(data) - 1))]))
    elif how == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    elif how == "flip":
        for _ in range(64):
            data[rng.randrange(100, len(data))] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "text":
        path.write_text("this is not a database\n")
    elif how in ("wrong_schema", "wrong_columns", "future_version"):
        sql = {"wrong_schema": "CREATE TABLE other (x)", "wrong_columns": "CREATE TABLE responses (key TEXT, blob BLOB)",
               "future_version": "PRAGMA user_version=99"}[how]
        if how != "future_version":
            path.unlink()  # another database in its place
        db = sqlite3.connect(path)
        db.execute(sql)
        db.commit()
        db.close()


@pytest.mark.parametrize("how", ["truncate", "garbage", "flip", "text", "wrong_schema", "wrong_columns", "future_version"])
def test_a_damaged_cache_is_one_error_and_nothing_in_the_run_is_lost(tmp_path, how):
    with pipeline() as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **SMALL)
        run = tmp_path / "run"
        first = run_cli("run", recipe, "--run-dir", run)
        assert first.returncode == 0, first.stderr[-1000:]
        cache = tmp_path / "requests.sqlite"  # the project's cache, beside the run directory
        subprocess.run([sys.executable, "-c", f"import sqlite3; d=sqlite3.connect({str(cache)!r}); d.execute('PRAGMA wal_checkpoint(TRUNCATE)'); d.close()"],
                       check=True)
        before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and "requests.sqlite" not in p.name}
        _damage(cache, how, random.Random(how))
        for p in tmp_path.glob("requests.sqlite-*"):
            p.unlink()
        sent = fake.requests_by_prompt_seed.total()
        out = run_cli("run", recipe, "--run-dir", run, "--set", "ask_me_anything.questions_per_seed=3")  # a stage must run again
        if out.returncode == 0 and how == "flip":  # bytes flipped in free pages: SQLite may still read it whole
            return
        msg = one_error(out)
        assert "cannot be used" in msg and str(cache) in msg and "--cache another file" in msg
        assert fake.requests_by_prompt_seed.total() == sent  # nothing paid with a cache that cannot record it
        after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and "requests.sqlite" not in p.name}
        assert {k: v for k, v in after.items() if k.name not in ("plan.json", "recipe.yaml")} == \
               {k: v for k, v in before.items() if k.name not in ("plan.json", "recipe.yaml")}


@pytest.mark.parametrize("value", ["{}", "[]", '"text"', "null", "12", '{"text": 5}', '{"text": "a", "prompt_tokens": -3}',
                                   '{"text": "a", "cost": -1.0}', '{"text": "a", "finish_reason": []}', "{not json", '{"text": "ok"}'])
def test_a_cached_value_that_is_not_a_completion_is_a_miss(tmp_path, value):
    cache = RequestCache(tmp_path / "c.sqlite")
    cache._db.execute("INSERT INTO responses VALUES (?, ?, 0)", ("k", value))
    good = value == '{"text": "ok"}'
    assert (cache.get("k") is not None) is good and ("k" in cache.get_many(["k"])) is good
    assert cache.damaged == (0 if good else 2)
    assert well_formed({"text": "", "finish_reason": "length", "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})


def test_two_runs_on_one_run_directory_never_pay_twice(tmp_path):
    with pipeline(latency=0.3) as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **SMALL)
        run = tmp_path / "run"
        args = [sys.executable, "-m", "orca_recipe.cli", "run", str(recipe), "--run-dir", str(run)]
        env = dict(os.environ, NO_COLOR="1")
        a = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        b = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        outs = [p.communicate(timeout=180) for p in (a, b)]
        codes = sorted([a.returncode, b.returncode])
        assert codes == [0, 2], outs
        refused = next(err for (o, err), p in zip(outs, (a, b)) if p.returncode == 2)
        assert "another run (pid" in refused and "Traceback" not in refused
        per_request = fake.requests_by_prompt_seed
        assert per_request and max(per_request.values()) == 1  # every request paid once
        again = run_cli("run", recipe, "--run-dir", run)  # the lock went with its holder
        assert again.returncode == 0 and max(fake.requests_by_prompt_seed.values()) == 1


def test_the_same_request_twice_at_once_is_sent_once(tmp_path):
    with FakeOpenAI(latency=0.3) as fake:
        ep = Endpoint(name="t", litellm_model="openai/fake", identity="t", api_base=fake.api_base, concurrency=8)
        llm = LLM({"t": ep}, RequestCache(tmp_path / "c.sqlite"))
        msgs = [{"role": "user", "content": "A generated problem that two seeds both produced."}]

        async def go():
            usage = Usage()
            got = await asyncio.gather(*(llm.complete_n("t", msgs, {"temperature": 0.7}, 4, usage=usage) for _ in range(3)),
                                       *(llm.complete("t", msgs, {"temperature": 0.2}, usage=usage) for _ in range(3)))
            await llm.aclose()
            return got, usage

        got, usage = asyncio.run(go())
        assert [c.text for c in got[0]] == [c.text for c in got[1]] == [c.text for c in got[2]]
        assert len({c.text for c in got[3:]}) == 1
        assert sum(fake.requests_by_prompt_seed.values()) == 2  # one n=4 call and one single call
        assert usage.cache_hits == 2 * 4 + 2


@pytest.mark.parametrize("usage", [{"prompt_tokens": -500, "completion_tokens": -7}, {"prompt_tokens": 1e30, "completion_tokens": "9"},
                                   {"prompt_tokens": True, "completion_tokens": None}, {"prompt_tokens": 2.5, "completion_tokens": [3]}])
def test_usage_an_endpoint_reports_is_validated(tmp_path, usage):
    with FakeOpenAI(usage_override=usage) as fake:
        ep = Endpoint(name="t", litellm_model="openai/fake", identity="t", api_base=fake.api_base, price=(1e-6, 2e-6))
        llm = LLM({"t": ep}, RequestCache(tmp_path / "c.sqlite"))

        async def go():
            u = Usage()
            c = await llm.complete("t", [{"role": "user", "content": "what is 2 + 2?"}], {"temperature": 0}, usage=u)
            await llm.aclose()
            return c, u

        c, u = asyncio.run(go())
        assert 0 <= c.prompt_tokens < 10**6 and 0 <= c.completion_tokens < 10**6  # unknown: estimated from the text
        assert u.prompt_tokens >= 0 and u.completion_tokens >= 0 and u.cost is not None and 0 <= u.cost < 1


def test_a_key_echoed_by_an_endpoint_is_never_written(tmp_path, monkeypatch):
    secret = "sk-test-" + "q" * 32
    monkeypatch.setenv("ORCA_TEST_KEY", secret)
    with FakeOpenAI(responder=lambda last, seed, i: f"Sure! Your key is {secret}; as Bearer {secret}.") as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, endpoint={"api_key_env": "ORCA_TEST_KEY"}, **SMALL)
        run = tmp_path / "run"
        proc = run_cli("run", recipe, "--run-dir", run, env={"ORCA_TEST_KEY": secret})
        assert proc.returncode in (0, 2), proc.stderr[-1000:]
        assert fake.ok_requests > 0
        for p in run.rglob("*"):
            if p.is_file():
                assert secret.encode() not in p.read_bytes(), p
        assert secret not in proc.stdout + proc.stderr


def test_a_users_own_csv_with_the_wrong_answer_column_or_format(tmp_path):
    own = tmp_path / "own.csv"
    own.write_text("q,a\n" + "".join(f"What is {i} + {i}?,{2 * i}\n" for i in range(10)))
    base = ["--set", f"seeds.path={own}", "--set", "seeds.question_field=q", "--set", "seeds.holdout=null",
            "--set", "seeds.max_solution_steps=null", "--set", "solve.gold_solutions=false"]
    wrong_column = run_cli("validate", REPO / "recipes" / "tiny.yaml", *base, "--set", "seeds.answer_field=answer")
    assert "seeds.answer_field: no row of" in one_error(wrong_column) and "fields: q, a" in wrong_column.stderr
    wrong_format = run_cli("validate", REPO / "recipes" / "tiny.yaml", *base, "--set", "seeds.answer_field=a")
    assert "seeds.answer_format: answer_format gsm8k expects" in one_error(wrong_format) and "none of the 10 answers" in wrong_format.stderr
    ok = run_cli("validate", REPO / "recipes" / "tiny.yaml", *base, "--set", "seeds.answer_field=a", "--set", "seeds.answer_format=plain")
    assert ok.returncode == 0 and "warning" not in ok.stderr
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}" if i < 2 else str(i)}) + "\n" for i in range(10)))
    few = run_cli("validate", REPO / "recipes" / "tiny.yaml", "--set", f"seeds.path={mixed}", "--set", "seeds.holdout=null",
                  "--set", "seeds.max_solution_steps=null")
    assert few.returncode == 0 and "only 2 of 10 answers" in " ".join(few.stderr.split())


def test_a_stage_that_ends_with_no_rows_stops_the_run_there(tmp_path):
    with FakeOpenAI(fault="400") as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **SMALL)
        msg = one_error(run_cli("run", recipe, "--run-dir", tmp_path / "run"))
        assert "ask_me_anything produced 0 rows, and solve needs them: 2x " in msg  # with the reasons
        assert not (tmp_path / "run" / "solve").exists()
        m = json.loads((tmp_path / "run" / "ask_me_anything" / "manifest.json").read_text())
        assert m["rows"] == 0 and m["failures"] + m["rejects"] == 2  # written and accounted for, nothing lost


@pytest.mark.parametrize("typo, hint", [("learning_rte", "learning_rate"), ("micro_batchsize", "micro_batch_size"),
                                        ("gradient_checkpoint", "gradient_checkpointing"), ("zzz_not_a_key", None)])
def test_typos_inside_an_axolotl_block_are_refused(typo, hint):
    proc = run_cli("validate", REPO / "recipes" / "tiny.yaml", "--set", f"training.sft.axolotl.{typo}=3")
    msg = one_error(proc)
    assert f"unknown Axolotl key '{typo}'" in msg and "training.sft.axolotl" in msg
    assert (f"did you mean '{hint}'" in msg) if hint else "did you mean" not in msg


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_a_run_quietly_with_nothing_lost(tmp_path, sig, code):
    import time

    with pipeline(latency=2.0) as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **SMALL)
        args = [sys.executable, "-m", "orca_recipe.cli", "run", str(recipe), "--run-dir", str(tmp_path / "run")]
        # SIGINT as a terminal delivers it: a shell's background job (pytest under nohup ... &) starts
        # its children with SIGINT ignored, and Python then installs no KeyboardInterrupt
        proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, NO_COLOR="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while fake.total_requests == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        for noise in ("Traceback", "CancelledError", "Task was destroyed", "Task exception", "KeyboardInterrupt"):
            assert noise not in err, err
        assert not (tmp_path / "run" / "seeds" / "stage.json").exists() or (tmp_path / "run" / "seeds" / "manifest.json").exists()
        again = run_cli("run", recipe, "--run-dir", tmp_path / "run")
        assert again.returncode == 0, again.stderr[-800:]
        assert max(fake.delivered_by_prompt_seed().values()) == 1  # every answer the client received, received once


def test_a_changed_setting_keeps_the_old_output_and_switching_back_costs_nothing(tmp_path):
    with pipeline() as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **SMALL)
        run = tmp_path / "run"
        assert run_cli("run", recipe, "--run-dir", run).returncode == 0
        first = (run / "ask_me_anything" / "data.jsonl").read_bytes()
        changed = run_cli("run", recipe, "--run-dir", run, "--set", "ask_me_anything.questions_per_seed=3")
        assert changed.returncode == 0, changed.stderr[-800:]
        kept = run_cli("clean", run)
        assert kept.returncode == 0 and "kept ask_me_anything-" in kept.stdout and "kept solve-" in kept.stdout
        sent = fake.total_requests
        back = run_cli("run", recipe, "--run-dir", run)  # the first setting again: restored, not re-run
        assert back.returncode == 0 and "0 stage(s) ran" in back.stdout and fake.total_requests == sent, back.stdout[-1500:]
        assert (run / "ask_me_anything" / "data.jsonl").read_bytes() == first
        gone = run_cli("clean", run, "--yes")
        assert gone.returncode == 0 and "removed" in gone.stdout and run_cli("clean", run).stdout.strip().endswith("nothing superseded")


def test_tables_read_at_80_columns_and_the_cli_conventions(tmp_path):
    with pipeline() as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **SMALL)
        run = tmp_path / "run"
        assert run_cli("run", recipe, "--run-dir", run).returncode == 0
        for args in (("plan", recipe, "--no-prompts", "--out", tmp_path / "p"), ("status", run)):
            shown = run_cli(*args, env={"COLUMNS": "80"})
            assert shown.returncode == 0, shown.stderr
            lines = shown.stdout.splitlines()
            assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
            assert "…" not in shown.stdout  # no name cut short
            for stage in ("ask_me_anything", "solve", "filter"):
                assert any(line.split("│")[2 if args[0] == "plan" else 1].strip() == stage for line in lines if line.count("│") > 3), stage
    assert run_cli("--version").stdout.startswith("orca-recipe ")
    same = run_cli("diff", REPO / "recipes" / "tiny.yaml", REPO / "recipes" / "tiny.yaml", "--exit-code")
    other = run_cli("diff", REPO / "recipes" / "tiny.yaml", REPO / "examples" / "tiny_kto.yaml", "--exit-code")
    assert (same.returncode, other.returncode) == (0, 1)


def test_a_budget_stops_the_run_at_the_cap_and_a_higher_one_carries_on(tmp_path):
    """$1 per 1,000 output tokens at most: each request's worst case is ~$0.2, so a $1 cap stops
    the generation half part-way. Nothing answered is lost or counted twice; a rerun with a
    higher cap pays only what is missing."""
    price = {"input_per_mtok": 100.0, "output_per_mtok": 1000.0}
    with pipeline() as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, endpoint={"price": price, "concurrency": 2},
                             **{**SMALL, "seeds": {**SMALL["seeds"], "limit": 6}, "ask_me_anything": {"limit": 6}})
        shown = run_cli("plan", recipe, "--no-prompts", "--out", tmp_path / "p", "--set", "budget_usd=0.5")
        assert shown.returncode == 0 and "is over budget_usd $0.50" in " ".join(shown.stdout.split())
        run = tmp_path / "run"
        capped = run_cli("run", recipe, "--run-dir", run, "--max-cost", "1")
        msg = one_error(capped)
        assert "the budget of $1.0000 would be passed" in msg and "not finished:" in msg and "--max-cost" in msg
        ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
        spent = sum(r["cost"] for r in ledger)
        assert 0 < spent <= 1.0 and len({r["key"] for r in ledger}) == len(ledger)
        sent = fake.ok_requests
        assert 0 < sent < 12  # it stopped before the stage's 6 + 6 requests
        done = run_cli("run", recipe, "--run-dir", run, "--max-cost", "100")
        assert done.returncode == 0, done.stderr[-1500:]
        assert max(fake.delivered_by_prompt_seed().values()) == 1  # nothing paid twice across the cap
        ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
        assert len({r["key"] for r in ledger}) == len(ledger) and sum(r["cost"] for r in ledger) > spent
        manifests = {p.parent.name: json.loads(p.read_text()) for p in run.glob("*/manifest.json")}
        in_manifests = sum((m.get("usage") or {}).get("cost") or 0 for m in manifests.values())
        # what the finished stages paid is in the ledger; the ledger also has what the capped stage paid before the stop
        assert in_manifests <= sum(r["cost"] for r in ledger) + 1e-9


def test_every_run_writes_a_self_contained_html_report_whose_links_resolve(tmp_path):
    from html.parser import HTMLParser

    with pipeline() as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **{**SMALL, "evolve": {"limit": 2, "rounds": 1},
                                                                   "solve": {"inputs": ["ask_me_anything", "evolve"]}})
        run = tmp_path / "run"
        assert run_cli("run", recipe, "--run-dir", run).returncode == 0
    page = (run / "report.html").read_text()

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.hrefs, self.external = set(), [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if "id" in a:
                self.ids.add(a["id"])
            if tag == "a" and a.get("href", "").startswith("#"):
                self.hrefs.append(a["href"][1:])
            for k in ("src", "href"):
                if a.get(k, "").startswith(("http:", "https:", "//")):
                    self.external.append(a[k])

    c = Collect()
    c.feed(page)
    assert not c.external  # no network, no CDN
    assert c.hrefs and all(h in c.ids for h in c.hrefs), [h for h in c.hrefs if h not in c.ids][:5]
    assert any(h.startswith("seed-") for h in c.hrefs)  # lineage: a generated problem links to its seed
    for stage in ("seeds", "ask_me_anything", "evolve", "solve", "filter"):
        assert f'id="stage-{stage}"' in page
    assert 'id=q' in page and "addEventListener('input'" in page  # the search box filters the row tables


def test_preview_shows_a_few_seeds_and_the_full_run_does_not_pay_for_them_again(tmp_path):
    with pipeline() as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **{**SMALL, "seeds": {**SMALL["seeds"], "limit": 4},
                                                                   "ask_me_anything": {"limit": None}})
        run = tmp_path / "run"
        shown = run_cli("preview", recipe, "--seeds", "2", "--run-dir", run)
        assert shown.returncode == 0, shown.stderr[-1500:]
        assert "ask_me_anything: " in shown.stdout and "solve: " in shown.stdout and (run / "preview" / "report.html").is_file()
        previewed = fake.delivered_by_prompt_seed()
        assert previewed
        full = run_cli("run", recipe, "--run-dir", run)
        assert full.returncode == 0, full.stderr[-1500:]
        assert max(fake.delivered_by_prompt_seed().values()) == 1  # the previewed requests came from the cache
        assert sum(fake.delivered_by_prompt_seed().values()) > sum(previewed.values())  # and the rest was asked


RUN_FILES = ["plan.json", "ask_me_anything/manifest.json", "ask_me_anything/stage.json", "seeds/data.jsonl"]
DAMAGE = ["fifo", "dev_zero", "huge", "wrong_type", "not_utf8", "wrong_fields"]


def _spoil(path: Path, how: str) -> None:
    path.unlink()
    if how == "fifo":
        os.mkfifo(path)  # opening it would block forever
    elif how == "dev_zero":
        path.symlink_to("/dev/zero")  # reading it never ends
    elif how == "huge":
        with path.open("wb") as f:  # 300 MiB, sparse: over every run file's cap, no disk used
            f.truncate(300 << 20)
    elif how == "wrong_type":
        path.write_text('[["not", "an", "object"]]\n')
    elif how == "wrong_fields":  # the right shape, hand-edited: fields of the wrong type
        path.write_text('{"stage": 1, "kind": "eval", "fingerprint": 7, "complete": true, "rows": "many", "usage": [1], '
                        '"report": {"n": "x", "ci95": 3}, "stages": [{"name": "../x", "fingerprint": 1}]}\n')
    else:
        path.write_bytes(b'{"stages": "\xff\xfe"}\n')


def test_a_damaged_run_directory_is_one_error_or_a_rerun_and_never_a_hang(tmp_path):
    """Every file of a run directory the product reads back (plan, manifest, stage marker, a
    dataset), replaced by a FIFO, a link to /dev/zero, a 300 MiB file, JSON of the wrong shape
    bytes that are not UTF-8, or fields of the wrong type: `status`, `report` and `run` finish in bounded time with exit
    0 or one `error:` line (exit 2), and `run` pays for nothing twice."""
    import shutil

    with pipeline() as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, **SMALL)
        good = tmp_path / "good"
        assert run_cli("run", recipe, "--run-dir", good).returncode == 0
        paid = fake.requests_by_prompt_seed.total()
        for i, (name, how) in enumerate((n, h) for n in RUN_FILES for h in DAMAGE):
            run = tmp_path / "runs" / f"{i}"
            shutil.copytree(good, run, symlinks=True)
            _spoil(run / name, how)
            commands = [("status", run), ("report", run)] + ([("run", recipe, "--run-dir", run)] if i % len(DAMAGE) == RUN_FILES.index(name) else [])
            for args in commands:
                out = run_cli(*args, timeout=90)
                assert out.returncode in (0, 2), (name, how, args[0], out.returncode, out.stderr[-600:])
                assert "Traceback" not in out.stderr, (name, how, args[0], out.stderr[-1200:])
                if out.returncode == 2:
                    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) <= 3, (name, how, out.stderr[-600:])
        assert fake.requests_by_prompt_seed.total() == paid  # every rerun's requests came from the project's cache
