"""The embedded default end to end, for real: SmolLM2 on vLLM for every role, Axolotl SFT and
DPO on CPU, killed in the middle of iteration 2 and resumed, then rerun for free."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli import REPO, run_cli

pytestmark = [pytest.mark.vllm, pytest.mark.axolotl]

# tiny.yaml with smaller counts so CI stays well inside its budget
SMALL = [
    "seeds.limit=6", "ask_me_anything.limit=3", "evolve.limit=2", "evolve.rounds=1", "practice.problems=4",
    "practice.samples_per_problem=2", "eval.limit=12", "training.sft.axolotl.max_steps=4", "training.preference.axolotl.max_steps=4",
    "training.checkpoint_every_steps=2", "eval.max_tokens=160",
    # the pipeline, not the learning, is under test: 2 sequences a step instead of 8 (SFT) and 4 (DPO)
    "training.sft.axolotl.micro_batch_size=2", "training.sft.axolotl.gradient_accumulation_steps=1", "training.preference.axolotl.micro_batch_size=2",
]


def cli_args(run_dir: Path) -> list[str]:
    args = ["run", "recipes/tiny.yaml", "--run-dir", str(run_dir)]
    for s in SMALL:
        args += ["--set", s]
    return args


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and "pytest" not in cmd:
            found.append(cmd)
    return found


def test_tiny_recipe_end_to_end_with_kill_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, COLUMNS="120", HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True")
    proc = subprocess.Popen([sys.executable, "-m", "orca_recipe.cli", *cli_args(run_dir)], cwd=REPO, env=env,
                            stdout=(tmp_path / "first.log").open("w"), stderr=subprocess.STDOUT)
    checkpoint = run_dir / "train_2" / "output" / "checkpoint-2"
    deadline = time.time() + 1500
    while time.time() < deadline and proc.poll() is None:
        if (checkpoint / "trainer_state.json").is_file():
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before iteration 2 saved a checkpoint:\n" + (tmp_path / "first.log").read_text()[-3000:]
    time.sleep(1.0)  # the checkpoint's last files land
    proc.send_signal(signal.SIGKILL)  # mid-DPO, after its step-2 checkpoint: no clean-up code runs
    proc.wait()
    time.sleep(5)
    assert processes_mentioning(str(run_dir)) == []  # the trainer and the checkpoint server died with it

    resumed = run_cli(*cli_args(run_dir), timeout=1500)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for done in ("seeds", "ask_me_anything", "evolve", "solve", "filter", "eval_base", "sft", "eval_sft", "practice_2", "judge_2", "preferences_2"):
        assert re.search(rf"✓ {done}: done .* skipped", resumed.stdout), done
    assert re.search(r"✓ train_2: \d+ rows", resumed.stdout) and re.search(r"✓ eval_2: \d+ rows", resumed.stdout)
    train_2 = json.loads((run_dir / "train_2" / "manifest.json").read_text())["report"]
    assert train_2["resumed_from"] == str(checkpoint) and train_2["steps"] == 4  # resumed there, not from step 0

    # What holds on any CPU (the model's sampled text differs from one CPU to another, so no
    # count that depends on it is pinned): every input ends up as a row, a reject or a failure.
    manifests = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}

    def accounted(stage: str) -> int:
        m = manifests[stage]
        return m["rows"] + m["rejects"] + m["failures"]

    assert manifests["seeds"]["rows"] == 6
    assert accounted("solve") == 6 + manifests["ask_me_anything"]["rows"] + manifests["evolve"]["rows"]
    assert manifests["solve"]["report"]["solved_by"].get("gold") == 6  # the seeds' worked solutions, no LLM call
    practice = manifests["practice_2"]
    assert practice["rows"] + 2 * practice["failures"] == 2 * min(4, manifests["filter"]["rows"])
    assert accounted("judge_2") == practice["rows"]
    prefs = manifests["preferences_2"]
    # DPO (tiny.yaml's choice on dev): a pair per wrong practice sample at most
    assert prefs["report"]["kind"] == "dpo" and 0 < prefs["rows"] <= practice["rows"]
    for ev in ("eval_base", "eval_sft", "eval_2"):
        rep = manifests[ev]["report"]
        assert rep["n"] == 12 and accounted(ev) == 12 and rep["ci95"][0] <= rep["pass_at_1"] <= rep["ci95"][1]
    assert (run_dir / "train_2" / "output" / "config.json").is_file()
    assert not list(run_dir.glob("*/output/checkpoint-*"))  # resume state goes once the model is saved
    report = (run_dir / "report.md").read_text()
    assert "| eval_base | base | 12 |" in report and "| eval_2 | train_2 | 12 |" in report
    assert (run_dir / "pass_at_1.png").stat().st_size > 1000

    again = run_cli(*cli_args(run_dir), timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 stage(s) ran" in again.stdout and "0 LLM requests made" in again.stdout

    moved = tmp_path / "elsewhere" / "run"  # a finished run moved to another folder is still finished
    moved.parent.mkdir()
    run_dir.rename(moved)
    again = run_cli(*cli_args(moved), timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 stage(s) ran" in again.stdout and "0 LLM requests made" in again.stdout
    run_dir = moved

    paired = json.loads(run_cli("report", run_dir, "--format", "json").stdout)
    assert {(p["a"], p["b"]) for p in paired["pairs"]} >= {("eval_base", "eval_sft"), ("eval_sft", "eval_2")}

    shown = run_cli("report", run_dir)
    assert shown.returncode == 0 and "pass@1" in shown.stdout and "eval_2" in shown.stdout
