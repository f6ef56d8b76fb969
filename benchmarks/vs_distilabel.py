"""orca-recipe vs distilabel 1.5.3 and bespokelabs-curator 0.1.31: the same N prompts, the same endpoint, the same concurrency.

Run: .venv/bin/python benchmarks/vs_distilabel.py [--n 2000] [--concurrency 64] [--latency 0.1] [--rounds 2]
                                                  [--tools orca,distilabel,curator]

The loopback endpoint (tests/fake_openai.py, every answer after L = 100 ms) serves the tools
in turn: orca, distilabel, curator, orca, distilabel, curator, ... (--rounds rounds), so drift
in the machine's load hits all of them. orca-recipe: the real CLI running a recipe
(recipes/tiny.yaml's solve stage over N seed problems, `concurrency: C`); an untimed warm-up
run first also yields the prompts, which both peers are fed verbatim (taken from the endpoint),
with the same max_tokens (256) and temperature 0.

distilabel: a Pipeline as its docs show, LoadDataFromDicts >> TextGeneration with its
OpenAI-compatible `OpenAILLM`, `input_batch_size = C` (an async LLM sends a whole batch at
once); benchmarks/_distilabel_side.py, in .cache/bench-distilabel-venv (pip install
distilabel[openai]==1.5.3, with openai<2 as in its release's time: openai 2+ logs every
request through a logger distilabel 1.5.3 does not silence).

curator: `curator.LLM(backend="openai", backend_params={"base_url": ...})`, the backend its
README names for OpenAI-compatible servers, `max_concurrent_requests = C`, its request and
token rate limits set far above reach so C alone bounds it, a fresh CURATOR_CACHE_DIR every
round, telemetry and viewer off; benchmarks/_curator_side.py, in .cache/bench-curator-venv
(pip install bespokelabs-curator==0.1.31). Its backend POSTs one request without messages when
built (to read rate-limit headers); the endpoint clock starts at the first request with
messages and the probe is not counted among the N.

Each peer's venv is made on first use; a peer that cannot be installed, or fails when run
(e.g. because it wants the network), is reported as not measured and the others still are.

Figure: requests per second, and orca-recipe's over each peer's. Targets: >= 4x distilabel,
ahead of curator (> 1x). Three clocks: the endpoint's (first request in to last answer out: tool-agnostic,
the headline), each tool's own run time (orca: the solve stage's manifest seconds; distilabel:
`pipeline.run`; curator: the `llm(prompts)` call), and the whole command (process start to
exit).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, REPO, EndpointWatch, FakeOpenAI, busy_note, gen_recipe, machine, pipeline_reply, run_cli  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = REPO / ".cache" / "bench-vs-distilabel"
TOOLS = ("orca", "distilabel", "curator")


@dataclass(frozen=True)
class Peer:
    """A client compared with orca-recipe: its own venv (its pins would clash with ours) and a
    side script that runs it on PROMPTS.json and prints one JSON line."""

    name: str
    label: str
    venv: Path
    pins: tuple[str, ...]
    check: str  # python -c source that succeeds only when the pinned version imports
    side: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


# Issue 12: at least 4x distilabel, and ahead of curator (the fastest client among the peers).
TARGETS = {"distilabel": 4.0, "curator": 1.0}
PEERS = {
    "distilabel": Peer("distilabel", "distilabel 1.5.3", REPO / ".cache" / "bench-distilabel-venv",
                       ("distilabel[openai]==1.5.3", "openai<2", "requests"),  # 1.5.3 imports requests without requiring it
                       "import distilabel, distilabel.models, openai; assert distilabel.__version__ == '1.5.3'",
                       HERE / "_distilabel_side.py"),
    "curator": Peer("curator", "curator 0.1.31", REPO / ".cache" / "bench-curator-venv",
                    ("bespokelabs-curator==0.1.31",),
                    "from importlib.metadata import version; from bespokelabs import curator; "
                    "assert version('bespokelabs-curator') == '0.1.31'",
                    HERE / "_curator_side.py"),
}


def peer_env() -> dict:
    """Our benchmark env without PYTHONPATH (it would put this repo's venv paths before the
    peer's) and with curator's telemetry off even for the import check."""
    env = dict(ENV, TELEMETRY_ENABLED="false", CURATOR_VIEWER="0", HF_DATASETS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return env


def ensure(peer: Peer) -> str | None:
    """None when the peer's pinned version imports in its venv; else why it could not be had."""
    check = [str(peer.python), "-c", peer.check]
    if peer.python.exists() and subprocess.run(check, capture_output=True, env=peer_env()).returncode == 0:
        return None
    print(f"setting up {peer.label} in {peer.venv} (once) ...", flush=True)
    if not peer.python.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(peer.venv)], capture_output=True, text=True)
        if made.returncode != 0:
            return f"could not create a virtual environment: {made.stderr.strip()[-500:]}"
    pip = subprocess.run([str(peer.python), "-m", "pip", "install", "-q", *peer.pins], capture_output=True, text=True)
    if pip.returncode != 0:
        return f"pip install {' '.join(peer.pins)} failed: {(pip.stderr or pip.stdout).strip()[-1500:]}"
    done = subprocess.run(check, capture_output=True, text=True, env=peer_env())
    if done.returncode != 0:
        return f"{peer.label} installed but does not import: {done.stderr.strip()[-1500:]}"
    return None


class PeerFailed(Exception):
    """A peer's run ended without its JSON line (crash, timeout, wanted the network)."""


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


