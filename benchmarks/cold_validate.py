"""Cold `orca-recipe validate recipes/orca_math.yaml`: wall time of a fresh process. Target < 1 s.

Run: python benchmarks/cold_validate.py [--runs 5]
Prints the median and the machine beside it; absolute times are context, the target is 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {mem}, Python {sys.version.split()[0]}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "orca_math.yaml"))
    args = ap.parse_args()
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "orca_recipe.cli", "validate", args.recipe, "--gpus", "8"], capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            sys.exit(f"validate failed: {proc.stderr}")
    med = statistics.median(times)
    verdict = "MET" if med < 1.0 else "NOT MET"
    print(f"cold validate {Path(args.recipe).name}: median {med:.3f} s over {args.runs} runs (min {min(times):.3f}, max {max(times):.3f})")
    print(f"target < 1 s: {verdict}; ratio to target {med / 1.0:.2f}x")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
