"""orca-recipe vs distilabel 1.5.3 and bespokelabs-curator 0.1.31: the same N prompts, the same endpoint, the same concurrency budget.

Run: .venv/bin/python benchmarks/vs_distilabel.py [--n 2000] [--concurrency 64] [--rounds 2]
         [--tools orca,distilabel,curator] [--distilabel-replicas 16] [--seed 0]
         [--median 1.0] [--p99 10.0] [--rate-limited 0.02] [--fixed-latency S]

The endpoint: benchmarks/hosted_api_endpoint.py, its own process (asyncio), standing in for a
hosted API: lognormal latency, median 1 s, p99 10 s (sigma = ln 10 / 2.326 = 0.99, mean 1.63 s),
cut at 60 s; 2% of attempts answered 429 with Retry-After 1-2 s. Latency and 429s are drawn per
(seed, prompt, attempt), so every tool meets the same latencies for the same prompts whatever
order it sends them in. `--fixed-latency 0.1` gives the old comparison (every answer after
100 ms, no 429s), still out of process. The endpoint counts (GET /stats) and the benchmark reads
the three clocks from it and from the tools, as before: the endpoint's (first request in to
last answer out: tool-agnostic, the headline), each tool's own run time (orca: the solve
stage's manifest seconds; distilabel: `pipeline.run`; curator: the `llm(prompts)` call), and
the whole command (process start to exit). Mean in flight is the endpoint's time average over
its clock; it also reports the 429s it sent and its own CPU seconds (it must not be the
bottleneck).

Tools run in turn, orca, distilabel, curator, orca, ... (--rounds rounds), so drift in the
machine's load hits all of them. An untimed orca-recipe warm-up against a zero-latency endpoint
first yields the prompts (recipes/tiny.yaml's solve stage over N seed problems), which both
peers are fed verbatim, with the same max_tokens (256) and temperature 0.

Every tool gets the same concurrency budget C (64), 6 retries (P(a request meets 7 429s in a
row) = 0.02^7: none is lost) and a 120 s deadline per attempt (above the endpoint's 60 s cut),
and its best documented settings for throughput:

- orca-recipe: the recipe's model keys `concurrency: C`, `max_retries: 6`, `timeout_s: 120`
  (orca_recipe/recipe/schema.py, ModelEndpoint; Retry-After is honoured up to `max_backoff_s`).
- distilabel (benchmarks/_distilabel_side.py): `TextGeneration(input_batch_size=C/R,
  resources=StepResources(replicas=R))`, R = --distilabel-replicas (16), `LoadDataFromDicts(
  batch_size=C)`, `OpenAILLM(max_retries=6, timeout=120, generation_kwargs={temperature: 0,
  max_new_tokens: 256})`. Documented: `input_batch_size` in distilabel.steps.base.Step
  ("the number of rows that will contain the batches processed by the step", default 50);
  replicas in docs/sections/how_to_guides/advanced/assigning_resources_to_step.md ("we will run
  two instances of the task so the computation for the whole dataset runs faster");
  `max_retries` / `timeout` in OpenAILLM's docstring (defaults 6 and 120; its openai client
  retries 429s honouring Retry-After). Why R x (C/R) rather than one batch of C: an async LLM
  sends a batch's requests at once and `asyncio.gather`s them (models/llms/base.py,
  `_agenerate`), so a replica waits for its batch's slowest answer. Under this latency the
  expected slowest of b answers is 1.7 s (b=1), 3.7 s (b=4), 11.6 s (b=64), so one batch of 64
  would keep ~9 in flight on average; many small batches in parallel replicas (processes) keep
  the budget busy. Each batch also costs the pipeline a cache write of its batch manager
  (pipeline/base.py, `_manage_batch_flow` ends with `self._cache()`), which is why b is not 1
  (R = 64 processes); 16 x 4 is the middle, and --distilabel-replicas changes it.
- curator (benchmarks/_curator_side.py): `backend="openai"`, `backend_params={
  max_concurrent_requests: C, max_requests_per_minute: 10^12, max_tokens_per_minute: 10^12,
  max_retries: 6, request_timeout: 120, seconds_to_pause_on_rate_limit: 1}`. Documented in
  docs.bespokelabs.ai/bespoke-curator/api-reference (Backend Parameters) and the online
  processing guide (rate-limit settings; without them curator reads the provider's headers or
  falls back to 200 requests and 100k tokens a minute, so both are set beyond reach and C
  alone bounds it); `seconds_to_pause_on_rate_limit` (default 10, an integer > 0) is in
  request_processor/config.py, OnlineRequestProcessorConfig: after a 429 curator starts no new
  request for that long, so 1 s, its minimum and the endpoint's shortest Retry-After.

Each peer's venv is made on first use (.cache/bench-<peer>-venv, the pins below); a peer that
cannot be installed, or fails when run, is reported as not measured and the others still are.

N: at C = 64 and a mean latency of 1.63 s the ideal is ~39 req/s; a distilabel of 16 x 4
replicas is bounded near 64 / 3.7 s = ~17 req/s. A run also ends with a straggler tail (the
slowest of the last ~C answers, ~12 s expected; the slowest of all N, ~30 s for N = 2000, the
same prompt for every tool, if it is sent late) and starts with the tool's own start-up. At
N = 100 that tail is the whole endpoint clock (every tool ~25 s, ratios ~1x); N = 2000 makes
each run ~50-130 s, so the tail is a minor part of the endpoint clock, and one full
run (a warm-up, then 3 tools x 2 rounds) ~2 x 2000 x (1/39 + 1/17 + 1/35) s + ~3 min of
start-ups and tails = ~10-12 minutes, under 15.

Figure: requests per second, and orca-recipe's over each peer's, with each tool's settings
beside it. Targets (issue 12): >= 4x distilabel, ahead of curator (> 1x).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, REPO, HostedEndpoint, busy_note, gen_recipe, machine, run_cli  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = REPO / ".cache" / "bench-vs-distilabel"
TOOLS = ("orca", "distilabel", "curator")
MAX_TOKENS = 256  # recipes/tiny.yaml's default for the solver
MAX_RETRIES = 6
TIMEOUT_S = 120
HUGE = 10**12  # curator's requests / tokens a minute: never the binding limit


@dataclass(frozen=True)
class Peer:
    """A client compared with orca-recipe: its own venv (its pins would clash with ours) and a
    side script that runs it on PROMPTS.json with SETTINGS_JSON and prints one JSON line."""

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


def tool_settings(C: int, replicas: int) -> dict[str, dict]:
    """Each tool's knobs for a concurrency budget C (the docstring says where each is documented)."""
    return {
        "orca": {"concurrency": C, "max_retries": MAX_RETRIES, "timeout_s": TIMEOUT_S},
        "distilabel": {"replicas": replicas, "input_batch_size": C // replicas, "load_batch_size": C,
                       "max_retries": MAX_RETRIES, "timeout": TIMEOUT_S,
                       "generation_kwargs": {"temperature": 0.0, "max_new_tokens": MAX_TOKENS}},
        "curator": {"generation_params": {"temperature": 0.0, "max_tokens": MAX_TOKENS},
                    "backend_params": {"max_concurrent_requests": C, "max_requests_per_minute": HUGE,
                                       "max_tokens_per_minute": HUGE, "max_retries": MAX_RETRIES,
                                       "request_timeout": TIMEOUT_S, "seconds_to_pause_on_rate_limit": 1,
                                       "require_all_responses": False}},
    }