def run_peer(peer: Peer, srv: FakeOpenAI, prompts_file: Path, n: int, C: int, max_tokens: int) -> dict:
    """One timed run of a peer's side script, with an empty cache folder of its own."""
    srv.reset_counters()
    cache = WORK / f"{peer.name}-cache"
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    try:
        with EndpointWatch(srv) as watch:
            proc = subprocess.run([str(peer.python), str(peer.side), str(prompts_file), srv.api_base, str(C), str(max_tokens), str(cache)],
                                  cwd=WORK, env=peer_env(), capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as e:
        raise PeerFailed(f"no result in {e.timeout:.0f} s") from None
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise PeerFailed(f"exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise PeerFailed(f"no JSON line on stdout:\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}") from None
    probes = sum(1 for b in srv.bodies if not (isinstance(b, dict) and b.get("messages")))
    requests = srv.ok_requests - probes
    if out["generated"] != n or requests != n:
        raise PeerFailed(f"generated {out['generated']} of {n} rows; the endpoint answered {requests} requests with messages: {out}")
    return {"tool": peer.name, "requests": requests, "probes": probes, "window": watch.window, "own": out["seconds"],
            "wall": wall, "in_flight": watch.mean_in_flight}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="requests per run (seed problems solved)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each runs every tool once, in turn")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {','.join(TOOLS)} (orca always makes the prompts)")
    args = ap.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or any(t not in TOOLS for t in tools):
        ap.error(f"--tools takes a comma-separated list from {','.join(TOOLS)}; got {args.tools!r}")
    N, C, L = args.n, args.concurrency, args.latency
    print(f"machine: {machine()}")
    peers: list[Peer] = []
    for name in (t for t in TOOLS[1:] if t in tools):
        why = ensure(PEERS[name])
        if why:
            print(f"{PEERS[name].label} could not be set up here, so it is not measured: {why}")
            print(f"vs_{name}: NOT MEASURED")  # vs_distilabel: the line this script always printed
        else:
            peers.append(PEERS[name])
    if not peers and tools != ["orca"]:
        print("no peer could be set up, so there is nothing to compare")
        return
    note = busy_note()
    if note:
        print(f"note: other processes were using CPU at the start: {note}")
    WORK.mkdir(parents=True, exist_ok=True)
    max_tokens = 256  # recipes/tiny.yaml's default for the solver
    results: list[dict] = []
    failed: dict[str, str] = {}
    with FakeOpenAI(latency=L, responder=pipeline_reply) as srv:
        recipe = gen_recipe(WORK / "solve.yaml", srv.api_base, seeds=N, concurrency=C, solve_only=True)
        prompts_file = WORK / "prompts.json"
        first = run_orca(srv, recipe, N, -1)  # warm-up (page cache, .pyc); also yields the prompts
        prompts_file.write_text(json.dumps(first["prompts"]))
        for i in range(args.rounds):
            for tool in ([None] if "orca" in tools else []) + [p for p in peers if p.name not in failed]:
                try:
                    r = run_orca(srv, recipe, N, i) if tool is None else run_peer(tool, srv, prompts_file, N, C, max_tokens)
                except PeerFailed as e:
                    failed[tool.name] = str(e)
                    print(f"  {tool.name:<11} failed in round {i + 1}, so it is not measured: {e}", flush=True)
                    continue
                r.pop("prompts", None)
                results.append(r)
                probe = f" (+{r['probes']} request without messages, not counted)" if r.get("probes") else ""
                print(f"  {r['tool']:<11} N={r['requests']}: endpoint {r['window']:.2f} s ({r['requests'] / r['window']:.0f} req/s), "
                      f"own clock {r['own']:.2f} s, whole command {r['wall']:.2f} s, mean in flight {r['in_flight']:.1f}{probe}", flush=True)

    measured = [t for t in ("orca-recipe", *(p.name for p in peers)) if t not in failed and any(r["tool"] == t for r in results)]

    def rate(tool: str, clock: str) -> float:
        return statistics.median(r["requests"] / r[clock] for r in results if r["tool"] == tool)

    print(f"ideal: {N / (N * L / C):.0f} req/s (C/L)")
    headline: dict[str, float] = {}
    for clock, label in (("window", "endpoint clock (headline)"), ("own", "each tool's own run time"), ("wall", "whole command")):
        rates = ", ".join(f"{t} {rate(t, clock):.0f} req/s" for t in measured)
        ratios = []
        if "orca-recipe" in measured:
            for t in measured[1:]:
                ratios.append(f"orca-recipe / {t} = {rate('orca-recipe', clock) / rate(t, clock):.2f}x")
                headline.setdefault(t, rate("orca-recipe", clock) / rate(t, clock))
        print(f"{label}: {rates}" + (f" -> {', '.join(ratios)}" if ratios else ""))
    setup = f"N={N}, C={C}, L={L * 1000:.0f} ms, median of {args.rounds} alternated rounds"
    for p in peers:
        if p.name in failed:
            print(f"orca-recipe vs {p.label}: NOT MEASURED ({p.name} failed)")
        elif p.name in headline:
            x = headline[p.name]
            goal = TARGETS[p.name]
            target = f"; target {'>' if goal == 1.0 else '>='} {goal:g}x: {'MET' if (x > goal if goal == 1.0 else x >= goal) else 'NOT MET'}"
            print(f"orca-recipe vs {p.label} ({setup}): {x:.2f}x requests/s{target}")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
