"""A stand-in for a hosted LLM API, run as its own process: OpenAI-compatible chat completions
with a heavy-tailed latency and some 429s.

    python benchmarks/hosted_api_endpoint.py --port 0 --seed 0 [--median 1.0] [--p99 10.0]
        [--max-latency 60] [--rate-limited 0.02] [--fixed-latency S]

Why its own process: a client benchmarked against a server in its own process shares that
process's GIL and cores with the server; here the server is one asyncio (aiohttp) process, so
hundreds of concurrent requests cost it one coroutine each, not a thread each.

Latency: lognormal, median `--median` s and 99th percentile `--p99` s (sigma = ln(p99/median) /
2.326), cut at `--max-latency` (a hosted API's own deadline; keep it under every client's
timeout). It is drawn from a generator seeded with (seed, the last user message, how many
times that message was sent since the last reset), so every client gets the same latency and
the same 429s for the same prompt and attempt, whatever order it sends them in. A fraction
`--rate-limited` of attempts is answered 429 after a short delay (50-250 ms) with
`Retry-After: 1` or `2` (and `retry-after-ms`), as OpenAI's API does. `--fixed-latency S`
answers every request after S seconds with no 429s (the old loopback comparison).

Replies: tests/fake_openai.py's `pipeline_reply`, so orca-recipe's solve stage parses them,
with `usage` tokens. A request without messages (curator's backend POSTs one when it is built,
to read rate-limit headers) is a probe: answered at once and counted apart.

Counters, for a benchmark in another process:
    GET  /stats  ok, rate_limited (429s sent), probes, undelivered, distinct prompts answered,
                 in_flight now, first request / last good answer (this process's monotonic
                 clock) and the window between them, time-averaged in flight over that window,
                 and the latencies served (median, p99, max)
    GET  /prompts  the prompt of every good answer since the last reset, in order (repeats kept)
    POST /reset  zero every counter and restart the latency sequence
The first line on stdout is `listening on PORT` once the server accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai import pipeline_reply  # noqa: E402

Z99 = 2.326  # the standard normal's 99th percentile


@dataclass(frozen=True)
class LatencyModel:
    """What each attempt costs: a lognormal latency or a 429, drawn per (prompt, attempt)."""

    seed: int
    median: float = 1.0
    p99: float = 10.0
    max_latency: float = 60.0
    rate_limited: float = 0.02
    fixed: float | None = None

    @property
    def sigma(self) -> float:
        return math.log(self.p99 / self.median) / Z99

    def draw(self, prompt: str, attempt: int) -> tuple[float, int | None]:
        """(seconds to wait, Retry-After seconds if this attempt is answered 429 else None)."""
        if self.fixed is not None:
            return self.fixed, None
        rng = random.Random(f"{self.seed}|{attempt}|{prompt}")
        if rng.random() < self.rate_limited:
            return rng.uniform(0.05, 0.25), rng.choice((1, 2))
        return min(self.max_latency, self.median * math.exp(rng.gauss(0.0, self.sigma))), None

    def describe(self) -> str:
        if self.fixed is not None:
            return f"fixed latency {self.fixed * 1000:.0f} ms, no 429s"
        return (f"lognormal latency, median {self.median:g} s, p99 {self.p99:g} s (sigma {self.sigma:.3f}), "
                f"cut at {self.max_latency:g} s; {self.rate_limited:.0%} of attempts 429 with Retry-After 1-2 s, seed {self.seed}")


@dataclass
class Counters:
    """Everything /stats reports; in-flight is integrated over time as it changes, so the
    mean needs no sampling thread."""

    ok: int = 0
    rate_limited: int = 0
    probes: int = 0
    undelivered: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    first: float | None = None
    last_ok: float | None = None
    area: float = 0.0  # integral of in_flight dt since `first`
    area_at_last_ok: float = 0.0
    changed: float = 0.0
    attempts: Counter = field(default_factory=Counter)  # prompt -> attempts
    answered: Counter = field(default_factory=Counter)  # prompt -> good answers delivered
    answered_in_order: list = field(default_factory=list)  # prompts of good answers, repeats kept
    latencies: list = field(default_factory=list)  # of good answers

    def _advance(self, now: float) -> None:
        if self.first is not None:
            self.area += self.in_flight * (now - self.changed)
        self.changed = now

    def enter(self, now: float) -> None:
        if self.first is None:
            self.first = self.changed = now
        self._advance(now)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self, now: float, ok: bool) -> None:
        self._advance(now)
        self.in_flight -= 1
        if ok:
            self.last_ok, self.area_at_last_ok = now, self.area

    def snapshot(self) -> dict:
        window = (self.last_ok - self.first) if self.first is not None and self.last_ok is not None else None
        lat = sorted(self.latencies)
        return {
            "ok": self.ok, "rate_limited": self.rate_limited, "probes": self.probes, "undelivered": self.undelivered,
            "attempts": sum(self.attempts.values()), "distinct_prompts_answered": len(self.answered),
            "answered_twice": sum(1 for v in self.answered.values() if v > 1),
            "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
            "first": self.first, "last_ok": self.last_ok, "window": window,
            "mean_in_flight": (self.area_at_last_ok / window) if window else 0.0,
            "latency_median": statistics.median(lat) if lat else None,
            "latency_p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "latency_max": lat[-1] if lat else None,
            "cpu_s": time.process_time(),  # this server's own CPU seconds so far: is it the bottleneck?
        }


def last_user(messages) -> str:
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c, sort_keys=True)
    return ""


def completion(body: dict, prompt: str) -> dict:
    """A chat.completion with one choice per `n`, answered by `pipeline_reply`."""
    seed = body.get("seed")
    choices = [{"index": i, "message": {"role": "assistant", "content": pipeline_reply(prompt, seed, i)},
                "finish_reason": "stop", "logprobs": None} for i in range(int(body.get("n") or 1))]
    prompt_tokens = max(1, sum(len(str(m.get("content", ""))) for m in body.get("messages") or []) // 4)
    completion_tokens = sum(len(c["message"]["content"].split()) for c in choices)
    return {"id": f"chatcmpl-{random.getrandbits(64):016x}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def rate_limit_error(retry_after: int) -> web.Response:
    body = {"error": {"message": "Rate limit reached, please try again later.", "type": "requests",
                      "param": None, "code": "rate_limit_exceeded"}}
    return web.json_response(body, status=429, headers={"Retry-After": str(retry_after),
                                                        "retry-after-ms": str(retry_after * 1000)})


class HostedAPI:
    """The aiohttp routes over one LatencyModel and one Counters (single-threaded: asyncio)."""

    def __init__(self, model: LatencyModel):
        self.model = model
        self.c = Counters()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, status=400)
        if not (isinstance(body, dict) and body.get("messages")):
            self.c.probes += 1
            return web.json_response(completion(body if isinstance(body, dict) else {}, ""))
        prompt = last_user(body["messages"])
        c = self.c
        c.attempts[prompt] += 1
        wait, retry_after = self.model.draw(prompt, c.attempts[prompt])
        c.enter(time.monotonic())
        ok = False
        try:
            await asyncio.sleep(wait)
            if retry_after is not None:
                c.rate_limited += 1
                return rate_limit_error(retry_after)
            resp = web.json_response(completion(body, prompt))
            try:
                await resp.prepare(request)
                await resp.write_eof()
            except (ConnectionResetError, asyncio.CancelledError):
                c.undelivered += 1
                raise
            ok = True
            c.ok += 1
            c.answered[prompt] += 1
            c.answered_in_order.append(prompt)
            c.latencies.append(wait)
            return resp
        finally:
            c.leave(time.monotonic(), ok)  # after a reset, `c` is the old counters: harmless

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "fake"}]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.c.snapshot() | {"model": self.model.describe()})

    async def prompts(self, request: web.Request) -> web.Response:
        return web.json_response(self.c.answered_in_order)

    async def reset(self, request: web.Request) -> web.Response:
        self.c = Counters()
        return web.json_response({"reset": True})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes([web.post("/v1/chat/completions", self.chat), web.post("/chat/completions", self.chat),
                        web.get("/v1/models", self.models), web.get("/models", self.models),
                        web.get("/stats", self.stats), web.get("/prompts", self.prompts), web.post("/reset", self.reset)])
        return app


async def serve(api: HostedAPI, host: str, port: int) -> None:
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on {bound}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed on the first line)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--median", type=float, default=1.0, help="median latency, seconds")
    ap.add_argument("--p99", type=float, default=10.0, help="99th percentile latency, seconds")
    ap.add_argument("--max-latency", type=float, default=60.0, help="no answer takes longer (keep under clients' timeouts)")
    ap.add_argument("--rate-limited", type=float, default=0.02, help="fraction of attempts answered 429")
    ap.add_argument("--fixed-latency", type=float, default=None, help="every answer after this many seconds, no 429s")
    args = ap.parse_args()
    model = LatencyModel(seed=args.seed, median=args.median, p99=args.p99, max_latency=args.max_latency,
                         rate_limited=args.rate_limited, fixed=args.fixed_latency)
    try:
        asyncio.run(serve(HostedAPI(model), args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