def describe(settings: dict) -> str:
    """One line of key=value, nested dicts flattened, for printing beside a figure."""
    flat: list[str] = []
    for k, v in settings.items():
        if isinstance(v, dict) and k in ("backend_params",):
            flat += [f"{kk}={vv:g}" if isinstance(vv, (int, float)) and not isinstance(vv, bool) else f"{kk}={vv}"
                     for kk, vv in v.items()]
        elif isinstance(v, dict):
            flat.append(f"{k}={json.dumps(v, separators=(',', ':'))}")
        else:
            flat.append(f"{k}={v}")
    return ", ".join(flat)


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


def endpoint_result(tool: str, ep: HostedEndpoint, cpu0: float, own: float, wall: float) -> dict:
    """One run's figures: the endpoint's clock and counters (read from /stats) and the tool's."""
    s = ep.stats()
    return {"tool": tool, "requests": s["ok"], "distinct": s["distinct_prompts_answered"], "window": s["window"] or math.nan,
            "own": own, "wall": wall, "in_flight": s["mean_in_flight"], "rate_limited": s["rate_limited"],
            "probes": s["probes"], "undelivered": s["undelivered"], "endpoint_cpu": s["cpu_s"] - cpu0,
            "latency": (s["latency_median"], s["latency_p99"], s["latency_max"])}


