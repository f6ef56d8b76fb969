"""The fault suite: a whole generation run through the CLI against an endpoint that fails 30%
of all attempts, in every way an endpoint fails (429 with Retry-After, 500, 503, connection
reset, a hang past the client timeout, a truncated body, a non-JSON body, no choices).

What must hold:
- the run completes, and every row is accounted for: in the stage's output, or in its rejects
  or failures table with a reason (inputs == outputs + rejects + failures, stage by stage);
- no request is paid for twice: the endpoint's good answers delivered per (prompt, seed) are at
  most 1 (an answer the client had already timed out on was never received: not a repayment);
- a SIGKILL in the middle of a stage and a rerun give the same datasets as an uninterrupted
  run, and the endpoint's own counts show nothing that had finished was asked for again
  (beyond the `concurrency` requests that were in flight at the kill).

tests/test_run_fake.py has the fault-free versions; this file adds the faults.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from _cli import REPO, run_cli
from fake_openai import FakeOpenAI, fake_recipe, pipeline_reply

FAULTS = ["429", "500", "503", "reset", "hang", "truncated", "nonjson", "empty"]
SEEDS = 40
CONCURRENCY = 16
STAGES = ("ask_me_anything", "evolve", "solve", "filter")


def fault_recipe(tmp: Path, api_base: str) -> Path:
    """tiny.yaml's generation half on the faulty endpoint: a short timeout (the hang fault) and
    10 retries, so a request fails for good with odds 0.3**11 (about 2e-6)."""
    return fake_recipe(tmp / "faulty.yaml", api_base, name="faulty",
                       endpoint={"concurrency": CONCURRENCY, "timeout_s": 2.0, "max_retries": 10},
                       seeds={"limit": SEEDS}, evolve={"limit": SEEDS},
                       filters={"decontaminate": {"ngram": 13, "path": f"{REPO}/data/gsm8k/test.jsonl"}})


def read(run_dir: Path, stage: str, name: str = "data.jsonl") -> list[dict]:
    path = run_dir / stage / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


def assert_nothing_lost(run_dir: Path) -> dict[str, int]:
    """Stage by stage: every input is an output row, a reject or a failure, each with a reason."""
    seeds = read(run_dir, "seeds")
    assert len(seeds) == SEEDS

    for stage in STAGES:
        m = manifest(run_dir, stage)
        rows, rejects, failures = read(run_dir, stage), read(run_dir, stage, "rejects.jsonl"), read(run_dir, stage, "failures.jsonl")
        assert m["complete"] and (m["rows"], m["rejects"], m["failures"]) == (len(rows), len(rejects), len(failures)), stage
        assert m["usage"]["failures"] >= len([f for f in failures if f["reason"].startswith("llm:")]), stage
        assert all(r.get("reason") for r in rejects + failures), stage

    # ask_me_anything: each seed gave its questions or is a failure row (the fake always gives 2)
    ama, ama_fail = read(run_dir, "ask_me_anything"), read(run_dir, "ask_me_anything", "failures.jsonl")
    by_parent = Counter(r["parent_id"] for r in ama)
    assert set(by_parent) | {f["id"] for f in ama_fail} == {s["id"] for s in seeds}
    assert not set(by_parent) & {f["id"] for f in ama_fail}
    assert all(v == 2 for v in by_parent.values())

    # evolve (2 rounds, last kept): each seed's lineage ends in a round-2 row or a failure row
    evo = read(run_dir, "evolve")
    evo_out = evo + read(run_dir, "evolve", "rejects.jsonl") + read(run_dir, "evolve", "failures.jsonl")
    roots = Counter(r["id"].removeprefix("evo-").rsplit("-r", 1)[0] for r in evo_out)
    assert set(roots) == {s["id"] for s in seeds} and all(v == 1 for v in roots.values()), roots
    assert all(r["round"] == 2 for r in evo)

    # solve: inputs == rows + rejects + failures, as a partition of the problem ids
    problems = [r["id"] for r in seeds + ama + evo]
    solved = [r["id"] for stage_file in ("data.jsonl", "rejects.jsonl", "failures.jsonl") for r in read(run_dir, "solve", stage_file)]
    assert sorted(solved) == sorted(problems)

    # filter: every solved row is kept or rejected with its reason
    filtered = [r["id"] for f in ("data.jsonl", "rejects.jsonl", "failures.jsonl") for r in read(run_dir, "filter", f)]
    assert sorted(filtered) == sorted(r["id"] for r in read(run_dir, "solve"))

    return {s: manifest(run_dir, s)["failures"] for s in STAGES}


def assert_no_success_repaid(srv: "FakeOpenAI | Counts", allowance: int = 0) -> None:
    """At most one good answer delivered per (prompt, seed); `allowance` keys may have two (the
    requests in flight when a run was killed: delivered, but the process died before storing).

    An answer the client had already given up on (its timeout fired first, as happens on a
    starved CI machine: the write fails with a broken pipe) was never received, so asking
    again is a retry of a failed request, not a repaid success; the fake counts those apart.
    """
    delivered = srv.delivered_by_prompt_seed()
    twice = {k: v for k, v in delivered.items() if v > 1}
    assert all(v == 2 for v in twice.values()) and len(twice) <= allowance, twice
    undelivered = sum(srv.undelivered_by_prompt_seed.values())
    assert undelivered <= max(5, srv.ok_requests // 20), undelivered  # rare, or the timeout is wrong


@dataclass
class Counts:
    """The endpoint's counters after the uninterrupted run."""

    total_requests: int
    ok_requests: int
    faults_served: Counter
    ok_by_prompt_seed: Counter
    undelivered_by_prompt_seed: Counter

    def delivered_by_prompt_seed(self) -> Counter:
        return self.ok_by_prompt_seed - self.undelivered_by_prompt_seed


