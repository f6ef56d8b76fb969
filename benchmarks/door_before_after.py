"""Before/after for the LLM door: orchestration_overhead.py's run, alternated between the
working tree's orca_recipe and the whole package as an older commit had it (default bb1a8b4,
the last door that sent every request through litellm).

Run: .venv/bin/python benchmarks/door_before_after.py [--rev bb1a8b4] [--seeds 340] [--concurrency 64] [--repeats 3]

Both variants are copies of orca_recipe/ under .cache/bench-door-ab/{before,after}; the CLI
runs from there (python -m puts that folder first on sys.path). Printed per variant: the
stages' wall over the ideal N*L/C, the same at the endpoint, and the CLI's CPU per request.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import orchestration_overhead as oo  # noqa: E402

WORK = _bench.REPO / ".cache" / "bench-door-ab"


def package(variant: str, rev: str | None) -> Path:
    root = WORK / variant
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if rev:  # the package as it was at `rev` (the door is several modules now: take them all)
        tar = subprocess.run(["git", "archive", rev, "orca_recipe"], cwd=_bench.REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=tar.stdout, check=True)
    else:
        shutil.copytree(_bench.REPO / "orca_recipe", root / "orca_recipe", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def cli_from(cwd: Path):
    def run_cli(*args, timeout: float = 900):
        t = time.perf_counter()
        p = subprocess.run([_bench.PYTHON, "-m", "orca_recipe.cli", *map(str, args)], cwd=cwd, env=_bench.ENV,
                           capture_output=True, text=True, timeout=timeout)
        return p, time.perf_counter() - t
    return run_cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default="bb1a8b4", help="commit whose orca_recipe/ is 'before'")
    ap.add_argument("--seeds", type=int, default=340)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    C, L = args.concurrency, 0.1
    print(f"machine: {_bench.machine()}")
    variants = {"before": package("before", args.rev), "after": package("after", None)}
    res: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
    with _bench.FakeOpenAI(latency=L, responder=_bench.pipeline_reply) as srv:
        recipe = _bench.gen_recipe(WORK / "ab.yaml", srv.api_base, seeds=args.seeds, concurrency=C)
        for i in range(args.repeats):
            for name, cwd in variants.items():
                oo.run_cli = cli_from(cwd)
                r = oo.one_run(srv, recipe, WORK / f"run-{name}")
                ideal = r["requests"] * L / C
                res[name].append((r["stage_seconds"] / ideal, r["window"] / ideal, r["cli_cpu"] / r["requests"] * 1000))
                print(f"  {name:<6} run {i + 1}: stages {res[name][-1][0]:.3f}x, endpoint {res[name][-1][1]:.3f}x, "
                      f"CLI CPU {res[name][-1][2]:.2f} ms/request", flush=True)
    for name, rows in res.items():
        med = [statistics.median(x[j] for x in rows) for j in range(3)]
        print(f"{name} ({'orca_recipe at ' + args.rev if name == 'before' else 'working tree'}): stages {med[0]:.3f}x, "
              f"endpoint {med[1]:.3f}x, CLI CPU {med[2]:.2f} ms/request (median of {len(rows)})")
    print(f"machine: {_bench.machine()}")


if __name__ == "__main__":
    main()
