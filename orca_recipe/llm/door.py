"""The one door to models: every LLM request of every stage goes through `LLM`.

    llm = LLM({"teacher": Endpoint.from_recipe("teacher", recipe.models["teacher"])}, RequestCache(path))
    await llm.preflight("teacher")                      # fatal, clear errors before any work
    c = await llm.complete("teacher", messages, {"temperature": 0}, usage=stage_usage)
    cs = await llm.complete_n("student", messages, {"temperature": 0.7, "seed": 0}, 4, usage=u)

What it does for the caller:
- the request cache (`RequestCache`): checked before every call, written (and committed) the
  moment a completion arrives, keyed by (endpoint identity, messages, sampling, sample index);
- per endpoint: a concurrency limit, requests- and tokens-per-minute buckets;
- retries with exponential backoff and full jitter on 429 / 5xx / timeouts / connection errors /
  broken or empty bodies, honouring ``Retry-After``; a request that still fails is an
  `LLMError` (the stage writes it as a failures row); a mistake the user must fix (no key,
  key rejected, unknown model, server not running) is an `EndpointError` (a `UserError`), raised
  once and then at once for every later request of that endpoint;
- tokens and cost per stage in a `Usage`;
- API keys are read from the environment at call time, never stored, and scrubbed (``***``)
  out of every message this module surfaces.

litellm is imported lazily, here only (validate / plan never pay for it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import email.utils
import functools
import json
import os
import random
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from orca_recipe.errors import UserError
from orca_recipe.llm.cache import RequestCache

if TYPE_CHECKING:
    from orca_recipe.recipe.schema import ModelEndpoint

DEFAULT_MAX_TOKENS_ESTIMATE = 512   # tokens assumed for a reply when max_tokens is unset
MAX_RETRY_AFTER_S = 300.0           # default max_backoff_s: the longest wait before a retry
PREFLIGHT_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """A resolved model endpoint (the runner builds it from a recipe `ModelEndpoint`)."""

    name: str                  # recipe key, e.g. "teacher"
    litellm_model: str         # e.g. "openai/gpt-4-turbo", "hosted_vllm/smollm2-135m-instruct"
    identity: str              # cache identity: model string @ api_base, or "local:<weights content>:<dtype>"
    api_base: str | None = None
    api_key_env: str | None = None   # the NAME of the env var; the key is read at call time
    concurrency: int = 8
    rpm: int | None = None
    tpm: int | None = None
    price: tuple[float, float] | None = None  # USD per token (input, output)
    timeout_s: float = 120     # a deadline for the whole attempt: connect, wait, and the body to its last byte
    max_retries: int = 6
    max_backoff_s: float = MAX_RETRY_AFTER_S  # a Retry-After beyond this fails the request instead of sleeping
    supports_n: bool = True

    @classmethod
    def from_recipe(cls, name: str, m: "ModelEndpoint", *, api_base: str | None = None, litellm_model: str | None = None,
                    identity: str | None = None) -> "Endpoint":
        """From a recipe `ModelEndpoint`. For ``local:`` models the runner passes the served
        `litellm_model`, the server's `api_base` and an `identity` that does not depend on the port.
        A hosted model's identity includes its api_base: another server under the same model
        name is another model."""
        model = litellm_model or m.model
        if not model:
            raise ValueError(f"models.{name}: a local model needs litellm_model= (the served name) from the runner")
        price = None
        if m.price is not None:
            price = (m.price.input_per_mtok / 1e6, m.price.output_per_mtok / 1e6)
        return cls(
            name=name,
            litellm_model=model,
            identity=identity or (f"{model}@{m.api_base}" if m.api_base else model),
            api_base=api_base if api_base is not None else m.api_base,
            api_key_env=m.api_key_env,
            concurrency=m.concurrency,
            rpm=m.rpm,
            tpm=m.tpm,
            price=price,
            timeout_s=float(m.timeout_s),
            max_retries=m.max_retries,
            max_backoff_s=float(m.max_backoff_s),
            supports_n=m.supports_n,
        )


@dataclass
class Completion:
    """One sample. For a sample that came out of an ``n=`` request, tokens and cost are its
    share of that request (so they sum to what was billed). A cache hit costs 0.0."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    cached: bool
    finish_reason: str | None