@dataclass
class Faulty:
    srv: FakeOpenAI
    recipe: Path
    clean_dir: Path
    clean: Counts


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """One faulty endpoint and one uninterrupted run through it (the reference for both tests)."""
    tmp = tmp_path_factory.mktemp("faults")
    with FakeOpenAI(responder=pipeline_reply, fault_rate=0.3, faults=FAULTS, fault_seed=1, retry_after=0, hang_s=4) as srv:
        recipe = fault_recipe(tmp, srv.api_base)
        clean_dir = tmp / "clean"
        proc = run_cli("run", recipe, "--run-dir", clean_dir, "--until", "filter", timeout=300)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr
        with srv._lock:
            counts = Counts(srv.total_requests, srv.ok_requests, Counter(srv.faults_served),
                            Counter(srv.ok_by_prompt_seed), Counter(srv.undelivered_by_prompt_seed))
        yield Faulty(srv, recipe, clean_dir, counts)


def test_faults_at_30_percent_lose_nothing_and_repay_nothing(faulty):
    c, run_dir = faulty.clean, faulty.clean_dir
    # every fault kind was served, about 30% of all attempts, and the run retried through them
    assert set(c.faults_served) == set(FAULTS), c.faults_served
    faults = sum(c.faults_served.values())
    assert 0.2 < faults / c.total_requests < 0.4, (faults, c.total_requests)
    assert c.ok_requests + faults == c.total_requests
    usage = [manifest(run_dir, s)["usage"] for s in STAGES]
    assert sum(u["retries"] for u in usage) >= faults - 11 * sum(u["failures"] for u in usage)

    failures = assert_nothing_lost(run_dir)
    assert sum(failures.values()) <= 1, failures  # 0.3**11 per request: nearly every request gets through
    assert_no_success_repaid(c)
    # every answer that reached the client was stored and counted once
    assert sum(u["requests"] for u in usage) == sum(c.delivered_by_prompt_seed().values())

    # a rerun is free: nothing is asked again, not even a faulty attempt
    faulty.srv.reset_counters()
    again = run_cli("run", faulty.recipe, "--run-dir", run_dir, "--until", "filter")
    assert again.returncode == 0, again.stderr
    assert faulty.srv.total_requests == 0 and "0 LLM requests made" in again.stdout