def run_orca(ep: HostedEndpoint, recipe: Path, n: int, i: int) -> dict:
    """One timed orca-recipe run (the real CLI, solve stage only) in a fresh run folder."""
    run_dir = WORK / f"orca{i}"
    for old in WORK.glob("orca*"):  # an earlier round's finished stage would be reused, not re-run
        shutil.rmtree(old, ignore_errors=True)
    ep.reset()
    cpu0 = ep.stats()["cpu_s"]
    proc, wall = run_cli("run", recipe, "--run-dir", run_dir, "--cache", run_dir / "requests.sqlite", "--until", "solve", timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"orca-recipe failed:\n{proc.stderr[-3000:]}")
    m = json.loads((run_dir / "solve" / "manifest.json").read_text())
    r = endpoint_result("orca-recipe", ep, cpu0, m["seconds"], wall)
    assert m["rows"] + m["rejects"] == n and r["requests"] - r["undelivered"] == n, (m["rows"], m["rejects"], r)
    return r


def run_peer(peer: Peer, ep: HostedEndpoint, prompts_file: Path, n: int, distinct: int, settings: dict) -> dict:
    """One timed run of a peer's side script, with an empty cache folder of its own."""
    ep.reset()
    cpu0 = ep.stats()["cpu_s"]
    cache = WORK / f"{peer.name}-cache"
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    try:
        proc = subprocess.run([str(peer.python), str(peer.side), str(prompts_file), ep.api_base, json.dumps(settings), str(cache)],
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
    r = endpoint_result(peer.name, ep, cpu0, out["seconds"], wall)
    if out["generated"] != n or r["distinct"] != distinct:
        raise PeerFailed(f"generated {out['generated']} of {n} rows; the endpoint answered {r['distinct']} of "
                         f"{distinct} distinct prompts: {out}")
    return r


def make_prompts(recipe_dir: Path, n: int, C: int) -> list[str]:
    """An untimed orca-recipe run against a zero-latency endpoint: warms the page cache and
    .pyc files, and yields the N solve prompts the peers are fed."""
    with HostedEndpoint("--fixed-latency", "0") as warm:
        recipe = gen_recipe(recipe_dir / "warmup.yaml", warm.api_base, seeds=n, concurrency=C, solve_only=True,
                            max_retries=MAX_RETRIES, timeout_s=TIMEOUT_S)
        run_orca(warm, recipe, n, -1)
        return warm.prompts()


def print_run(r: dict, settings: str) -> None:
    extra = f", {r['probes']} probe(s) without messages not counted" if r["probes"] else ""
    extra += ", latency served median {:.2f} / p99 {:.2f} / max {:.2f} s".format(*r["latency"]) if r["latency"][0] is not None else ""
    print(f"  {r['tool']:<11} N={r['requests']}: endpoint {r['window']:.2f} s ({r['requests'] / r['window']:.1f} req/s), "
          f"own clock {r['own']:.2f} s, whole command {r['wall']:.2f} s, mean in flight {r['in_flight']:.1f}, "
          f"{r['rate_limited']} 429s answered, endpoint CPU {r['endpoint_cpu']:.1f} s{extra}\n"
          f"              settings: {settings}", flush=True)


def summarize(results: list[dict], measured: list[str], labels: dict[str, str], described: dict[str, str],
              failed: dict[str, str], setup: str) -> None:
    """Medians per clock, the ratios, and each ratio beside both tools' settings."""
    def rate(tool: str, clock: str) -> float:
        return statistics.median(r["requests"] / r[clock] for r in results if r["tool"] == tool)

    headline: dict[str, float] = {}
    for clock, label in (("window", "endpoint clock (headline)"), ("own", "each tool's own run time"), ("wall", "whole command")):
        rates = ", ".join(f"{t} {rate(t, clock):.1f} req/s" for t in measured)
        ratios = []
        if "orca-recipe" in measured:
            for t in measured[1:]:
                ratios.append(f"orca-recipe / {t} = {rate('orca-recipe', clock) / rate(t, clock):.2f}x")
                headline.setdefault(t, rate("orca-recipe", clock) / rate(t, clock))
        print(f"{label}: {rates}" + (f" -> {', '.join(ratios)}" if ratios else ""))
    for name, label in labels.items():
        if name in failed:
            print(f"orca-recipe vs {label}: NOT MEASURED ({name} failed)")
        elif name in headline:
            x, goal = headline[name], TARGETS[name]
            met = x > goal if goal == 1.0 else x >= goal
            print(f"orca-recipe vs {label} ({setup}): {x:.2f}x requests/s; target {'>' if goal == 1.0 else '>='} {goal:g}x: "
                  f"{'MET' if met else 'NOT MET'}\n    orca-recipe: {described['orca']}\n    {name}: {described[name]}")


def endpoint_args(args) -> list[str]:
    if args.fixed_latency is not None:
        return ["--fixed-latency", str(args.fixed_latency)]
    return ["--seed", str(args.seed), "--median", str(args.median), "--p99", str(args.p99),
            "--max-latency", str(args.max_latency), "--rate-limited", str(args.rate_limited)]


def ideal(args, C: int) -> str:
    if args.fixed_latency is not None:
        return f"{C / args.fixed_latency:.0f} req/s (C / L)" if args.fixed_latency else "unbounded (L = 0)"
    sigma = math.log(args.p99 / args.median) / 2.326
    mean = args.median * math.exp(sigma**2 / 2)
    return f"~{C / mean:.1f} req/s (C / mean latency {mean:.2f} s, before 429s and the tail)"


def setup_peers(tools: list[str]) -> list[Peer]:
    peers = []
    for name in (t for t in TOOLS[1:] if t in tools):
        why = ensure(PEERS[name])
        if why:
            print(f"{PEERS[name].label} could not be set up here, so it is not measured: {why}")
            print(f"vs_{name}: NOT MEASURED")  # vs_distilabel: the line this script always printed
        else:
            peers.append(PEERS[name])
    return peers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="requests per run (seed problems solved)")
    ap.add_argument("--concurrency", type=int, default=64, help="the budget C every tool gets")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each runs every tool once, in turn")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {','.join(TOOLS)} (orca always makes the prompts)")
    ap.add_argument("--distilabel-replicas", type=int, default=16, help="R: distilabel runs R replicas x C/R rows a batch")
    ap.add_argument("--seed", type=int, default=0, help="the endpoint's latency / 429 seed")
    ap.add_argument("--median", type=float, default=1.0, help="median latency, seconds")
    ap.add_argument("--p99", type=float, default=10.0, help="99th percentile latency, seconds")
    ap.add_argument("--max-latency", type=float, default=60.0, help="the endpoint's cut, under every tool's 120 s timeout")
    ap.add_argument("--rate-limited", type=float, default=0.02, help="fraction of attempts answered 429")
    ap.add_argument("--fixed-latency", type=float, default=None, help="instead: every answer after this many seconds, no 429s")
    args = ap.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or any(t not in TOOLS for t in tools):
        ap.error(f"--tools takes a comma-separated list from {','.join(TOOLS)}; got {args.tools!r}")
    N, C, R = args.n, args.concurrency, args.distilabel_replicas
    if R < 1 or C % R:
        ap.error(f"--distilabel-replicas must divide --concurrency ({C}); got {R}")
    settings = tool_settings(C, R)
    described = {name: describe(s) for name, s in settings.items()}
    print(f"machine: {machine()}")
    peers = setup_peers(tools)
    if not peers and tools != ["orca"]:
        print("no peer could be set up, so there is nothing to compare")
        return
    note = busy_note()
    if note:
        print(f"note: other processes were using CPU at the start: {note}")
    WORK.mkdir(parents=True, exist_ok=True)
    prompts = make_prompts(WORK, N, C)
    prompts_file = WORK / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    distinct = len(set(prompts))

    results: list[dict] = []
    failed: dict[str, str] = {}
    with HostedEndpoint(*endpoint_args(args)) as ep:
        print(f"endpoint: {ep.stats()['model']} (pid {ep.proc.pid}); ideal {ideal(args, C)}")
        recipe = gen_recipe(WORK / "solve.yaml", ep.api_base, seeds=N, concurrency=C, solve_only=True,
                            max_retries=MAX_RETRIES, timeout_s=TIMEOUT_S)
        for i in range(args.rounds):
            for tool in ([None] if "orca" in tools else []) + [p for p in peers if p.name not in failed]:
                try:
                    if tool is None:
                        r = run_orca(ep, recipe, N, i)
                    else:
                        r = run_peer(tool, ep, prompts_file, N, distinct, settings[tool.name])
                except PeerFailed as e:
                    failed[tool.name] = str(e)
                    print(f"  {tool.name:<11} failed in round {i + 1}, so it is not measured: {e}", flush=True)
                    continue
                results.append(r)
                print_run(r, described["orca" if tool is None else tool.name])

    measured = [t for t in ("orca-recipe", *(p.name for p in peers)) if t not in failed and any(r["tool"] == t for r in results)]
    setup = (f"N={N}, C={C}, " + (f"L={args.fixed_latency * 1000:.0f} ms" if args.fixed_latency is not None else
             f"lognormal latency median {args.median:g} s / p99 {args.p99:g} s, {args.rate_limited:.0%} 429s")
             + f", median of {args.rounds} alternated rounds")
    summarize(results, measured, {p.name: p.label for p in peers}, described, failed, setup)
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