@dataclass
class Usage:
    """Accounting for one stage. `requests` are paid API calls that returned a completion;
    `retries` failed attempts that were retried; `failures` requests given up on (LLMError);
    `cost` is None once any paid request had no known price."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0
    retries: int = 0
    failures: int = 0

    def add_cost(self, cost: float | None) -> None:
        if cost is None or self.cost is None:
            self.cost = None
        else:
            self.cost += cost

    def merge(self, other: "Usage") -> None:
        self.requests += other.requests
        self.cache_hits += other.cache_hits
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.retries += other.retries
        self.failures += other.failures
        self.add_cost(other.cost)


class LLMError(Exception):
    """One request failed for good (after retries, or a 400-type error). `reason` is short."""

    def __init__(self, reason: str, *, endpoint: str | None = None, attempts: int = 0):
        self.reason = reason
        self.endpoint = endpoint
        self.attempts = attempts
        where = f"models.{endpoint}: " if endpoint else ""
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{where}{reason}{tries}")


class EndpointError(UserError):
    """The endpoint cannot work at all: no key, key rejected, unknown model, unreachable."""


# ---------------------------------------------------------------------------------------------
# litellm, lazily
# ---------------------------------------------------------------------------------------------
_litellm_mod = None


def _litellm():
    global _litellm_mod
    if _litellm_mod is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.telemetry = False
        litellm.drop_params = True
        litellm.num_retries = 0
        litellm.cache = None
        litellm.suppress_debug_info = True
        _litellm_mod = litellm
    return _litellm_mod


# ---------------------------------------------------------------------------------------------
# Per-call overhead: litellm's request set-up runs inline, not in a thread
# ---------------------------------------------------------------------------------------------
# `litellm.acompletion` runs the synchronous `completion(...)` (parameter mapping, request
# building; no I/O for OpenAI-compatible providers, the HTTP call itself is a coroutine it
# returns) through `loop.run_in_executor(None, ...)`. With hundreds of calls in flight that is a
# thread hop per call onto cpu+4 threads that all fight the event loop for the GIL: on 2 cores it
# cost ~0.5 ms CPU per call and made every GIL-releasing call on the loop (SQLite) wait. The door
# installs this executor as its loop's default and, while one of its own calls to an
# OpenAI-compatible endpoint is being set up, runs exactly that `completion` partial inline.
# Everything else (asyncio.to_thread, DNS lookups, other providers whose set-up may block)
# still goes to threads.
_INLINE_SETUP: contextvars.ContextVar[bool] = contextvars.ContextVar("orca_inline_litellm_setup", default=False)
_INLINE_PROVIDERS = frozenset({"openai", "hosted_vllm", "custom_openai", "openai_like"})


def _is_litellm_completion(fn: Any) -> bool:
    """``partial(ctx.run, partial(litellm.main.completion, **kwargs))``: what acompletion submits."""
    if not isinstance(fn, functools.partial) or len(fn.args) != 1 or fn.keywords:
        return False
    inner = fn.args[0]
    main = sys.modules.get("litellm.main")
    return (isinstance(inner, functools.partial) and main is not None
            and inner.func is getattr(main, "completion", None) and isinstance(fn.func, type(contextvars.Context().run)))


class _LoopExecutor(concurrent.futures.ThreadPoolExecutor):
    """A ThreadPoolExecutor that runs litellm's synchronous set-up of the door's own calls inline."""

    def submit(self, fn, /, *args, **kwargs):
        if _INLINE_SETUP.get() and not args and not kwargs and _is_litellm_completion(fn):
            f: concurrent.futures.Future = concurrent.futures.Future()
            try:
                f.set_result(fn())
            except Exception as e:
                f.set_exception(e)
            return f
        return super().submit(fn, *args, **kwargs)


# Models litellm has no price for that the door entered into litellm's price table at 0 (the
# door's own cost accounting still reports them as unknown: cost None unless the recipe has a price).
_DOOR_REGISTERED: set[str] = set()


def _register_unpriced_model(litellm, model: str, provider: str | None) -> None:
    """For a model litellm has no price for (every local or self-hosted model), litellm prices
    each response anyway, for its hidden params, by scanning its whole price table for a
    look-alike: ~0.3 ms CPU a call. An entry at 0 makes that a dict lookup; the door never reads
    litellm's figure for such a model (see `LLM._cost`)."""
    if model in _DOOR_REGISTERED:
        return
    try:
        if litellm.get_model_info(model).get("input_cost_per_token") is not None:
            return  # litellm knows its price
    except Exception:
        pass
    import logging

    log = logging.getLogger("LiteLLM")
    level = log.level
    log.setLevel(logging.ERROR)  # register_model warns that cache-token prices default to 0
    try:
        litellm.register_model({model: {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
                                        "litellm_provider": provider or "openai", "mode": "chat"}})
        _DOOR_REGISTERED.add(model)
    except Exception:
        pass
    finally:
        log.setLevel(level)