def test_sigkill_mid_stage_with_faults_then_rerun_matches_uninterrupted_run(faulty, tmp_path):
    srv, unique = faulty.srv, faulty.clean.ok_requests - sum(faulty.clean.undelivered_by_prompt_seed.values())
    srv.reset_counters()
    run_dir = tmp_path / "killed"
    env = dict(os.environ, COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "orca_recipe.cli", "run", str(faulty.recipe), "--run-dir", str(run_dir), "--until", "filter"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while srv.ok_requests < unique // 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = sum(srv.delivered_by_prompt_seed().values())
    assert 0 < before < unique, (before, unique)
    # killed inside a stage: not every LLM stage is complete
    assert not all((run_dir / s / "manifest.json").exists() for s in ("ask_me_anything", "evolve", "solve"))
    db = sqlite3.connect(run_dir.parent / "requests.sqlite")  # the project's cache, beside the run directory
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    finished = db.execute("select count(*) from responses").fetchone()[0]
    db.close()
    assert finished > 0

    again = run_cli("run", faulty.recipe, "--run-dir", run_dir, "--until", "filter", timeout=300)
    assert again.returncode == 0, again.stderr
    # what the cache had finished was not asked for again; only the requests in flight at the
    # kill (delivered, not yet stored) may have been paid a second time
    delivered = sum(srv.delivered_by_prompt_seed().values())
    assert 0 <= delivered - unique <= CONCURRENCY, (delivered, unique)
    assert_no_success_repaid(srv, allowance=CONCURRENCY)
    assert delivered - before >= unique - finished  # what had not finished was asked for
    for stage in ("seeds", *STAGES):
        assert read(run_dir, stage) == read(faulty.clean_dir, stage), stage
        for table in ("rejects.jsonl", "failures.jsonl"):
            assert read(run_dir, stage, table) == read(faulty.clean_dir, stage, table), (stage, table)
    # ... and with (almost surely) no failures, those datasets are whole
    assert sum(assert_nothing_lost(run_dir).values()) == 0


SICK = ["trickle", "429", "null_content", "no_message", "length", "500"]


def test_a_sick_endpoint_run_ends_by_itself_and_a_healthy_rerun_completes_it(tmp_path):
    """Replies that trickle in a byte at a time, Retry-After: 86400, null content, a choice
    without a message, cut-off solutions, one prompt that always gets 500, and a 6-second
    outage mid-run (at most 12 connections).
    With timeout_s=1, max_retries=2, max_backoff_s=1 the run must end by
    itself, in a time those three bound, every row accounted for; a healthy rerun then sends
    only what is missing, keeps no cut-off solution, and a third run sends nothing."""
    with FakeOpenAI(responder=pipeline_reply, fault_rate=0.35, faults=SICK, fault_seed=7, retry_after=86400, trickle_s=0.4) as srv:
        recipe = fake_recipe(tmp_path / "sick.yaml", srv.api_base, name="sick",
                             endpoint={"concurrency": 8, "timeout_s": 1.0, "max_retries": 2, "max_backoff_s": 1.0},
                             seeds={"limit": 12}, evolve={"limit": 12})
        from orca_recipe.problems import held_out_questions, load_problems
        from orca_recipe.recipe.compile import compile_file

        sd = compile_file(recipe).recipe.seeds  # the seeds this run takes, as the seeds stage takes them
        chosen = load_problems(sd.path, sd.format, sd.question_field, sd.answer_field, sd.answer_format, limit=sd.limit, shuffle=sd.shuffle,
                               seed=sd.seed, prefix="seed", key="seeds.path", max_steps=sd.max_solution_steps,
                               held_out=held_out_questions(sd.holdout, key="seeds.holdout")).rows
        poisoned = chosen[0]
        srv.always_fail = poisoned["question"][:60]  # every prompt quoting this seed gets 500, whatever the retries
        run_dir = tmp_path / "run"
        proc = subprocess.Popen([sys.executable, "-m", "orca_recipe.cli", "run", str(recipe), "--run-dir", str(run_dir), "--until", "filter"],
                                cwd=REPO, env=dict(os.environ, COLUMNS="150"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120  # the outage starts once the run is sending, however slow the machine
        while srv.total_requests < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        srv.outage(6, resets=12)  # 6 s or 12 connections: mid-run on a machine that finishes the run in 6 s
        try:
            out, _ = proc.communicate(timeout=240)  # a hang fails here instead of never ending
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the run against a sick endpoint did not end within 240 s")
        assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
        assert srv.faults_served["trickle"] and srv.faults_served["429"] and srv.faults_served["reset"], srv.faults_served
        first = {s: manifest(run_dir, s) for s in ("ask_me_anything", "evolve", "solve")}
        assert sum(m["failures"] for m in first.values()) > 0  # it gave up on some, with reasons
        for name, m in first.items():
            assert all(f["reason"] for f in read(run_dir, name, "failures.jsonl")), name
        ama_failed = {f["id"] for f in read(run_dir, "ask_me_anything", "failures.jsonl")}
        assert poisoned["id"] in ama_failed, (poisoned["id"], ama_failed)  # the prompt that always fails is a failure row

        srv.fault_rate, srv.always_fail = 0.0, None  # healthy again
        delivered = Counter(srv.ok_by_prompt_seed)
        srv.reset_counters()
        healed = run_cli("run", recipe, "--run-dir", run_dir, "--until", "filter", timeout=240)
        assert healed.returncode == 0, healed.stderr + healed.stdout[-2000:]
        repaid = {k for k in srv.ok_by_prompt_seed if delivered[k]}
        assert not repaid, f"answered requests were sent again: {list(repaid)[:3]}"
        solved = read(run_dir, "solve")
        assert solved and all("Then the" not in r["solution"] for r in solved)  # no cut-off solution kept
        for name in ("ask_me_anything", "evolve", "solve"):
            assert manifest(run_dir, name)["failures"] == 0, name

        srv.reset_counters()
        third = run_cli("run", recipe, "--run-dir", run_dir, "--until", "filter")
        assert third.returncode == 0 and srv.total_requests == 0 and "0 LLM requests made" in third.stdout
