"""How hard the door may press an endpoint, and how it tries again.

Per endpoint and event loop: a concurrency limit, requests- and tokens-per-minute buckets, and
the transport. `send_with_retries` sends one request within them, retrying 429 / 5xx /
timeouts / dropped connections / unusable bodies with exponential backoff and full jitter,
honouring ``Retry-After`` up to the endpoint's ``max_backoff_s``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, Callable

from orca_recipe.llm.endpoint import Endpoint
from orca_recipe.llm.errors import FAIL, RETRY, Failure, LLMError
from orca_recipe.llm.transport import Reply, transport_for

DEFAULT_MAX_TOKENS_ESTIMATE = 512   # tokens assumed for a reply when max_tokens is unset


class Bucket:
    """Token bucket: `per_minute` refilled continuously, bursts up to ~10 s worth."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 6.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def acquire(self, amount: float) -> None:
        amount = min(float(amount), self.capacity)
        async with self.lock:  # FIFO: one waiter at a time
            while True:
                self._refill()
                if self.tokens >= amount:
                    self.tokens -= amount
                    return
                await asyncio.sleep((amount - self.tokens) / self.rate)

    def adjust(self, delta: float) -> None:
        """Charge `delta` more (or refund, if negative) once the real usage is known."""
        self._refill()
        self.tokens = min(self.capacity, self.tokens - delta)


class Limits:
    """One endpoint's limits and transport on one event loop (asyncio objects belong to a loop)."""

    def __init__(self, ep: Endpoint):
        self.sem = asyncio.Semaphore(max(1, ep.concurrency) * max(1, len(ep.bases)))  # each replica its own slots
        self.rpm = Bucket(ep.rpm) if ep.rpm else None
        self.tpm = Bucket(ep.tpm) if ep.tpm else None
        self.transport = transport_for(ep)
        self.inflight: dict[str, asyncio.Future] = {}
        self.batch: Any = None  # the endpoint's BatchClient (llm/batch.py) when it has `batch: true`

    async def aclose(self) -> None:
        await self.transport.aclose()
        if self.batch is not None:
            await self.batch.aclose()


def estimate_prompt_tokens(messages: list[dict]) -> int:
    chars = 0
    for m in messages:
        c = m.get("content")
        chars += len(c) if isinstance(c, str) else len(json.dumps(c, default=str))
    return chars // 4 + 1


class Backoff:
    """Exponential backoff with full jitter; a server's Retry-After wins (plus a little jitter)."""

    def __init__(self, base_s: float = 1.0, max_s: float = 60.0):
        self.base_s, self.max_s = base_s, max_s
        self.rng = random.Random()

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after + self.rng.uniform(0, self.base_s)
        return self.rng.uniform(0, min(self.max_s, self.base_s * (2 ** attempt)))


async def send_with_retries(ep: Endpoint, lim: Limits, messages: list[dict], params: dict[str, Any], *,
                            api_key: Callable[[], str | None], backoff: Backoff, usage=None,
                            check: Callable[[], None] = lambda: None) -> Reply:
    """One request (``n`` inside params if any) within the endpoint's limits, retried.

    Returns the `Reply`; raises `LLMError` when it fails for good, or the last `Failure` when it
    is the endpoint's fault as a whole (key rejected, no such model, out of quota, nobody
    listening): the caller turns that into an `EndpointError`. `check` runs before every
    attempt (it raises once another request found the endpoint dead)."""
    n = int(params.get("n", 1))
    estimate = estimate_prompt_tokens(messages) + n * int(params.get("max_tokens") or DEFAULT_MAX_TOKENS_ESTIMATE)
    attempt = 0
    while True:
        check()
        key = api_key()
        failure: Failure | None = None
        async with lim.sem:
            if lim.rpm:
                await lim.rpm.acquire(1)
            if lim.tpm:
                await lim.tpm.acquire(estimate)
            try:
                reply = await lim.transport.send(messages, params, key)
            except Failure as f:
                failure = f
        if failure is None:
            if lim.tpm and (reply.prompt_tokens or reply.completion_tokens):
                lim.tpm.adjust((reply.prompt_tokens or 0) + (reply.completion_tokens or 0) - estimate)
            return reply
        if failure.kind == FAIL:
            _count_failure(usage)
            raise LLMError(failure.reason, endpoint=ep.name, attempts=attempt + 1)
        failure.attempts = attempt + 1
        if failure.kind != RETRY:
            raise failure  # the endpoint as a whole: the caller makes it an EndpointError
        if failure.retry_after is not None and failure.retry_after > ep.max_backoff_s:
            _count_failure(usage)
            raise LLMError(f"the server asked to retry after {failure.retry_after:.0f} s, beyond "
                           f"max_backoff_s={ep.max_backoff_s:g} ({failure.reason})", endpoint=ep.name, attempts=attempt + 1)
        if attempt >= ep.max_retries:
            if failure.refused:
                raise failure  # maybe the endpoint is down as a whole: the caller decides
            _count_failure(usage)
            raise LLMError(failure.reason, endpoint=ep.name, attempts=attempt + 1)
        if usage is not None:
            usage.retries += 1
        await asyncio.sleep(min(backoff.delay(attempt, failure.retry_after), ep.max_backoff_s))
        attempt += 1


def _count_failure(usage) -> None:
    if usage is not None:
        usage.failures += 1
