"""The one door to models: every LLM request of every stage goes through `LLM`.

    llm = LLM({"teacher": Endpoint.from_recipe("teacher", recipe.models["teacher"])}, RequestCache(path))
    await llm.preflight("teacher")                      # fatal, clear errors before any work
    c = await llm.complete("teacher", messages, {"temperature": 0}, usage=stage_usage)
    cs = await llm.complete_n("student", messages, {"temperature": 0.7, "seed": 0}, 4, usage=u)

What it does for the caller:
- the request cache (`RequestCache`): checked before every call, written (and committed) the
  moment a completion arrives, keyed by (endpoint identity, messages, sampling, sample index);
  the same request in flight twice is sent once;
- limits and retries per endpoint (`limits.py`), over a transport (`transport.py`: the door's
  own client for OpenAI-compatible servers, litellm for every other provider);
- a request that fails for good is an `LLMError` (the stage writes it as a failures row); a
  mistake the user must fix (no key, key rejected, unknown model, server not running) is an
  `EndpointError` (a `UserError`), raised once and then at once for every later request of
  that endpoint;
- tokens and cost per stage in a `Usage`;
- API keys are read from the environment at call time, never stored, and scrubbed (``***``)
  out of every message this module surfaces.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from orca_recipe.llm.accounting import Completion, Usage, split_reply
from orca_recipe.llm.batch import BatchClient, read_key
from orca_recipe.llm.budget import Budget
from orca_recipe.llm.cache import RequestCache
from orca_recipe.llm.endpoint import Endpoint
from orca_recipe.llm.errors import AUTH, CONFIG, NOTFOUND, QUOTA, EndpointError, Failure, LLMError, process_secrets, scrub
from orca_recipe.llm.limits import Backoff, Limits, estimate_prompt_tokens, send_with_retries
from orca_recipe.llm.preflight import missing_key_message, problem
from orca_recipe.prices import known_price

DEFAULT_MAX_TOKENS = 4096  # a reply's worst case when a request sets no max_tokens

__all__ = ["LLM", "Endpoint", "Completion", "Usage", "LLMError", "EndpointError"]

PREFLIGHT_TIMEOUT_S = 5.0


def _clean_sampling(sampling: Mapping[str, Any] | None) -> dict[str, Any]:
    params = {k: v for k, v in dict(sampling or {}).items() if v is not None}
    if "n" in params:
        raise ValueError("sampling must not hold 'n'; call complete_n(..., n)")
    return params


class LLM:
    """Completions from named endpoints, cached, rate limited, retried and accounted."""

    def __init__(self, endpoints: Mapping[str, Endpoint], cache: RequestCache, *,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0,
                 preflight_timeout_s: float = PREFLIGHT_TIMEOUT_S, batch_dir: Path | None = None, budget: Budget | None = None,
                 starts: Mapping[str, Callable[[], Awaitable[str]]] | None = None):
        """`starts`: endpoints whose server is not up yet, with what starts it (giving its api_base) on
        the first request the cache cannot answer: a stage the cache answers never waits for one."""
        self.endpoints = dict(endpoints)
        self._starts, self._starting = dict(starts or {}), dict[str, asyncio.Task]()
        self.budget = budget  # the run's cost cap: every paid request is reserved against it before it is sent
        self.cache = cache
        self.batch_dir = batch_dir or cache.path.parent / "batches"  # where batch jobs are written, to resume them
        self.backoff = Backoff(backoff_base_s, backoff_max_s)
        self.preflight_timeout_s = preflight_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limits: dict[str, Limits] = {}
        self._closer: Any = None  # parked async generator that closes the running loop's sessions (_close_with_loop)
        self._fatal: dict[str, EndpointError] = {}
        self._ever_ok: set[str] = set()
        self._ignores_n: set[str] = set()

    def _worst_case(self, ep: Endpoint, messages: list[dict], params: Mapping[str, Any], n: int) -> float:
        """The most a request can cost: its prompt and max_tokens per sample, at the price `plan` uses."""
        price = ep.batch_price if ep.batch and ep.batch_price else (ep.price if ep.price is not None else known_price(ep.litellm_model))
        if price is None:
            return 0.0
        out = int(params.get("max_tokens") or DEFAULT_MAX_TOKENS)
        return estimate_prompt_tokens(messages) * price[0] + n * out * price[1]

    async def _paid(self, ep: Endpoint, keys: list[str], messages: list[dict], params: Mapping[str, Any], send: Any) -> list[Completion]:
        """`send()` under the budget: reserved first (or refused), settled with what it cost."""
        if self.budget is None:
            return await send()
        held = self.budget.reserve(self._worst_case(ep, messages, params, len(keys)))
        got: list[Completion] = []
        try:
            got = await send()
            return got
        finally:
            self.budget.settle(held, {k: c.cost for k, c in zip(keys, got)})

    def __repr__(self) -> str:
        return f"LLM(endpoints={sorted(self.endpoints)}, cache={self.cache!r})"

    # ---- per loop -----------------------------------------------------------------------
    async def _limits_for(self, ep: Endpoint) -> Limits:
        """This endpoint's limits and transport on the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._limits = loop, {}
            self._closer = self._close_with_loop(self._limits)
            await self._closer.__anext__()
        lim = self._limits.get(ep.name)
        if lim is None:
            lim = self._limits[ep.name] = Limits(ep)
            if ep.batch:
                lim.batch = BatchClient(ep, self.cache, self.batch_dir, api_key=lambda: self._api_key(ep) or read_key(ep))
        return lim

    @staticmethod
    async def _close_with_loop(limits: dict[str, Limits]):
        """An async generator parked at its yield: ``asyncio.run`` finalizes it as the loop shuts
        down (``loop.shutdown_asyncgens``), which closes this loop's HTTP sessions."""
        try:
            yield
        finally:
            for lim in list(limits.values()):
                await lim.aclose()

    async def aclose(self) -> None:
        """Close the HTTP sessions of the running loop now (asyncio.run does it at its end anyway)."""
        for lim in list(self._limits.values()):
            await lim.aclose()
        self._limits.clear()

    # ---- endpoints, keys, fatal errors ---------------------------------------------------
    async def _ready(self, name: str) -> Endpoint:
        """The endpoint with its server up (started once, however many requests miss at once)."""
        if name in self._starts:
            task = self._starting.get(name)
            if task is None or task.get_loop() is not asyncio.get_running_loop():
                task = self._starting[name] = asyncio.ensure_future(self._starts[name]())
            api_base = await asyncio.shield(task)  # a cancelled waiter leaves the start to the others
            self.endpoints[name] = dataclasses.replace(self.endpoints[name], api_base=api_base)
            self._starts.pop(name, None)
        return self.endpoints[name]

    def _endpoint(self, name: str) -> Endpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            raise ValueError(f"unknown endpoint {name!r}; known: {sorted(self.endpoints)}") from None

    def scrub(self, text: str) -> str:
        return scrub(text, process_secrets([ep.api_key_env for ep in self.endpoints.values() if ep.api_key_env]))

    def _api_key(self, ep: Endpoint) -> str | None:
        if ep.api_key_env:
            key = os.environ.get(ep.api_key_env)
            if not key:
                raise self._fail_endpoint(ep, missing_key_message(ep))
            return key
        if ep.api_base:
            return "EMPTY"
        return None  # hosted provider: litellm reads its own default variable

    def _fail_endpoint(self, ep: Endpoint, message: str) -> EndpointError:
        err = EndpointError(self.scrub(message), key=f"models.{ep.name}")
        self._fatal[ep.name] = err
        return err

    def _raise_if_fatal(self, ep: Endpoint) -> None:
        err = self._fatal.get(ep.name)
        if err is not None:
            raise EndpointError(str(err.args[0]), key=err.key)

    def _endpoint_failure(self, ep: Endpoint, f: Failure, usage: Usage | None) -> Exception:
        """A failure that is the endpoint's as a whole, as the error to raise."""
        reason = self.scrub(f.reason)
        if f.kind == AUTH:
            return self._fail_endpoint(ep, f"the API key was rejected for {ep.litellm_model}"
                                           + (f"; check ${ep.api_key_env}" if ep.api_key_env else "; set api_key_env in the recipe")
                                           + f" ({reason})")
        if f.kind == NOTFOUND:
            where = f" at {ep.api_base}" if ep.api_base else ""
            return self._fail_endpoint(ep, f"model {ep.litellm_model!r} not found{where} ({reason})")
        if f.kind == CONFIG:
            return self._fail_endpoint(ep, f"unknown model {ep.litellm_model!r} ({reason})")
        if f.kind == QUOTA:
            return self._fail_endpoint(ep, f"the account behind {ep.litellm_model} is out of quota ({reason})")
        if f.refused and ep.name not in self._ever_ok:
            return self._fail_endpoint(ep, f"cannot reach {ep.api_base or ep.litellm_model}: connection refused "
                                           f"after {f.attempts} attempts; is the server running?")
        if usage is not None:
            usage.failures += 1
        return LLMError(reason, endpoint=ep.name, attempts=f.attempts)

    # ---- preflight ------------------------------------------------------------------------
    async def preflight(self, name: str) -> None:
        """Fail early and clearly: key variable set, provider known, endpoint reachable, key
        accepted and model served (for endpoints with an api_base, via GET {api_base}/models)."""
        ep = self._endpoint(name)
        self._raise_if_fatal(ep)
        if name in self._starts:
            return  # our own server, not started yet: its start checks it
        message = await problem(ep, self.preflight_timeout_s)
        if message:
            raise self._fail_endpoint(ep, message)

    # ---- one request ------------------------------------------------------------------------
    async def _request(self, ep: Endpoint, messages: list[dict], params: dict[str, Any], usage: Usage | None
                       ) -> list[Completion]:
        """One API call (``n`` inside params if any), limited and retried, as completions."""
        lim = await self._limits_for(ep)
        try:
            reply = await send_with_retries(ep, lim, messages, params, api_key=lambda: self._api_key(ep),
                                            backoff=self.backoff, usage=usage, check=lambda: self._raise_if_fatal(ep))
        except Failure as f:
            raise self._endpoint_failure(ep, f, usage) from None
        except LLMError as e:
            e.reason = self.scrub(e.reason)
            e.args = (self.scrub(str(e)),)
            raise
        self._ever_ok.add(ep.name)
        price = ep.price if ep.price is not None else known_price(ep.litellm_model)
        completions, pt, ct, cost = split_reply(reply, messages, price)
        secrets = process_secrets([e.api_key_env for e in self.endpoints.values() if e.api_key_env])
        if secrets:  # an endpoint that echoes a key into its reply: the key never reaches the cache or a dataset
            completions = [dataclasses.replace(c, text=scrub(c.text, secrets)) for c in completions]
        if usage is not None:
            usage.requests += 1
            usage.prompt_tokens += pt
            usage.completion_tokens += ct
            usage.add_cost(cost)
        return completions

    async def _batched(self, ep: Endpoint, keys: list[str], messages: list[dict], params: dict[str, Any],
                       usage: Usage | None) -> list[Completion]:
        """The samples for `keys` through the endpoint's batch jobs (llm/batch.py), which also
        cached them; accounted here as paid requests at the batch price."""
        lim = await self._limits_for(ep)
        try:
            values = await lim.batch.request(keys, messages, params)
        except Failure as f:
            raise self._endpoint_failure(ep, f, usage) from None
        except LLMError:
            if usage is not None:
                usage.failures += 1
            raise
        out = [dataclasses.replace(Completion.from_cache(v), cost=v.get("cost"), cached=False) for v in values]
        if usage is not None:
            usage.requests += 1
            usage.prompt_tokens += sum(c.prompt_tokens for c in out)
            usage.completion_tokens += sum(c.completion_tokens for c in out)
            for c in out:
                usage.add_cost(c.cost)
        return out

    @staticmethod
    async def _same_request_done(lim: Limits, key: str, usage: Usage | None) -> Any:
        """The result of the same request already on its way (waited for, never paid twice), or
        None when none is; then the caller claims `key` with no await in between."""
        while (pending := lim.inflight.get(key)) is not None:
            await asyncio.wait({pending})  # raises only if *this* task is cancelled
            if pending.cancelled():
                continue  # its owner was cancelled: take over
            err = pending.exception()
            if err is not None:
                if usage is not None and isinstance(err, LLMError):
                    usage.failures += 1
                raise err
            return pending.result()
        return None

    # ---- public calls -----------------------------------------------------------------
    async def complete(self, name: str, messages: list[dict], sampling: Mapping[str, Any] | None = None, *,
                       sample_index: int = 0, usage: Usage | None = None) -> Completion:
        """Sample `sample_index` of this request: from the cache, or one call with
        ``seed = sampling.get("seed", 0) + sample_index``, stored the moment it arrives."""
        ep = self._endpoint(name)
        params = _clean_sampling(sampling)
        key = self.cache.key(ep.identity, messages, params, sample_index)
        hit = self.cache.get(key)
        if hit is not None:
            if usage is not None:
                usage.cache_hits += 1
            return Completion.from_cache(hit)
        self._raise_if_fatal(ep)
        ep = await self._ready(name)
        lim = await self._limits_for(ep)
        if (c := await self._same_request_done(lim, key, usage)) is not None:
            if usage is not None:
                usage.cache_hits += 1
            return Completion(text=c.text, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                              cost=0.0, cached=True, finish_reason=c.finish_reason)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        lim.inflight[key] = fut
        try:
            req = dict(params)
            req["seed"] = int(params.get("seed", 0)) + sample_index
            if ep.batch:
                c = (await self._paid(ep, [key], messages, req, lambda: self._batched(ep, [key], messages, req, usage)))[0]
            else:
                c = (await self._paid(ep, [key], messages, req, lambda: self._request(ep, messages, req, usage)))[0]
                self.cache.put(key, c.to_cache())
            fut.set_result(c)
            return c
        except BaseException as e:
            if not fut.done():
                if isinstance(e, Exception):
                    fut.set_exception(e)
                    fut.exception()  # mark it retrieved; waiters still get it
                else:
                    fut.cancel()
            raise
        finally:
            lim.inflight.pop(key, None)

    async def complete_n(self, name: str, messages: list[dict], sampling: Mapping[str, Any] | None, n: int, *,
                         usage: Usage | None = None) -> list[Completion]:
        """`n` samples; sample i is cached under sample index i with seed ``seed + i``. When none
        is cached and the endpoint supports it, one call with ``n=n``; otherwise (or for whatever a
        server that ignores ``n`` left missing) separate seeded calls, concurrently."""
        ep = self._endpoint(name)
        params = _clean_sampling(sampling)
        if n < 1:
            return []
        keys = [self.cache.key(ep.identity, messages, params, i) for i in range(n)]
        found = self.cache.get_many(keys)
        results: list[Completion | None] = [None] * n
        for i, k in enumerate(keys):
            if k in found:
                results[i] = Completion.from_cache(found[k])
                if usage is not None:
                    usage.cache_hits += 1
        missing = [i for i in range(n) if results[i] is None]
        if not missing:
            return results  # type: ignore[return-value]
        self._raise_if_fatal(ep)
        ep = await self._ready(name)

        if n > 1 and len(missing) == n and ep.batch and ep.supports_n and ep.provider == "openai":
            req = dict(params)
            req["seed"] = int(params.get("seed", 0))
            return await self._paid(ep, keys, messages, req, lambda: self._batched(ep, keys, messages, req, usage))  # one batch request, n = n
        if n > 1 and len(missing) == n and ep.supports_n and ep.name not in self._ignores_n and not ep.batch:
            for i, c in enumerate(await self._n_in_one_request(name, ep, keys, messages, params, usage)):
                results[i] = c
            missing = [i for i in range(n) if results[i] is None]
        if missing:
            for i, c in zip(missing, await self._each_sample(name, messages, params, missing, usage)):
                results[i] = c
        return results  # type: ignore[return-value]

    async def _n_in_one_request(self, name: str, ep: Endpoint, keys: list[str], messages: list[dict], params: dict[str, Any],
                                usage: Usage | None) -> list[Completion]:
        """One request with ``n = len(keys)``: its completions (fewer when the server ignores n,
        which is then asked per sample from now on). When the same n-sample request is already
        on its way (generated problems collide), its answers instead: never paid twice."""
        n = len(keys)
        lim = await self._limits_for(ep)
        flight = "n:" + keys[0]
        if await self._same_request_done(lim, flight, usage) is not None:
            found = self.cache.get_many(keys)
            if usage is not None:
                usage.cache_hits += sum(k in found for k in keys)
            return [Completion.from_cache(found[k]) if k in found else await self.complete(name, messages, params, sample_index=i, usage=usage)
                    for i, k in enumerate(keys)]
        # no await between the check above and this claim: one request per key set
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        lim.inflight[flight] = fut
        try:
            req = dict(params)
            req["seed"] = int(params.get("seed", 0))
            req["n"] = n
            got = (await self._paid(ep, keys, messages, req, lambda: self._request(ep, messages, req, usage)))[:n]
            if len(got) < n:
                self._ignores_n.add(ep.name)  # this server ignores n: separate calls from now on
            self.cache.put_many((keys[i], c.to_cache()) for i, c in enumerate(got))
            fut.set_result(True)
        except BaseException as e:
            if not fut.done():
                if isinstance(e, Exception):
                    fut.set_exception(e)
                    fut.exception()  # retrieved; waiters still get it
                else:
                    fut.cancel()
            raise
        finally:
            lim.inflight.pop(flight, None)
        return got

    async def _each_sample(self, name: str, messages: list[dict], params: dict[str, Any], indices: list[int],
                           usage: Usage | None) -> list[Completion]:
        """Samples `indices` as separate seeded calls, concurrently; the fatal error first, else the first failure."""
        outs = await asyncio.gather(*(self.complete(name, messages, params, sample_index=i, usage=usage) for i in indices), return_exceptions=True)
        errors = [o for o in outs if isinstance(o, BaseException)]
        for err in errors:
            if isinstance(err, (EndpointError, asyncio.CancelledError)) or not isinstance(err, Exception):
                raise err
        if errors:
            raise errors[0]
        return outs  # type: ignore[return-value]  # no exceptions left
