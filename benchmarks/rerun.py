"""A finished recipe, run again: LLM calls made (target 0), training runs (target 0), wall time
of the whole command (target < 3 s).

Run: .venv/bin/python benchmarks/rerun.py [--seeds 60] [--repeats 3] [--no-tiny]

1. Generation half (always): recipes/tiny.yaml's generation stages (seeds, ask_me_anything,
   evolve, solve, filter; no training) against the loopback endpoint, run once to the end,
   then `orca-recipe run` again on the same run directory. Calls are counted by the endpoint
   itself, not only by orca-recipe's summary line.
2. The whole tiny recipe (when a finished run of the current recipes/tiny.yaml is at
   runs/tiny, from `orca-recipe run recipes/tiny.yaml`): `orca-recipe run recipes/tiny.yaml`
   again. Checked first, without running anything, that every stage of the current plan is
   done there (else this part is skipped and says why: a stale run would retrain). During the
   rerun no vLLM server and no Axolotl process may start: the benchmark watches the command's
   process tree, the run's logs/ folder and its output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, PYTHON, REPO, FakeOpenAI, gen_recipe, machine, pipeline_reply, run_cli  # noqa: E402

WORK = REPO / ".cache" / "bench-rerun"
HEAVY = ("vllm", "axolotl", "accelerate", "torchrun")


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    cmd: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append((c, cmd.get(c, "")))
            todo.append(c)
    return out


def timed_run(args: list[str]) -> tuple[subprocess.CompletedProcess, float, list[str]]:
    """Run the CLI, watching its process tree every 20 ms for vLLM / Axolotl / launchers."""
    seen: list[str] = []
    t = time.perf_counter()
    proc = subprocess.Popen([PYTHON, "-m", "orca_recipe.cli", *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            for _, c in descendants(proc.pid):
                if any(h in c for h in HEAVY) and c not in seen:
                    seen.append(c)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, err = proc.communicate(timeout=600)
    wall = time.perf_counter() - t
    stop.set()
    th.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), wall, seen


def summary_line(stdout: str) -> str:
    return next((line for line in stdout.splitlines() if "LLM requests made" in line), "").strip()


def requests_made(stdout: str) -> int | None:
    line = summary_line(stdout)
    try:
        return int(line.split(" LLM requests made")[0].rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return None


def generation_half(seeds: int, repeats: int) -> dict:
    shutil.rmtree(WORK, ignore_errors=True)
    with FakeOpenAI(responder=pipeline_reply) as srv:
        recipe = gen_recipe(WORK / "gen.yaml", srv.api_base, seeds=seeds, concurrency=16, ama=True)
        run_dir = WORK / "run"
        first, first_wall = run_cli("run", recipe, "--run-dir", run_dir, "--until", "filter")
        if first.returncode != 0:
            sys.exit(f"the first run failed:\n{first.stderr[-3000:]}")
        paid = srv.total_requests
        walls, calls, heavy, lines = [], [], [], []
        for _ in range(repeats):
            before = srv.total_requests + srv.model_list_requests
            proc, wall, seen = timed_run(["run", str(recipe), "--run-dir", str(run_dir), "--until", "filter"])
            if proc.returncode != 0:
                sys.exit(f"the rerun failed:\n{proc.stderr[-3000:]}")
            walls.append(wall)
            calls.append(srv.total_requests + srv.model_list_requests - before)
            heavy += seen
            lines.append(summary_line(proc.stdout))
    return {"first_wall": first_wall, "first_requests": paid, "walls": walls, "endpoint_calls": calls, "heavy": heavy,
            "summary": lines[-1], "rows": json.loads((run_dir / "filter" / "manifest.json").read_text())["rows"]}


def tiny_is_finished() -> tuple[bool, str]:
    run_dir = REPO / "runs" / "tiny"
    if not (run_dir / "plan.json").is_file():
        return False, "no run at runs/tiny (make one with: .venv/bin/orca-recipe run recipes/tiny.yaml)"
    code = (
        "import sys; from orca_recipe.recipe.compile import compile_file; from orca_recipe.runner import Runner\n"
        "p = compile_file(sys.argv[1], [], None); r = Runner(p, quiet=True)\n"
        "print(','.join(s.name for s in p.stages if not r.is_done(s)))\n"
    )
    proc = subprocess.run([PYTHON, "-c", code, str(REPO / "recipes" / "tiny.yaml")], cwd=REPO, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        return False, f"could not plan recipes/tiny.yaml: {proc.stderr.strip()[-300:]}"
    stale = [s for s in proc.stdout.strip().split(",") if s]
    if stale:
        return False, (f"runs/tiny is not a finished run of the current recipes/tiny.yaml (not done: {', '.join(stale)}); "
                       "rerunning it would generate and train, so it was not measured")
    return True, ""


def whole_tiny(repeats: int) -> dict:
    run_dir = REPO / "runs" / "tiny"
    logs = run_dir / "logs"
    walls, calls, heavy, new_logs, ran = [], [], [], [], []
    for _ in range(repeats):
        before = set(logs.iterdir()) if logs.is_dir() else set()
        proc, wall, seen = timed_run(["run", str(REPO / "recipes" / "tiny.yaml")])
        if proc.returncode != 0:
            sys.exit(f"the tiny rerun failed:\n{proc.stderr[-3000:]}")
        walls.append(wall)
        calls.append(requests_made(proc.stdout))
        heavy += seen
        new_logs += [p.name for p in (set(logs.iterdir()) if logs.is_dir() else set()) - before]
        ran.append(proc.stdout.count("starting vLLM") + sum(1 for line in proc.stdout.splitlines() if " rows in " in line))
        summary = summary_line(proc.stdout)
    return {"walls": walls, "calls": calls, "heavy": heavy, "new_logs": new_logs, "stages_ran": ran, "summary": summary}


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-tiny", action="store_true", help="skip the whole-recipe rerun on runs/tiny")
    args = ap.parse_args()
    print(f"machine: {machine()}")

    g = generation_half(args.seeds, args.repeats)
    med = statistics.median(g["walls"])
    calls = max(g["endpoint_calls"])
    print(f"[generation half, fake endpoint] first run: {g['first_requests']} requests, {g['first_wall']:.1f} s, "
          f"{g['rows']} rows after filter")
    print(f"  rerun x{args.repeats}: wall median {med:.2f} s (min {min(g['walls']):.2f}, max {max(g['walls']):.2f}); "
          f"requests the endpoint saw: {g['endpoint_calls']}; vLLM/Axolotl processes started: {len(g['heavy'])}")
    print(f"  orca-recipe said: {g['summary']}")
    print(f"  LLM calls 0: {verdict(calls == 0)}; training runs 0: {verdict(not g['heavy'])} (no training in this recipe); "
          f"wall < 3 s: {verdict(med < 3.0)} (ratio to target {med / 3.0:.2f}x)")

    if args.no_tiny:
        print("[recipes/tiny.yaml on runs/tiny] skipped (--no-tiny)")
    else:
        ok, why = tiny_is_finished()
        if not ok:
            print(f"[recipes/tiny.yaml on runs/tiny] not measured: {why}")
        else:
            t = whole_tiny(args.repeats)
            med_t = statistics.median(t["walls"])
            zero_calls = all(c == 0 for c in t["calls"])
            no_heavy = not t["heavy"] and not t["new_logs"] and not any(t["stages_ran"])
            print(f"[recipes/tiny.yaml on runs/tiny, the whole recipe incl. SFT/KTO/eval] rerun x{args.repeats}: wall median "
                  f"{med_t:.2f} s (min {min(t['walls']):.2f}, max {max(t['walls']):.2f}); LLM requests made: {t['calls']}; "
                  f"vLLM/Axolotl processes started: {len(t['heavy'])}; new logs: {t['new_logs'] or 'none'}")
            print(f"  orca-recipe said: {t['summary']}")
            print(f"  LLM calls 0: {verdict(zero_calls)}; training runs 0 (no vLLM, no Axolotl): {verdict(no_heavy)}; "
                  f"wall < 3 s: {verdict(med_t < 3.0)} (ratio to target {med_t / 3.0:.2f}x)")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
