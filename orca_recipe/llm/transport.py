"""Sending one chat completion and reading the answer; nothing else (no retries, no cache).

Two transports, one contract: ``await t.send(messages, params, api_key) -> Reply``, or a
`Failure` saying what went wrong and what the door should do about it.

- `OpenAICompatible`: for OpenAI-compatible servers with an ``api_base`` (vLLM, the embedded
  model's server, OpenAI itself, any ``openai/`` or ``hosted_vllm/`` model). One pooled
  aiohttp session per endpoint and event loop (connection limit = the model's concurrency),
  ``POST {api_base}/chat/completions``, the JSON read with orjson. About 0.2 ms of CPU a
  request, against ~3 ms through litellm: on a small machine the client, not the server, was
  what bounded throughput.
- `LiteLLM`: every other provider (Anthropic, Bedrock, Vertex, ...), through
  ``litellm.acompletion``, its public API; litellm is imported on first use only.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from orca_recipe.llm.endpoint import Endpoint
from orca_recipe.llm.errors import AUTH, CONFIG, FAIL, NOTFOUND, QUOTA, RETRY, Failure, http_failure, kind_of_status, retry_after, server_words

REPLICA_REST_S = 5.0  # a replica that refused a connection gets no requests for this long (if others are up)
MAX_REPLY_BYTES = 32 * 2**20  # one reply's body, decompressed: ~100x the longest completion a request can ask for


@dataclass
class Reply:
    """One answered request: a text per choice, and the tokens the server counted (None: not said)."""

    texts: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int | None
    completion_tokens: int | None


def read_choices(choices: Any) -> tuple[list[str], list[str | None]]:
    """Texts and finish reasons out of an OpenAI ``choices`` list; a `Failure` (retried, never
    cached) when there is none, or a choice carries no text."""
    if not isinstance(choices, list) or not choices:
        raise Failure(RETRY, "the response has no choices")
    texts, reasons = [], []
    for c in choices:
        msg = c.get("message") if isinstance(c, dict) else None
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, str):
            raise Failure(RETRY, "a choice has no content (null): not an answer, not cached")
        texts.append(content)
        reasons.append(c.get("finish_reason"))
    return texts, reasons


MAX_TOKENS_REPORTED = 10**9  # one reply's tokens: a larger count is a server's bug, not usage


def token_count(v: Any) -> int | None:
    """A usage count as the server sent it, if it is a sane one: a non-negative whole number
    below MAX_TOKENS_REPORTED; None (unknown, then estimated) for anything else, so a negative
    or absurd count never turns into negative or absurd cost."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and (v != v or not v.is_integer()):
        return None
    return int(v) if 0 <= v < MAX_TOKENS_REPORTED else None