def _install_loop_executor(loop: asyncio.AbstractEventLoop) -> None:
    """Make `_LoopExecutor` the default executor of a loop the door adopts (public asyncio API;
    the runner gives every stage a fresh loop, whose default executor is not yet made)."""
    try:
        loop.set_default_executor(_LoopExecutor(thread_name_prefix="orca-llm"))
    except (TypeError, RuntimeError, NotImplementedError):
        pass


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",}]+")
_SK = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    text = _BEARER.sub(r"\1***", text)
    return _SK.sub("sk-***", text)


# ---------------------------------------------------------------------------------------------
# Rate limiting
# ---------------------------------------------------------------------------------------------
class _Bucket:
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


class _LoopState:
    """Per endpoint, per event loop (asyncio primitives belong to one loop)."""

    def __init__(self, ep: Endpoint):
        self.sem = asyncio.Semaphore(max(1, ep.concurrency))
        self.rpm = _Bucket(ep.rpm) if ep.rpm else None
        self.tpm = _Bucket(ep.tpm) if ep.tpm else None
        self.inflight: dict[str, asyncio.Future] = {}


# ---------------------------------------------------------------------------------------------
# Error classification
# ---------------------------------------------------------------------------------------------
_RETRY, _FAIL, _AUTH, _NOTFOUND, _CONFIG, _QUOTA = "retry", "fail", "auth", "notfound", "config", "quota"


class _Deadline(TimeoutError):
    """An attempt that did not finish within the endpoint's timeout_s (body included)."""


class _EmptyChoices(Exception):
    """A 200 whose body we cannot use (empty choices): retried like a 5xx."""


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _is_connection_error(e: BaseException) -> bool:
    import httpx
    import openai

    for x in _chain(e):
        if isinstance(x, (ConnectionError, httpx.ConnectError, openai.APIConnectionError)) and not isinstance(
                x, openai.APITimeoutError):
            return True
        if type(x).__name__ in ("ClientConnectorError", "ServerDisconnectedError", "ClientOSError"):
            return True
    return False


def _is_refused(e: BaseException) -> bool:
    for x in _chain(e):
        if isinstance(x, ConnectionRefusedError) or type(x).__name__ == "ClientConnectorError":
            return True
        if "connection refused" in str(x).lower() or "connect call failed" in str(x).lower():
            return True
    return False


