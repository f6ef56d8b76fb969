"""The run engine end to end through the CLI, against the fault-injecting fake endpoint.

The fake stands in for a model only where a real one cannot: killing a run mid-stage,
counting every request the endpoint received, planting a secret. The real model runs in
test_run_vllm.py.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


from _cli import REPO, run_cli
from fake_openai import FakeOpenAI, fake_recipe, pipeline_reply

KEY = "sk-test-PLANTED-9f8e7d"


def write_recipe(tmp: Path, api_base: str, *, seeds: int = 6, concurrency: int = 4, key_env: str | None = None) -> Path:
    """tiny.yaml's generation half, pointed at the fake endpoint."""
    endpoint = {"concurrency": concurrency, "max_retries": 3} | ({"api_key_env": key_env} if key_env else {})
    return fake_recipe(tmp / "gen.yaml", api_base, endpoint=endpoint, seeds={"limit": seeds}, evolve={"limit": seeds},
                       filters={"decontaminate": {"ngram": 13, "path": f"{REPO}/data/gsm8k/test.jsonl"}})


def read(run_dir: Path, stage: str, name: str = "data.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / stage / name).read_text().splitlines() if line.strip()]


def test_run_writes_datasets_with_lineage_and_a_rerun_is_free(tmp_path):
    with FakeOpenAI(responder=pipeline_reply) as srv:
        recipe = write_recipe(tmp_path, srv.api_base)
        run_dir = tmp_path / "run"
        first = run_cli("run", recipe, "--run-dir", run_dir, "--until", "filter")
        assert first.returncode == 0, first.stderr + first.stdout
        paid = srv.ok_requests
        # 6 seeds: 6 AMA + 6 x 2 rounds x (suggester + editor) + solve(6 seeds + 12 AMA + 6 evolved)
        assert paid == 6 + 24 + 24
        second = run_cli("run", recipe, "--run-dir", run_dir, "--until", "filter")
        assert second.returncode == 0, second.stderr
        assert srv.ok_requests == paid and srv.total_requests == paid  # nothing asked again
        assert "0 LLM requests made" in second.stdout and second.stdout.count("skipped") >= 5

    from datasets import load_dataset

    solved = load_dataset("json", data_files=str(run_dir / "solve" / "data.jsonl"), split="train")
    assert len(solved) == 24 and {"id", "question", "solution", "final_answer", "seed_id", "parent_id", "origin"} <= set(solved.column_names)
    evolved = read(run_dir, "evolve")
    assert {r["round"] for r in evolved} == {2}
    assert all(r["parent_id"].endswith("-r1") and r["seed_id"].startswith("seed-") for r in evolved)
    ama = read(run_dir, "ask_me_anything")
    assert all(r["parent_id"] == r["seed_id"] for r in ama) and len(ama) == 12
    m = json.loads((run_dir / "solve" / "manifest.json").read_text())
    assert m["complete"] and m["rows"] == 24 and m["usage"]["requests"] == 24 and m["usage"]["prompt_tokens"] > 0
    status = run_cli("status", run_dir)
    assert status.returncode == 0 and "done" in status.stdout and "not run" not in status.stdout


def test_sigkill_mid_stage_then_rerun_repays_nothing_finished(tmp_path):
    concurrency = 4
    with FakeOpenAI(responder=pipeline_reply, latency=0.15) as srv:
        recipe = write_recipe(tmp_path, srv.api_base, seeds=12, concurrency=concurrency)
        clean = run_cli("run", recipe, "--run-dir", tmp_path / "clean" / "run", "--until", "solve")  # a project of its own
        assert clean.returncode == 0, clean.stderr
        def delivered() -> int:  # answers that reached the client: what was paid for
            return sum(srv.delivered_by_prompt_seed().values())

        unique = delivered()
        srv.reset_counters()

        run_dir = tmp_path / "killed" / "run"
        env = dict(os.environ, COLUMNS="120")
        proc = subprocess.Popen([sys.executable, "-m", "orca_recipe.cli", "run", str(recipe), "--run-dir", str(run_dir), "--until", "solve"],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while delivered() < unique // 2 and time.time() < deadline:  # mid-run, inside a stage
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = delivered()
        assert 0 < before < unique
        db = run_dir.parent / "requests.sqlite"  # the project's cache
        finished = sqlite3.connect(db).execute("select count(*) from responses").fetchone()[0] if db.exists() else 0

        again = run_cli("run", recipe, "--run-dir", run_dir, "--until", "solve")
        assert again.returncode == 0, again.stderr
        # Every request the cache had finished is answered from it: the endpoint sees only the rest,
        # plus at most the `concurrency` requests that were in flight when the process died.
        repaid = delivered() - unique
        assert finished > 0 and 0 <= repaid <= concurrency
        assert delivered() - before >= unique - finished  # what had not finished was asked for
        for stage in ("ask_me_anything", "evolve", "solve"):
            assert read(run_dir, stage) == read(tmp_path / "clean" / "run", stage), stage


def test_api_key_never_reaches_the_run_directory_or_output(tmp_path):
    with FakeOpenAI(responder=pipeline_reply, require_key=KEY, echo_key=True) as srv:
        recipe = write_recipe(tmp_path, srv.api_base, seeds=3, key_env="ORCA_TEST_KEY")
        run_dir = tmp_path / "run"
        ok = run_cli("run", recipe, "--run-dir", run_dir, "--until", "filter", env={"ORCA_TEST_KEY": KEY})
        assert ok.returncode == 0, ok.stderr
        # projects of their own: in `run`'s project they would reuse its stages and send nothing
        bad = run_cli("run", recipe, "--run-dir", tmp_path / "p2" / "run", "--until", "filter", env={"ORCA_TEST_KEY": "sk-wrong-" + KEY[::-1]})
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        missing = run_cli("run", recipe, "--run-dir", tmp_path / "p3" / "run", "--until", "filter", env={"ORCA_TEST_KEY": ""})
        assert missing.returncode == 2 and "ORCA_TEST_KEY" in missing.stderr
    for text in (ok.stdout, ok.stderr, bad.stdout, bad.stderr, missing.stdout, missing.stderr):
        assert KEY not in text and KEY[::-1] not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert KEY.encode() not in blob and KEY[::-1].encode() not in blob, path


def test_unreachable_endpoint_is_one_clear_error(tmp_path):
    recipe = write_recipe(tmp_path, "http://127.0.0.1:9/v1")
    proc = run_cli("run", recipe, "--run-dir", tmp_path / "run", "--until", "filter", timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    assert "smol" in proc.stderr


def test_a_changed_stage_starts_from_a_clean_folder(tmp_path):
    with FakeOpenAI(responder=pipeline_reply) as srv:
        recipe = write_recipe(tmp_path, srv.api_base, seeds=3)
        run_dir = tmp_path / "run"
        assert run_cli("run", recipe, "--run-dir", run_dir, "--until", "solve").returncode == 0
        leftover = run_dir / "solve" / "output" / "checkpoint-7"  # what an old training would leave
        leftover.mkdir(parents=True)
        same = run_cli("run", recipe, "--run-dir", run_dir, "--until", "solve")
        assert same.returncode == 0 and leftover.is_dir()  # unchanged stage: skipped, untouched
        changed = run_cli("run", recipe, "--run-dir", run_dir, "--until", "solve", "--set", "solve.max_answer_chars=900")
        assert changed.returncode == 0, changed.stderr
        assert not leftover.exists() and json.loads((run_dir / "solve" / "stage.json").read_text())["fingerprint"] == json.loads((run_dir / "solve" / "manifest.json").read_text())["fingerprint"]


def test_a_fork_reuses_what_its_base_finished_and_pays_only_for_what_changed(tmp_path):
    """Two runs of one project: the fork's stages with the base's fingerprints are taken from the
    base's run directory (no request, even with a cache of its own); the changed one runs."""
    with FakeOpenAI(responder=pipeline_reply) as srv:
        recipe = write_recipe(tmp_path, srv.api_base)
        runs = tmp_path / "runs"
        base = run_cli("run", recipe, "--run-dir", runs / "base", "--until", "filter")
        assert base.returncode == 0, base.stderr + base.stdout
        paid = srv.total_requests
        planned = run_cli("plan", recipe, "--run-dir", runs / "fork", "--no-prompts", "--set", "evolve.rounds=1", "--out", tmp_path / "p")
        assert planned.returncode == 0 and "reused from" in planned.stdout and "ask_me_anything" in planned.stdout.split("reused from")[1]
        fork = run_cli("run", recipe, "--run-dir", runs / "fork", "--until", "filter", "--set", "evolve.rounds=1")
        assert fork.returncode == 0, fork.stderr + fork.stdout
        # evolve's one round asks what the base's first round asked, and solve's 18 seed and AMA
        # problems too: all from the project's request cache (runs/requests.sqlite); only the 6
        # problems the one-round evolution made are new
        assert srv.total_requests - paid == 6, fork.stdout
        assert (runs / "requests.sqlite").is_file() and not (runs / "fork" / "requests.sqlite").exists()
        assert "seeds: reused" in fork.stdout and "ask_me_anything: reused" in fork.stdout and "2 reused from other runs" in fork.stdout
        m = json.loads((runs / "fork" / "ask_me_anything" / "manifest.json").read_text())
        assert m["reused_from"] == str(runs / "base" / "ask_me_anything")
        assert read(runs / "fork", "ask_me_anything") == read(runs / "base", "ask_me_anything")
        assert json.loads((runs / "base" / "ask_me_anything" / "manifest.json").read_text()).get("reused_from") is None  # the base is untouched
        again = run_cli("run", recipe, "--run-dir", runs / "fork", "--until", "filter", "--set", "evolve.rounds=1")
        assert again.returncode == 0 and srv.total_requests - paid == 6 and "0 LLM requests made" in again.stdout
        alone = run_cli("run", recipe, "--run-dir", runs / "alone", "--until", "ask_me_anything", "--project", tmp_path / "elsewhere")
        assert alone.returncode == 0 and "reused" not in alone.stdout.split("stage(s) ran")[0]  # another project: nothing found
