"""Shared helpers for the benchmarks: the machine line, the loopback endpoint, recipes.

Not a benchmark itself. The loopback endpoint is tests/fake_openai.py's `FakeOpenAI` (a
ThreadingHTTPServer) with `responder=pipeline_reply`, so every orca-recipe role can parse
its replies; it runs in the benchmark's process, orca-recipe in its own (the CLI).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fake_openai import FakeOpenAI, pipeline_reply  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", COLUMNS="200", NO_COLOR="1")
PYTHON = sys.executable


def machine() -> str:
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = "load avg %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = ""
    return f"{cores} cores, {mem} RAM, Python {sys.version.split()[0]}, {load}"


def busy_note() -> str:
    """Other processes using CPU now (e.g. a long tiny run's Axolotl or vLLM), for honesty."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    except OSError:
        return ""
    me = str(os.getpid())
    busy = []
    for line in out.splitlines()[1:6]:
        pcpu, _, args = line.strip().partition(" ")
        try:
            if float(pcpu) >= 20 and me not in args:
                busy.append(f"{float(pcpu):.0f}% {args.strip()[:80]}")
        except ValueError:
            pass
    return "; ".join(busy)


def gen_recipe(path: Path, api_base: str, *, seeds: int, concurrency: int, evolve: int | None = None,
               max_retries: int = 3, timeout_s: float | None = None, ama: bool = False) -> Path:
    """recipes/tiny.yaml's generation half pointed at `api_base` (as tests/test_run_fake.py does)."""
    extra = f"\n            timeout_s: {timeout_s}" if timeout_s else ""
    ama_block = "" if ama else "ask_me_anything: null\n"
    inputs = "[seeds, ask_me_anything, evolve]" if ama else "[seeds, evolve]"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(f"""\
        extends: {REPO}/recipes/tiny.yaml
        name: bench
        models:
          smol:
            local: null
            model: openai/fake
            api_base: {api_base}
            concurrency: {concurrency}
            max_retries: {max_retries}{extra}
        seeds: {{limit: {seeds}, max_solution_steps: null}}
        evolve: {{limit: {evolve if evolve is not None else seeds}}}
        solve: {{inputs: {inputs}}}
        training: null
        practice: null
        iterations: 1
        eval: null
        filters: {{dedup: null, decontaminate: null}}
        """) + ama_block)
    return path


def run_cli(*args, timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    proc = subprocess.run([PYTHON, "-m", "orca_recipe.cli", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t