def _retry_after(e: BaseException) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date), wherever litellm
    put the headers: ``e.litellm_response_headers`` (the provider's), ``e.headers``, ``e.response.headers``."""
    for x in _chain(e):
        sources = [getattr(x, "litellm_response_headers", None), getattr(x, "headers", None)]
        resp = getattr(x, "response", None)
        if resp is not None:
            sources.append(getattr(resp, "headers", None))
        for h in sources:
            if not h:
                continue
            try:
                lower = {str(k).lower(): str(v) for k, v in dict(h).items()}
            except Exception:
                continue
            for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0),
                                ("llm_provider-retry-after", 1.0)):
                v = lower.get(name)
                if v is None:
                    continue
                try:
                    return max(0.0, float(v) * scale)
                except ValueError:
                    pass
                try:
                    when = email.utils.parsedate_to_datetime(v)
                    return max(0.0, when.timestamp() - time.time())
                except (TypeError, ValueError):
                    pass
    return None


def _classify(e: BaseException) -> str:
    litellm = _litellm()
    if isinstance(e, (_EmptyChoices, asyncio.TimeoutError, TimeoutError)):
        return _RETRY
    msg = str(e).lower()
    if isinstance(e, (litellm.AuthenticationError, litellm.PermissionDeniedError)):
        return _AUTH
    if isinstance(e, litellm.NotFoundError):
        return _NOTFOUND
    if isinstance(e, litellm.RateLimitError):
        return _QUOTA if "insufficient_quota" in msg or "exceeded your current quota" in msg else _RETRY
    if isinstance(e, (litellm.Timeout, litellm.APIConnectionError, litellm.InternalServerError,
                      litellm.ServiceUnavailableError, litellm.BadGatewayError, litellm.APIResponseValidationError)):
        return _RETRY
    if isinstance(e, litellm.BadRequestError):
        if "llm provider not provided" in msg or isinstance(e, getattr(litellm, "LiteLLMUnknownProvider", ())):
            return _CONFIG
        return _FAIL
    if isinstance(e, litellm.UnprocessableEntityError):
        return _FAIL
    status = getattr(e, "status_code", None)
    if isinstance(status, int):
        if status in (401, 403):
            return _AUTH
        if status in (408, 409, 425, 429) or status >= 500 or status == 200:
            return _RETRY  # 200: litellm could not read the body (truncated / not JSON)
        if 400 <= status < 500:
            return _FAIL
    if isinstance(e, (litellm.APIError, OSError, ValueError)) or _is_connection_error(e):
        return _RETRY
    raise e  # a programming error: let it raise


