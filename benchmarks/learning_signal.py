"""Does the embedded loop make its student better? Reproduces the README's table.

Run: .venv/bin/python benchmarks/learning_signal.py [--split dev|test] [--set key=value ...] [--until STAGE] [--runs DIR]

Runs `orca-recipe run recipes/tiny.yaml` (the main job) with the given overrides into a run
folder named after them and the split (under --runs, default runs/learning-signal), all
sharing one request cache, so a sweep point re-pays only what its overrides change. Then
prints, beside the CPU it ran on: pass@1 per checkpoint with its 95% Wilson interval, and the
planned comparisons (base -> SFT, SFT -> each iteration, base -> last) with their paired
difference (95% Tango interval), one-sided exact McNemar p and Holm-adjusted p, from
`orca-recipe report --format json`.

`--split dev` (the default) scores on data/gsm8k/dev.jsonl: 440 one- and two-step GSM8K
*train* problems that recipes/tiny.yaml holds out of its seeds (`seeds.holdout`). Every
tuning decision is made there. `--split test` scores the shipped recipe once on the 440 test
problems; every stage but the evaluations is reused from the dev run (the project's stages are
found by fingerprint), so only the three evaluations run again.

A sweep is a few calls, e.g.
  ... learning_signal.py --until eval_sft --set training.sft.axolotl.learning_rate=5.0e-5
  ... learning_signal.py --split test
What was swept, and what came out, is in benchmarks/learning_signal.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orca_recipe.llm.hardware import cpu_info  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", AXOLOTL_DO_NOT_TRACK="1", COLUMNS="150")
CLI = [sys.executable, "-m", "orca_recipe.cli"]


def run_dir_for(runs: Path, overrides: list[str]) -> Path:
    tag = hashlib.sha256("\n".join(sorted(overrides)).encode()).hexdigest()[:8] if overrides else "default"
    return runs / tag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--until", default=None, help="stop after this stage (e.g. eval_sft for an SFT sweep point)")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "learning-signal")
    ap.add_argument("--split", choices=["dev", "test"], default="dev", help="dev: tune here; test: the shipped recipe, once")
    args = ap.parse_args()
    point = run_dir_for(args.runs, args.overrides)
    run_dir = point / args.split
    overrides = list(args.overrides)
    if args.split == "dev":
        overrides.append(f"eval.path={REPO / 'data' / 'gsm8k' / 'dev.jsonl'}")
    # every point is a run of one project (--runs): a stage another point or split finished for the
    # same fingerprint is reused (the test split scores the dev split's trained models), and
    # every request is answered from the project's cache when it was asked before
    cmd = [*CLI, "run", str(REPO / "recipes" / "tiny.yaml"), "--run-dir", str(run_dir), "--project", str(args.runs),
           "--cache", str(args.runs / "requests.sqlite")]
    for o in overrides:
        cmd += ["--set", o]
    if args.until:
        cmd += ["--until", args.until]
    print(f"CPU: {cpu_info().describe()}")
    print(f"split: {args.split}; overrides: {args.overrides or '(none: recipes/tiny.yaml as shipped)'} -> {run_dir}", flush=True)
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=ENV)
    wall = time.monotonic() - t
    if proc.returncode != 0:
        sys.exit(f"the run failed (exit {proc.returncode})")
    report = json.loads(subprocess.run([*CLI, "report", str(run_dir), "--format", "json"], cwd=REPO, env=ENV,
                                       capture_output=True, text=True, check=True).stdout)
    print(f"\nwall {wall / 60:.1f} min; pass@1 (greedy):")
    for c in report["checkpoints"]:
        lo, hi = c["ci95"]
        print(f"  {c['stage']:10s} {c['model']:8s} n={c['n']:4d}  {c['pass_at_1']:6.1%}  [{lo:.1%}, {hi:.1%}]  truncated={c.get('truncated')}")
    print("planned comparisons (same problems; one-sided exact McNemar, Holm over the planned family):")
    for p in report["pairs"]:
        if p["planned"]:
            lo, hi = p["ci95"]
            u = p["untruncated"]
            print(f"  {p['b']} - {p['a']}: {p['diff']:+.1%} [{lo:+.1%}, {hi:+.1%}]  only_a={p['only_a']} only_b={p['only_b']}  "
                  f"p={p['one_sided_p']:.4f} Holm p={p['p_holm']:.4f}; untruncated n={u['n']}: {u['only_a']}/{u['only_b']} Holm p={u['p_holm']:.4f}")


if __name__ == "__main__":
    main()
