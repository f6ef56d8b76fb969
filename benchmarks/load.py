"""Load test (not a unit test): 5,000 cached rows, then 5,000 new at concurrency 256.

Run: .venv/bin/python benchmarks/load.py [--rows 5000] [--concurrency 256] [--latency 1.0]

Through the real CLI against the loopback endpoint (tests/fake_openai.py): a solve-only recipe
over a synthetic seed file of 2 x rows distinct problems (more than GSM8K has). Phase 1 solves
the first `rows` (5,000 requests, 5,000 cache rows; same concurrency). Phase 2 solves all 2 x rows at
`concurrency: 256`: the first half must come from the cache, the second half is 5,000 new
requests with up to 256 in flight (the endpoint answers after --latency seconds, long enough
for 256 to pile up). Meanwhile another SQLite connection in this process reads the cache every
50 ms, as someone inspecting a live run would.

Reported: each phase's wall time and peak RSS (resource.getrusage of the CLI process),
requests the endpoint saw and its most in flight, `PRAGMA integrity_check`, the row count
(must be 2 x rows), and whether "database is locked" appeared anywhere (CLI output,
failures tables, the concurrent reader).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, PYTHON, REPO, FakeOpenAI, busy_note, fake_recipe, machine, pipeline_reply  # noqa: E402

WORK = REPO / ".cache" / "bench-load"
WRAP = ("import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)\n"
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(p.returncode)\n")


def write_seeds(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            a, b = 3 + i % 97, 5 + (i * 7) % 89
            f.write(json.dumps({"question": f"Problem {i}: a crate holds {a} apples and {b} pears. "
                                            f"How many pieces of fruit are in {i % 9 + 2} crates?",
                                "answer": str((a + b) * (i % 9 + 2))}) + "\n")


def recipe(path: Path, api_base: str, seeds: Path, limit: int, concurrency: int) -> Path:
    return fake_recipe(path, api_base, name="load", endpoint={"concurrency": concurrency, "timeout_s": 60, "max_retries": 3},
                       seeds={"path": str(seeds), "answer_format": "plain", "limit": limit, "shuffle": False, "max_solution_steps": None},
                       ask_me_anything=None, evolve=None, solve={"inputs": ["seeds"]}, filters={"dedup": None, "decontaminate": None})


class Reader(threading.Thread):
    """A second connection reading the live cache, as `sqlite3 requests.sqlite` would."""

    def __init__(self, db: Path):
        super().__init__(daemon=True)
        self.db, self.stop, self.reads, self.errors, self.max_seen = db, threading.Event(), 0, [], 0

    def run(self) -> None:
        while not self.stop.wait(0.05):
            if not self.db.exists():
                continue
            try:
                con = sqlite3.connect(self.db, timeout=5)
                try:
                    self.max_seen = max(self.max_seen, con.execute("select count(*) from responses").fetchone()[0])
                    self.reads += 1
                finally:
                    con.close()
            except sqlite3.Error as e:
                if "no such table" not in str(e):
                    self.errors.append(str(e))


def phase(srv: FakeOpenAI, recipe_path: Path, run_dir: Path) -> dict:
    srv.reset_counters()
    t = time.perf_counter()
    proc = subprocess.run([PYTHON, "-c", WRAP, PYTHON, "-m", "orca_recipe.cli", "run", str(recipe_path), "--run-dir", str(run_dir),
                           "--until", "solve"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t
    rss = next((int(x.split()[1]) for x in proc.stdout.splitlines() if x.startswith("PEAK_RSS_KB")), 0)
    m = json.loads((run_dir / "solve" / "manifest.json").read_text()) if proc.returncode == 0 else {}
    failures = (run_dir / "solve" / "failures.jsonl").read_text() if (run_dir / "solve" / "failures.jsonl").exists() else ""
    return {"rc": proc.returncode, "wall": wall, "rss_mib": rss / 1024, "sent": srv.total_requests, "ok": srv.ok_requests,
            "max_in_flight": srv.max_in_flight, "usage": m.get("usage", {}), "rows": m.get("rows"), "stage_seconds": m.get("seconds"),
            "locked": "database is locked" in (proc.stdout + proc.stderr + failures), "stderr": proc.stderr[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--latency", type=float, default=1.0)
    args = ap.parse_args()
    n = args.rows
    print(f"machine: {machine()}")
    note = busy_note()
    if note:
        print(f"note: other processes were using CPU at the start: {note}")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    seeds = WORK / "seeds.jsonl"
    write_seeds(seeds, 2 * n)
    run_dir = WORK / "run"
    db = run_dir / "requests.sqlite"
    with FakeOpenAI(latency=args.latency, responder=pipeline_reply) as srv:
        p1 = phase(srv, recipe(WORK / "phase1.yaml", srv.api_base, seeds, n, args.concurrency), run_dir)
        if p1["rc"] != 0:
            sys.exit(f"phase 1 failed:\n{p1['stderr']}")
        print(f"  phase 1: {n} new requests at concurrency {args.concurrency}: {p1['wall']:.1f} s, peak RSS {p1['rss_mib']:.0f} MiB, "
              f"endpoint saw {p1['sent']}", flush=True)
        reader = Reader(db)
        reader.start()
        p2 = phase(srv, recipe(WORK / "phase2.yaml", srv.api_base, seeds, 2 * n, args.concurrency), run_dir)
        reader.stop.set()
        reader.join()
    if p2["rc"] != 0:
        sys.exit(f"phase 2 failed:\n{p2['stderr']}")
    con = sqlite3.connect(db)
    integrity = con.execute("pragma integrity_check").fetchone()[0]
    count = con.execute("select count(*) from responses").fetchone()[0]
    con.close()
    u = p2["usage"]
    locked = p1["locked"] or p2["locked"] or any("locked" in e for e in reader.errors)
    print(f"  phase 2: {2 * n} problems at concurrency {args.concurrency}: {p2['wall']:.1f} s (solve stage {p2['stage_seconds']:.1f} s), "
          f"peak RSS {p2['rss_mib']:.0f} MiB; {u.get('cache_hits')} from the cache, {u.get('requests')} new requests "
          f"(endpoint saw {p2['sent']}, at most {p2['max_in_flight']} in flight); {p2['rows']} rows")
    print(f"  concurrent reader: {reader.reads} reads, up to {reader.max_seen} rows seen, errors: {reader.errors or 'none'}")
    ok = (integrity == "ok" and count == 2 * n and not locked and u.get("cache_hits") == n and p2["sent"] == n)
    print(f"load test: peak RSS {max(p1['rss_mib'], p2['rss_mib']):.0f} MiB; cache integrity_check '{integrity}', "
          f"{count} rows (expected {2 * n}); 'database is locked': {'SEEN' if locked else 'never'}; "
          f"{'PASS' if ok else 'FAIL'}")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
