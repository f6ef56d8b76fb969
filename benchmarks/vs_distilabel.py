"""orca-recipe vs distilabel 1.5.3: the same N prompts, the same endpoint, the same concurrency.

Run: .venv/bin/python benchmarks/vs_distilabel.py [--n 2000] [--concurrency 64] [--latency 0.1] [--rounds 2]

The loopback endpoint (tests/fake_openai.py, every answer after L = 100 ms) serves both tools
in turn: orca, distilabel, orca, distilabel (--rounds pairs), so drift in the machine's load
hits both. orca-recipe: the real CLI running a recipe (recipes/tiny.yaml's solve stage over N
seed problems, `concurrency: C`). distilabel: a Pipeline as its docs show, LoadDataFromDicts >>
TextGeneration with its OpenAI-compatible `OpenAILLM`, `input_batch_size = C` (an async LLM
sends a whole batch at once), fed the very prompts orca-recipe sent (taken from the endpoint).
distilabel lives in its own virtual environment, made on first use under
.cache/bench-distilabel-venv (pip install distilabel[openai]==1.5.3, with openai<2 as in its
release's time: openai 2+ logs every request through a logger distilabel 1.5.3 does not
silence). If it cannot be installed, this says so and exits 0.

Figure: requests per second, orca-recipe over distilabel. Target >= 1.5x. Three clocks:
the endpoint's (first request in to last answer out: tool-agnostic, the headline), each
tool's own run time (orca: the solve stage's manifest seconds; distilabel: `pipeline.run`),
and the whole command (process start to exit).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, REPO, EndpointWatch, FakeOpenAI, busy_note, gen_recipe, machine, pipeline_reply, run_cli  # noqa: E402

VENV = REPO / ".cache" / "bench-distilabel-venv"
WORK = REPO / ".cache" / "bench-vs-distilabel"
SIDE = Path(__file__).resolve().parent / "_distilabel_side.py"
PINS = ["distilabel[openai]==1.5.3", "openai<2", "requests"]  # 1.5.3 imports requests without requiring it


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_distilabel() -> str | None:
    """None when distilabel 1.5.3 imports in the venv; else why it could not be had."""
    check = [str(venv_python()), "-c", "import distilabel, distilabel.models, openai; assert distilabel.__version__ == '1.5.3'"]
    if venv_python().exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return None
    print(f"setting up distilabel 1.5.3 in {VENV} (once) ...", flush=True)
    if not venv_python().exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True)
        if made.returncode != 0:
            return f"could not create a virtual environment: {made.stderr.strip()[-500:]}"
    pip = subprocess.run([str(venv_python()), "-m", "pip", "install", "-q", *PINS], capture_output=True, text=True)
    if pip.returncode != 0:
        return f"pip install {' '.join(PINS)} failed: {(pip.stderr or pip.stdout).strip()[-1500:]}"
    done = subprocess.run(check, capture_output=True, text=True)
    if done.returncode != 0:
        return f"distilabel installed but does not import: {done.stderr.strip()[-1500:]}"
    return None


def run_orca(srv: FakeOpenAI, recipe: Path, n: int, i: int) -> dict:
    run_dir = WORK / f"orca{i}"
    shutil.rmtree(run_dir, ignore_errors=True)
    srv.reset_counters()
    with EndpointWatch(srv) as watch:
        proc, wall = run_cli("run", recipe, "--run-dir", run_dir, "--until", "solve")
    if proc.returncode != 0:
        sys.exit(f"orca-recipe failed:\n{proc.stderr[-3000:]}")
    m = json.loads((run_dir / "solve" / "manifest.json").read_text())
    assert srv.ok_requests == n and m["rows"] + m["rejects"] == n, (srv.ok_requests, m["rows"], m["rejects"])
    prompts = [b["messages"][-1]["content"] for b in srv.bodies]
    return {"tool": "orca-recipe", "requests": srv.ok_requests, "window": watch.window, "own": m["seconds"], "wall": wall,
            "in_flight": watch.mean_in_flight, "prompts": prompts}


def run_distilabel(srv: FakeOpenAI, prompts_file: Path, n: int, C: int, max_tokens: int) -> dict:
    srv.reset_counters()
    cache = WORK / "distilabel-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(ENV)
    env.pop("PYTHONPATH", None)
    t = time.perf_counter()
    with EndpointWatch(srv) as watch:
        proc = subprocess.run([str(venv_python()), str(SIDE), str(prompts_file), srv.api_base, str(C), str(max_tokens), str(cache)],
                              cwd=WORK, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"distilabel failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["generated"] == n and srv.ok_requests == n, (out, srv.ok_requests)
    return {"tool": "distilabel", "requests": srv.ok_requests, "window": watch.window, "own": out["seconds"], "wall": wall,
            "in_flight": watch.mean_in_flight}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="requests per run (seed problems solved)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=2, help="orca/distilabel pairs, alternated")
    args = ap.parse_args()
    N, C, L = args.n, args.concurrency, args.latency
    print(f"machine: {machine()}")
    why = ensure_distilabel()
    if why:
        print(f"distilabel 1.5.3 could not be set up here, so there is nothing to compare: {why}")
        print("vs_distilabel: NOT MEASURED")
        return
    note = busy_note()
    if note:
        print(f"note: other processes were using CPU at the start: {note}")
    WORK.mkdir(parents=True, exist_ok=True)
    max_tokens = 256  # recipes/tiny.yaml's default for the solver
    results: list[dict] = []
    with FakeOpenAI(latency=L, responder=pipeline_reply) as srv:
        recipe = gen_recipe(WORK / "solve.yaml", srv.api_base, seeds=N, concurrency=C, solve_only=True)
        prompts_file = WORK / "prompts.json"
        first = run_orca(srv, recipe, N, -1)  # warm-up (page cache, .pyc); also yields the prompts
        prompts_file.write_text(json.dumps(first["prompts"]))
        for i in range(args.rounds):
            for r in (run_orca(srv, recipe, N, i), run_distilabel(srv, prompts_file, N, C, max_tokens)):
                r.pop("prompts", None)
                results.append(r)
                print(f"  {r['tool']:<11} N={r['requests']}: endpoint {r['window']:.2f} s ({r['requests'] / r['window']:.0f} req/s), "
                      f"own clock {r['own']:.2f} s, whole command {r['wall']:.2f} s, mean in flight {r['in_flight']:.1f}", flush=True)

    def rate(tool: str, clock: str) -> float:
        return statistics.median(r["requests"] / r[clock] for r in results if r["tool"] == tool)

    ideal = N / (N * L / C)
    print(f"ideal: {ideal:.0f} req/s (C/L)")
    verdicts = []
    for clock, label in (("window", "endpoint clock (headline)"), ("own", "each tool's own run time"), ("wall", "whole command")):
        o, d = rate("orca-recipe", clock), rate("distilabel", clock)
        verdicts.append(o / d)
        print(f"{label}: orca-recipe {o:.0f} req/s, distilabel {d:.0f} req/s -> orca-recipe / distilabel = {o / d:.2f}x")
    print(f"orca-recipe vs distilabel 1.5.3 (N={N}, C={C}, L={L * 1000:.0f} ms, median of {args.rounds} alternated rounds): "
          f"{verdicts[0]:.2f}x requests/s; target >= 1.5x: {'MET' if verdicts[0] >= 1.5 else 'NOT MET'}")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
