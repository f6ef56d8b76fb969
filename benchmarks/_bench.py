"""Shared helpers for the benchmarks: the machine line, the loopback endpoints, recipes.

Not a benchmark itself. Two loopback endpoints: tests/fake_openai.py's `FakeOpenAI` (a
ThreadingHTTPServer in the benchmark's own process) with `responder=pipeline_reply`, so every
orca-recipe role can parse its replies; and `HostedEndpoint`, benchmarks/hosted_api_endpoint.py
run as a process of its own (asyncio, heavy-tailed latency, 429s), read through its /stats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fake_openai import FakeOpenAI, fake_recipe, pipeline_reply  # noqa: E402

__all__ = ["ENV", "PYTHON", "REPO", "EndpointWatch", "FakeOpenAI", "HostedEndpoint", "busy_note", "gen_recipe", "machine",
           "pipeline_reply", "run_cli"]

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
    return f"{cpu_model()}, {cores} cores, {mem} RAM, Python {sys.version.split()[0]}, {load}"


def cpu_model() -> str:
    """The CPU's name and its vector flags, printed beside every figure: a virtual machine's
    name is often just the family ("AMD EPYC"), and the flags tell which kernels (torch,
    llama.cpp) a timing was taken with."""
    name, flags = "CPU ?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "CPU ?":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    have = [f for f in wanted if f in flags]
    lacks = [f for f in wanted if f not in flags]
    return f"{name} ({'+'.join(have) or 'no AVX2'}; no {', '.join(lacks)})" if lacks else f"{name} ({'+'.join(have)})"


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


class EndpointWatch:
    """Watches a FakeOpenAI every 2 ms from a thread: when the first request arrived, when the
    last good answer went out, and how many requests were in flight (Little's law: a client
    that keeps up holds ~C in flight). Tool-agnostic: it sees only the endpoint. A request with
    no messages is not generation work (curator's `openai` backend POSTs `"messages": []` once
    when it is built, to read rate-limit headers), so the clock starts at the first request
    that carries messages."""

    def __init__(self, srv: FakeOpenAI):
        self.srv = srv
        self.first: float | None = None
        self.last_ok: float | None = None
        self.in_flight: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ok, seen = self.srv.ok_requests, 0
        while not self._stop.wait(0.002):
            now = time.perf_counter()
            if self.first is None:
                bodies = self.srv.bodies
                while seen < len(bodies) and self.first is None:
                    if isinstance(bodies[seen], dict) and bodies[seen].get("messages"):
                        self.first = now
                    seen += 1
            if self.srv.ok_requests != ok:
                ok, self.last_ok = self.srv.ok_requests, now
            if self.first is not None:
                self.in_flight.append(self.srv.in_flight)

    def __enter__(self) -> "EndpointWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def window(self) -> float:
        """Seconds from the first request's arrival to the last good answer."""
        return (self.last_ok - self.first) if self.first is not None and self.last_ok is not None else float("nan")

    @property
    def mean_in_flight(self) -> float:
        xs = list(self.in_flight)
        while xs and xs[-1] == 0:
            xs.pop()
        return sum(xs) / len(xs) if xs else 0.0


class HostedEndpoint:
    """benchmarks/hosted_api_endpoint.py as a child process: the clients under test share no
    process (GIL, event loop) with it. `args` are its command-line options (e.g. "--seed", "0");
    it picks a free port and says which on its first line of stdout."""

    SCRIPT = Path(__file__).resolve().parent / "hosted_api_endpoint.py"

    def __init__(self, *args: str):
        self.args = [str(a) for a in args]
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def __enter__(self) -> "HostedEndpoint":
        self.proc = subprocess.Popen([PYTHON, str(self.SCRIPT), "--port", "0", *self.args], stdout=subprocess.PIPE,
                                     text=True, env=ENV)
        line = self.proc.stdout.readline()  # "listening on PORT", or "" if it died
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"{self.SCRIPT.name} did not start (exit {self.proc.wait()}): {line!r}")
        self.port = int(line.split()[-1])
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _call(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        """Counters since the last reset: ok, rate_limited, probes, window, mean_in_flight, cpu_s ..."""
        return self._call("/stats")

    def prompts(self) -> list[str]:
        """The prompt of every good answer since the last reset, in order (repeats kept)."""
        return self._call("/prompts")

    def reset(self) -> None:
        self._call("/reset", "POST")


def gen_recipe(path: Path, api_base: str, *, seeds: int, concurrency: int, evolve: int | None = None,
               max_retries: int = 3, timeout_s: float | None = None, ama: bool = False, solve_only: bool = False) -> Path:
    """recipes/tiny.yaml's generation half pointed at `api_base` (tests/fake_openai.py's fake_recipe).
    Default stages: seeds, evolve, solve (seeds + evolved), filter; `ama` adds ask_me_anything;
    `solve_only` keeps seeds and solve (one solver request per seed)."""
    endpoint = {"concurrency": concurrency, "max_retries": max_retries} | ({"timeout_s": timeout_s} if timeout_s else {})
    sections: dict = {"seeds": {"limit": seeds, "max_solution_steps": None}, "filters": {"dedup": None, "decontaminate": None}}
    if solve_only:
        sections |= {"ask_me_anything": None, "evolve": None, "solve": {"inputs": ["seeds"]}}
    else:
        sections |= {"evolve": {"limit": evolve if evolve is not None else seeds},
                     "solve": {"inputs": ["seeds", "ask_me_anything", "evolve"] if ama else ["seeds", "evolve"]}}
        if not ama:
            sections["ask_me_anything"] = None
    return fake_recipe(path, api_base, name="bench", endpoint=endpoint, **sections)


def run_cli(*args, timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    proc = subprocess.run([PYTHON, "-m", "orca_recipe.cli", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t