_NOISE = re.compile(r"^\s*(?:litellm\.)?[A-Za-z_]*(?:Error|Exception|Timeout)(?: Error)?\s*(?::|-)\s*")
_JSON_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _short(e: BaseException, limit: int = 240) -> str:
    """``"RateLimitError (HTTP 429): Rate limit reached"``: the class, the status, the server's words."""
    name = type(e).__name__.lstrip("_")
    text = " ".join(str(e).split("Traceback (most recent call last)")[0].split())  # litellm can embed one
    while True:
        stripped = _NOISE.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    m = _JSON_MESSAGE.search(text)
    if m:
        text = m.group(1).replace('\\"', '"')
    status = getattr(e, "status_code", None)
    # litellm reports connection errors as HTTP 500 and unreadable bodies as 200: no status for those
    real_status = isinstance(status, int) and status not in (200, 408) and not (
        status == 500 and ("Errno" in text or "onnect" in text))
    head = f"{name} (HTTP {status})" if real_status else name
    out = f"{head}: {text}" if text else head
    return out if len(out) <= limit else out[:limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# The door
# ---------------------------------------------------------------------------------------------
def _clean_sampling(sampling: Mapping[str, Any] | None) -> dict[str, Any]:
    params = {k: v for k, v in dict(sampling or {}).items() if v is not None}
    if "n" in params:
        raise ValueError("sampling must not hold 'n'; call complete_n(..., n)")
    return params


def _estimate_prompt_tokens(messages: list[dict]) -> int:
    chars = 0
    for m in messages:
        c = m.get("content")
        chars += len(c) if isinstance(c, str) else len(json.dumps(c, default=str))
    return chars // 4 + 1


class LLM:
    """Completions from named endpoints, cached, rate limited, retried and accounted."""

    def __init__(self, endpoints: Mapping[str, Endpoint], cache: RequestCache, *,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0,
                 max_retry_after_s: float = MAX_RETRY_AFTER_S, preflight_timeout_s: float = PREFLIGHT_TIMEOUT_S):
        self.endpoints = dict(endpoints)
        self.cache = cache
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.preflight_timeout_s = preflight_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._states: dict[str, _LoopState] = {}
        self._fatal: dict[str, EndpointError] = {}
        self._ever_ok: set[str] = set()
        self._ignores_n: set[str] = set()
        self._known_price: dict[str, bool] = {}
        self._inline: dict[str, bool] = {}  # endpoint -> litellm's set-up runs inline (_LoopExecutor)
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"LLM(endpoints={sorted(self.endpoints)}, cache={self.cache!r})"

    # ---- helpers -------------------------------------------------------------------------
    def _endpoint(self, name: str) -> Endpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            raise ValueError(f"unknown endpoint {name!r}; known: {sorted(self.endpoints)}") from None

    def _state(self, ep: Endpoint) -> _LoopState:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._states = {}
            _install_loop_executor(loop)
        st = self._states.get(ep.name)
        if st is None:
            st = self._states[ep.name] = _LoopState(ep)
        return st

    def _secrets(self) -> list[str]:
        out = []
        for ep in self.endpoints.values():
            if ep.api_key_env:
                v = os.environ.get(ep.api_key_env)
                if v:
                    out.append(v)
        return out

    def scrub(self, text: str) -> str:
        return _scrub(text, self._secrets())

    def _api_key(self, ep: Endpoint) -> str | None:
        if ep.api_key_env:
            key = os.environ.get(ep.api_key_env)
            if not key:
                raise self._fail_endpoint(ep, self._missing_key_message(ep))
            return key
        if ep.api_base:
            return "EMPTY"
        return None  # hosted provider: litellm reads its own default variable

    @staticmethod
    def _missing_key_message(ep: Endpoint) -> str:
        return (f"environment variable {ep.api_key_env} is not set; it must hold the API key for "
                f"{ep.litellm_model} (the recipe names only the variable, never the key)")

    def _fail_endpoint(self, ep: Endpoint, message: str) -> EndpointError:
        err = EndpointError(self.scrub(message), key=f"models.{ep.name}")
        self._fatal[ep.name] = err
        return err

    def _raise_if_fatal(self, ep: Endpoint) -> None:
        err = self._fatal.get(ep.name)
        if err is not None:
            raise EndpointError(str(err.args[0]), key=err.key)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s) + self._rng.uniform(0, self.backoff_base_s)
        return self._rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt)))

    # ---- preflight ------------------------------------------------------------------------
    async def preflight(self, name: str) -> None:
        """Fail early and clearly: key variable set, provider known, endpoint reachable, key
        accepted and model served (for endpoints with an api_base, via GET {api_base}/models)."""
        ep = self._endpoint(name)
        self._state(ep)  # adopt this loop first (its default executor; see _LoopExecutor)
        self._raise_if_fatal(ep)
        if ep.api_key_env and not os.environ.get(ep.api_key_env):
            raise self._fail_endpoint(ep, self._missing_key_message(ep))
        litellm = _litellm()
        try:
            _, provider, _, _ = litellm.get_llm_provider(ep.litellm_model, api_base=ep.api_base)
        except Exception as e:
            raise self._fail_endpoint(ep, f"unknown model {ep.litellm_model!r}: litellm cannot tell its provider; "
                                          f"use a provider prefix such as openai/, hosted_vllm/, anthropic/ "
                                          f"({_short(e, 160)})") from None
        if not ep.api_key_env and not ep.api_base:
            try:
                missing = litellm.validate_environment(ep.litellm_model).get("missing_keys") or []
            except Exception:
                missing = []
            if missing:
                raise self._fail_endpoint(ep, f"{ep.litellm_model} needs the environment variable(s) "
                                              f"{', '.join(missing)} (or set api_key_env in the recipe)")
        if ep.api_base:
            await self._probe(ep, provider)

    async def _probe(self, ep: Endpoint, provider: str) -> None:
        url = ep.api_base.rstrip("/") + "/models"
        headers = {"Accept": "application/json"}
        key = os.environ.get(ep.api_key_env) if ep.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        host = (urllib.parse.urlparse(url).hostname or "").lower()
        local = host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if local else urllib.request.build_opener()
        timeout = self.preflight_timeout_s

        def get() -> tuple[int, bytes | str]:
            try:
                with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                    return r.status, r.read(1 << 20)
            except urllib.error.HTTPError as e:
                return e.code, b""
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                return -1, f"{type(reason).__name__}: {reason}"

        status, body = await asyncio.to_thread(get)
        if status == -1:
            raise self._fail_endpoint(ep, f"cannot reach {ep.api_base} ({body}); is the server running and the "
                                          f"api_base right?")
        if status in (401, 403):
            raise self._fail_endpoint(ep, f"{ep.api_base} rejected the API key (HTTP {status})"
                                          + (f"; check ${ep.api_key_env}" if ep.api_key_env else
                                             "; set api_key_env in the recipe"))
        if status != 200 or provider not in ("openai", "hosted_vllm"):
            return  # the server answered; an odd /models route is no reason to stop
        try:
            ids = [str(d.get("id")) for d in json.loads(body).get("data", []) if isinstance(d, dict)]
        except (ValueError, AttributeError):
            return
        served = ep.litellm_model.split("/", 1)[1] if "/" in ep.litellm_model else ep.litellm_model
        if ids and served not in ids:
            shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
            raise self._fail_endpoint(ep, f"model {served!r} is not served at {ep.api_base} (it serves: {shown})")

    # ---- one request, retried ----------------------------------------------------------
    async def _request(self, ep: Endpoint, messages: list[dict], params: dict[str, Any], usage: Usage | None):
        """One API call (n inside params if any) with limits and retries; the litellm response."""
        litellm = _litellm()
        st = self._state(ep)
        n = int(params.get("n", 1))
        estimate = _estimate_prompt_tokens(messages) + n * int(params.get("max_tokens") or DEFAULT_MAX_TOKENS_ESTIMATE)
        inline = self._inline.get(ep.name)
        if inline is None:  # first request of this endpoint
            try:
                provider = litellm.get_llm_provider(ep.litellm_model, api_base=ep.api_base)[1]
            except Exception:
                provider = None
            inline = self._inline[ep.name] = provider in _INLINE_PROVIDERS
            if provider is not None:
                self._price_known(ep.litellm_model)  # decided before the entry below exists
                _register_unpriced_model(litellm, ep.litellm_model, provider)
        attempt = 0
        while True:
            self._raise_if_fatal(ep)
            api_key = self._api_key(ep)
            err: BaseException | None = None
            resp = None
            async with st.sem:
                if st.rpm:
                    await st.rpm.acquire(1)
                if st.tpm:
                    await st.tpm.acquire(estimate)
                token = _INLINE_SETUP.set(inline)
                try:
                    # wait_for: litellm's timeout bounds each read, so a body trickling in a byte at
                    # a time would never end; this bounds the attempt as a whole.
                    resp = await asyncio.wait_for(litellm.acompletion(
                        model=ep.litellm_model, messages=messages, api_base=ep.api_base, api_key=api_key,
                        timeout=ep.timeout_s, num_retries=0, max_retries=0, caching=False, **params), timeout=ep.timeout_s)
                    if not getattr(resp, "choices", None):
                        raise _EmptyChoices("the response has no choices")
                    if any(getattr(getattr(c, "message", None), "content", None) is None for c in resp.choices):
                        raise _EmptyChoices("a choice has no content (null): not an answer, not cached")
                except asyncio.CancelledError:
                    raise
                except asyncio.TimeoutError:
                    err = _Deadline(f"no complete reply within timeout_s={ep.timeout_s:g} s")
                except Exception as e:  # classified below, outside the except block (no key-bearing context)
                    err = e
                finally:
                    _INLINE_SETUP.reset(token)
            if err is None:
                self._ever_ok.add(ep.name)
                if st.tpm:
                    u = getattr(resp, "usage", None)
                    real = (getattr(u, "prompt_tokens", 0) or 0) + (getattr(u, "completion_tokens", 0) or 0)
                    if real:
                        st.tpm.adjust(real - estimate)
                return resp

            kind = _classify(err)
            reason = self.scrub(_short(err))
            retry_after = _retry_after(err) if kind == _RETRY else None
            refused = kind == _RETRY and _is_refused(err)
            del err
            if kind == _AUTH:
                raise self._fail_endpoint(ep, (f"the API key was rejected for {ep.litellm_model}"
                                               + (f"; check ${ep.api_key_env}" if ep.api_key_env else
                                                  "; set api_key_env in the recipe")
                                               + f" ({reason})"))
            if kind == _NOTFOUND:
                where = f" at {ep.api_base}" if ep.api_base else ""
                raise self._fail_endpoint(ep, f"model {ep.litellm_model!r} not found{where} ({reason})")
            if kind == _CONFIG:
                raise self._fail_endpoint(ep, f"unknown model {ep.litellm_model!r} ({reason})")
            if kind == _QUOTA:
                raise self._fail_endpoint(ep, f"the account behind {ep.litellm_model} is out of quota ({reason})")
            if kind == _FAIL:
                if usage is not None:
                    usage.failures += 1
                raise LLMError(reason, endpoint=ep.name, attempts=attempt + 1)
            # retryable
            if retry_after is not None and retry_after > ep.max_backoff_s:
                if usage is not None:
                    usage.failures += 1
                raise LLMError(f"the server asked to retry after {retry_after:.0f} s, beyond max_backoff_s={ep.max_backoff_s:g} "
                               f"({reason})", endpoint=ep.name, attempts=attempt + 1)
            if attempt >= ep.max_retries:
                if refused and ep.name not in self._ever_ok:
                    raise self._fail_endpoint(ep, f"cannot reach {ep.api_base or ep.litellm_model}: connection "
                                                  f"refused after {attempt + 1} attempts; is the server running?")
                if usage is not None:
                    usage.failures += 1
                raise LLMError(reason, endpoint=ep.name, attempts=attempt + 1)
            if usage is not None:
                usage.retries += 1
            await asyncio.sleep(min(self._backoff(attempt, retry_after), ep.max_backoff_s))
            attempt += 1

    # ---- turning responses into completions -----------------------------------------------
    def _cost(self, ep: Endpoint, resp, prompt_tokens: int, completion_tokens: int) -> float | None:
        if ep.price is not None:  # the recipe's price wins over litellm's table
            return prompt_tokens * ep.price[0] + completion_tokens * ep.price[1]
        if self._price_known(ep.litellm_model):
            try:
                return float(_litellm().completion_cost(completion_response=resp, model=ep.litellm_model))
            except Exception:
                return None
        return None

    def _price_known(self, model: str) -> bool:
        """Whether litellm's price table has this model (not counting the door's own 0 entries)."""
        known = self._known_price.get(model)
        if known is None:
            known = False
            if model not in _DOOR_REGISTERED:
                try:
                    known = _litellm().get_model_info(model).get("input_cost_per_token") is not None
                except Exception:
                    pass
            self._known_price[model] = known
        return known

    def _account(self, ep: Endpoint, resp, messages: list[dict], usage: Usage | None) -> list[Completion]:
        choices = list(resp.choices)
        texts = []
        for c in choices:
            msg = getattr(c, "message", None)
            texts.append((getattr(msg, "content", None) or "") if msg is not None else "")
        u = getattr(resp, "usage", None)
        pt = getattr(u, "prompt_tokens", None)
        ct = getattr(u, "completion_tokens", None)
        pt = int(pt) if pt is not None else _estimate_prompt_tokens(messages)
        ct = int(ct) if ct is not None else sum(len(t) // 4 + 1 for t in texts)
        cost = self._cost(ep, resp, pt, ct)
        if usage is not None:
            usage.requests += 1
            usage.prompt_tokens += pt
            usage.completion_tokens += ct
            usage.add_cost(cost)
        # Split the request's tokens and cost over its samples (they sum back to the total).
        k = len(choices)
        pts = [pt // k + (1 if i < pt % k else 0) for i in range(k)]
        weights = [len(t) + 1 for t in texts]
        total_w = sum(weights)
        cts = [ct * w // total_w for w in weights]
        cts[0] += ct - sum(cts)
        out = []
        for i, c in enumerate(choices):
            share = None
            if cost is not None:
                share = cost * ((pts[i] + cts[i]) / (pt + ct)) if (pt + ct) else cost / k
            out.append(Completion(text=texts[i], prompt_tokens=pts[i], completion_tokens=cts[i], cost=share,
                                  cached=False, finish_reason=getattr(c, "finish_reason", None)))
        return out

    @staticmethod
    def _to_cache(c: Completion) -> dict:
        return {"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens, "cost": c.cost}

    @staticmethod
    def _from_cache(v: dict) -> Completion:
        return Completion(text=v.get("text", ""), prompt_tokens=int(v.get("prompt_tokens") or 0),
                          completion_tokens=int(v.get("completion_tokens") or 0), cost=0.0, cached=True,
                          finish_reason=v.get("finish_reason"))

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
            return self._from_cache(hit)
        self._raise_if_fatal(ep)
        st = self._state(ep)
        while (pending := st.inflight.get(key)) is not None:
            # The same request is on its way: wait for it rather than pay twice.
            await asyncio.wait({pending})  # raises only if *this* task is cancelled
            if pending.cancelled():
                continue  # its owner was cancelled: take over
            err = pending.exception()
            if err is not None:
                if usage is not None and isinstance(err, LLMError):
                    usage.failures += 1
                raise err
            c = pending.result()
            if usage is not None:
                usage.cache_hits += 1
            return Completion(text=c.text, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                              cost=0.0, cached=True, finish_reason=c.finish_reason)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        st.inflight[key] = fut
        try:
            req = dict(params)
            req["seed"] = int(params.get("seed", 0)) + sample_index
            resp = await self._request(ep, messages, req, usage)
            c = self._account(ep, resp, messages, usage)[0]
            self.cache.put(key, self._to_cache(c))
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
            st.inflight.pop(key, None)

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
                results[i] = self._from_cache(found[k])
                if usage is not None:
                    usage.cache_hits += 1
        missing = [i for i in range(n) if results[i] is None]
        if not missing:
            return results  # type: ignore[return-value]
        self._raise_if_fatal(ep)

        if n > 1 and len(missing) == n and ep.supports_n and ep.name not in self._ignores_n:
            req = dict(params)
            req["seed"] = int(params.get("seed", 0))
            req["n"] = n
            resp = await self._request(ep, messages, req, usage)
            got = self._account(ep, resp, messages, usage)[:n]
            if len(got) < n:
                self._ignores_n.add(ep.name)  # this server ignores n: separate calls from now on
            self.cache.put_many((keys[i], self._to_cache(c)) for i, c in enumerate(got))
            for i, c in enumerate(got):
                results[i] = c
            missing = [i for i in range(n) if results[i] is None]

        if missing:
            outs = await asyncio.gather(
                *(self.complete(name, messages, params, sample_index=i, usage=usage) for i in missing),
                return_exceptions=True)
            errors = [o for o in outs if isinstance(o, BaseException)]
            for e in errors:  # the fatal one first, else the first failure
                if isinstance(e, (EndpointError, asyncio.CancelledError)) or not isinstance(e, Exception):
                    raise e
            if errors:
                raise errors[0]
            for i, o in zip(missing, outs):
                results[i] = o
        return results  # type: ignore[return-value]