# ---------------------------------------------------------------------------------------------
class OpenAICompatible:
    """The door's own client for an OpenAI-compatible ``api_base``; one per endpoint and loop."""

    def __init__(self, ep: Endpoint):
        import aiohttp
        import orjson

        self.ep = ep
        self._aiohttp = aiohttp
        self._orjson = orjson
        self.urls = [b.rstrip("/") + "/chat/completions" for b in ep.bases]
        self.in_flight = [0] * len(self.urls)      # per replica
        self.down_until = [0.0] * len(self.urls)   # a replica that refused a connection rests a while
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, ep.concurrency) * len(self.urls), limit_per_host=max(1, ep.concurrency)),
            timeout=aiohttp.ClientTimeout(total=ep.timeout_s),  # a deadline for the whole reply, body included
            trust_env=not ep.is_loopback,  # proxies from the environment, never for our own local server
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    def pick(self) -> int:
        """The replica with the most free slots (the fewest requests in flight), skipping resting ones."""
        if len(self.urls) == 1:
            return 0
        now = time.monotonic()
        up = [i for i in range(len(self.urls)) if self.down_until[i] <= now] or list(range(len(self.urls)))
        return min(up, key=lambda i: self.in_flight[i])

    async def send(self, messages: list[dict], params: dict[str, Any], api_key: str | None) -> Reply:
        aiohttp, orjson = self._aiohttp, self._orjson
        body = orjson.dumps({"model": self.ep.served_model, "messages": messages, **params})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key or 'EMPTY'}"}
        i = self.pick()
        self.in_flight[i] += 1
        try:
            # A redirect is not an answer (and would carry the key elsewhere): it fails as its status.
            async with self.session.post(self.urls[i], data=body, headers=headers, allow_redirects=False) as resp:
                status, hdrs = resp.status, resp.headers
                raw = await bounded_body(resp)
        except asyncio.TimeoutError:
            raise Failure(RETRY, f"no complete reply within timeout_s={self.ep.timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as e:
            refused = isinstance(e.os_error, ConnectionRefusedError)
            if len(self.urls) > 1:
                self.down_until[i] = time.monotonic() + REPLICA_REST_S
            raise Failure(RETRY, f"cannot connect to {self.ep.bases[i]} ({type(e.os_error).__name__})",
                          refused=refused) from None
        except (aiohttp.ClientError, OSError) as e:  # dropped connection, broken body, reset
            raise Failure(RETRY, f"{type(e).__name__}: {str(e)[:160]}") from None
        finally:
            self.in_flight[i] -= 1
        if 300 <= status < 400:
            raise Failure(FAIL, f"HTTP {status}: a redirect to {str(hdrs.get('Location'))[:200]!r} is not an answer; point api_base there")
        if status != 200:
            raise http_failure(status, raw[:4096].decode("utf-8", "replace"), hdrs)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Failure(RETRY, f"HTTP 200 but the body is not JSON ({len(raw)} bytes)") from None
        if not isinstance(data, dict):
            raise Failure(RETRY, "HTTP 200 but the body is not a JSON object")
        texts, reasons = read_choices(data.get("choices"))
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return Reply(texts, reasons, token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens")))

    async def aclose(self) -> None:
        await self.session.close()


async def bounded_body(resp: Any, limit: int = MAX_REPLY_BYTES, what: str = "a completion") -> bytes:
    """The reply's body as it arrives (decompressed), refused past `limit` bytes: a server that
    streams without end, or a compressed bomb, costs one failed request, not the memory."""
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise Failure(FAIL, f"the reply is over {limit // 2**20} MiB: not {what}")
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
_litellm_mod = None


def litellm():
    """litellm, imported once, quietly, with its own retries and caching off (the door has its own)."""
    global _litellm_mod
    if _litellm_mod is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm as mod

        mod.telemetry = False
        mod.drop_params = True
        mod.num_retries = 0
        mod.suppress_debug_info = True
        _litellm_mod = mod
    return _litellm_mod


class LiteLLM:
    """Any provider litellm knows, through ``litellm.acompletion``."""

    def __init__(self, ep: Endpoint):
        self.ep = ep

    async def send(self, messages: list[dict], params: dict[str, Any], api_key: str | None) -> Reply:
        lt = litellm()
        try:
            # litellm's `timeout` bounds each read, so a reply that trickles in never ends there:
            # the whole reply gets the same deadline as on the door's own client
            resp = await asyncio.wait_for(
                lt.acompletion(model=self.ep.litellm_model, messages=messages, api_base=self.ep.api_base, api_key=api_key,
                               timeout=self.ep.timeout_s, num_retries=0, max_retries=0, caching=False, **params),
                timeout=self.ep.timeout_s)
        except asyncio.TimeoutError:
            failure = Failure(RETRY, f"no whole reply within timeout_s={self.ep.timeout_s:g} s (litellm)")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # classified here, raised outside this block (no key-bearing context)
            failure = classify_litellm(e)
        else:
            data = resp.model_dump() if hasattr(resp, "model_dump") else dict(resp)
            texts, reasons = read_choices(data.get("choices"))
            usage = data.get("usage") or {}
            return Reply(texts, reasons, token_count(usage.get("prompt_tokens")),
                         token_count(usage.get("completion_tokens")))
        raise failure

    async def aclose(self) -> None:
        return None


def classify_litellm(e: BaseException) -> Failure:
    """litellm's exception classes (its public API) in the door's terms."""
    lt = litellm()
    msg = str(e)
    low = msg.lower()
    status = getattr(e, "status_code", None)
    status = status if isinstance(status, int) else None
    reason = f"{type(e).__name__}" + (f" (HTTP {status})" if status and status not in (200, 408, 500) else "") + \
        f": {server_words(msg)}"
    headers = getattr(e, "litellm_response_headers", None) or getattr(getattr(e, "response", None), "headers", None)

    def f(kind: str) -> Failure:
        return Failure(kind, reason, status=status, retry_after=retry_after(headers) if kind == RETRY else None,
                       refused="connection refused" in low or "connect call failed" in low)

    if isinstance(e, (asyncio.TimeoutError, TimeoutError, lt.Timeout)):
        return Failure(RETRY, f"no complete reply within timeout_s={getattr(e, 'timeout', None) or '?'} s")
    if isinstance(e, (lt.AuthenticationError, lt.PermissionDeniedError)):
        return f(AUTH)
    if isinstance(e, lt.NotFoundError):
        return f(NOTFOUND)
    if isinstance(e, lt.RateLimitError):
        return f(QUOTA if "insufficient_quota" in low or "exceeded your current quota" in low else RETRY)
    if isinstance(e, (lt.APIConnectionError, lt.InternalServerError, lt.ServiceUnavailableError, lt.BadGatewayError,
                      lt.APIResponseValidationError)):
        return f(RETRY)
    if isinstance(e, lt.BadRequestError):
        if "llm provider not provided" in low or isinstance(e, getattr(lt, "LiteLLMUnknownProvider", ())):
            return f(CONFIG)
        return f(FAIL)
    if isinstance(e, lt.UnprocessableEntityError):
        return f(FAIL)
    if status is not None:
        return f(kind_of_status(status, msg))
    if isinstance(e, (lt.APIError, OSError, ValueError)):
        return f(RETRY)
    raise e  # a programming error: let it raise


def transport_for(ep: Endpoint) -> OpenAICompatible | LiteLLM:
    return OpenAICompatible(ep) if ep.native else LiteLLM(ep)
