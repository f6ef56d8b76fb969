"""The curator half of benchmarks/vs_distilabel.py; runs inside .cache/bench-curator-venv.

    python _curator_side.py PROMPTS.json API_BASE CONCURRENCY MAX_TOKENS CACHE_DIR

bespokelabs-curator as its README shows for an OpenAI-compatible server: `curator.LLM(...,
backend="openai", backend_params={"base_url": ..., "api_key": ...})` (its own aiohttp client;
the README points OpenAI-compatible APIs there, and `litellm` is the fallback for other
providers). Concurrency is curator's `max_concurrent_requests` = C. Its rate limiter is a
token bucket that starts with one request of capacity and refills at rpm/60 per second; with
no rate-limit headers from the endpoint it would fall back to 200 requests and 100k tokens a
minute (and it reserves 4,096 output tokens per request for a model litellm does not know),
so both limits are set far above anything reachable: C alone bounds it. Its cache lives in
CURATOR_CACHE_DIR; the caller passes a fresh, empty CACHE_DIR each round so no round reads
responses an earlier one stored.

Offline: telemetry (PostHog) off, the hosted viewer off, Hugging Face datasets offline,
litellm's bundled cost map; curator counts prompt tokens with tiktoken's cl100k_base, which
would be downloaded unless TIKTOKEN_CACHE_DIR holds it, so it points at the copy litellm ships
in this venv (what litellm itself does when imported).

Prints one JSON line: rows generated, failures, seconds for the `llm(prompts)` call.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

HUGE = 10**12  # requests / tokens a minute: never the binding limit


def offline_env(cache_dir: str) -> None:
    """Before curator is imported: no network but the endpoint, no cache from another round."""
    os.environ.update(TELEMETRY_ENABLED="false", CURATOR_VIEWER="0", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      LITELLM_LOCAL_MODEL_COST_MAP="True", CURATOR_CACHE_DIR=cache_dir)
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        spec = importlib.util.find_spec("litellm")
        if spec and spec.origin:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(spec.origin).parent / "litellm_core_utils" / "tokenizers")


def main() -> None:
    prompts_path, api_base, concurrency, max_tokens, cache_dir = sys.argv[1:6]
    prompts = json.loads(open(prompts_path).read())
    C = int(concurrency)
    offline_env(cache_dir)

    from bespokelabs import curator

    llm = curator.LLM(
        model_name="fake",
        backend="openai",
        generation_params={"temperature": 0.0, "max_tokens": int(max_tokens)},
        backend_params={"base_url": api_base, "api_key": "EMPTY", "max_concurrent_requests": C,
                        "max_requests_per_minute": HUGE, "max_tokens_per_minute": HUGE,
                        "max_retries": 3, "request_timeout": 120, "require_all_responses": False},
    )

    t = time.perf_counter()
    response = llm(prompts)
    seconds = time.perf_counter() - t
    rows = response.dataset
    ok = sum(1 for r in rows["response"] if r)
    print(json.dumps({"rows": len(rows), "generated": ok, "failed": len(prompts) - ok, "seconds": seconds}))


if __name__ == "__main__":
    main()
