"""Before any work: can this endpoint answer at all? (key set, provider known, server up, model served)

Returns what is wrong, in words, or None; the door turns it into an `EndpointError` (exit 2).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request

from orca_recipe.llm.endpoint import Endpoint, is_loopback
from orca_recipe.llm.errors import server_words


def missing_key_message(ep: Endpoint) -> str:
    return (f"environment variable {ep.api_key_env} is not set; it must hold the API key for "
            f"{ep.litellm_model} (the recipe names only the variable, never the key)")


async def problem(ep: Endpoint, timeout_s: float) -> str | None:
    """What stops `ep` from working, or None. Endpoints with an api_base are asked
    ``GET {api_base}/models``; hosted providers are checked for their key variables."""
    if ep.api_key_env and not os.environ.get(ep.api_key_env):
        return missing_key_message(ep)
    if not ep.native:
        from orca_recipe.llm.transport import litellm

        lt = litellm()
        try:
            lt.get_llm_provider(ep.litellm_model, api_base=ep.api_base)
        except Exception as e:
            return (f"unknown model {ep.litellm_model!r}: litellm cannot tell its provider; use a provider "
                    f"prefix such as openai/, hosted_vllm/, anthropic/ ({type(e).__name__}: {server_words(str(e), 160)})")
        if not ep.api_key_env and not ep.api_base:
            try:
                missing = lt.validate_environment(ep.litellm_model).get("missing_keys") or []
            except Exception:
                missing = []
            if missing:
                return f"{ep.litellm_model} needs the environment variable(s) {', '.join(missing)} (or set api_key_env in the recipe)"
    if ep.api_base:  # every replica must answer: a dead one is a typo or a server that did not start
        problems = await asyncio.gather(*(_probe(ep, base, timeout_s) for base in ep.bases))
        return next((p for p in problems if p), None)
    return None


async def _probe(ep: Endpoint, api_base: str, timeout_s: float) -> str | None:
    url = api_base.rstrip("/") + "/models"
    headers = {"Accept": "application/json"}
    key = os.environ.get(ep.api_key_env) if ep.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    opener = (urllib.request.build_opener(urllib.request.ProxyHandler({})) if is_loopback(api_base)
              else urllib.request.build_opener())

    def get() -> tuple[int, bytes | str]:
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout_s) as r:
                return r.status, r.read(1 << 20)
        except urllib.error.HTTPError as e:
            return e.code, b""
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            return -1, f"{type(reason).__name__}: {reason}"

    status, body = await asyncio.to_thread(get)
    if status == -1:
        return f"cannot reach {api_base} ({body!s}); is the server running and the api_base right?"
    if status in (401, 403):
        return (f"{api_base} rejected the API key (HTTP {status})"
                + (f"; check ${ep.api_key_env}" if ep.api_key_env else "; set api_key_env in the recipe"))
    if status != 200 or ep.provider not in ("openai", "hosted_vllm"):
        return None  # the server answered; an odd /models route is no reason to stop
    try:
        ids = [str(d.get("id")) for d in json.loads(body).get("data", []) if isinstance(d, dict)]
    except (ValueError, AttributeError):
        return None
    if ids and ep.served_model not in ids:
        shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
        return f"model {ep.served_model!r} is not served at {api_base} (it serves: {shown})"
    return None
