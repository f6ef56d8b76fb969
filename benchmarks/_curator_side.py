"""The curator half of benchmarks/vs_distilabel.py; runs inside .cache/bench-curator-venv.

    python _curator_side.py PROMPTS.json API_BASE SETTINGS_JSON CACHE_DIR

bespokelabs-curator as its README shows for an OpenAI-compatible server: `curator.LLM(...,
backend="openai", backend_params={"base_url": ..., "api_key": ...})` (its own aiohttp client;
the README points OpenAI-compatible APIs there, and `litellm` is the fallback for other
providers). SETTINGS_JSON holds `generation_params` and the `backend_params` that
benchmarks/vs_distilabel.py chose (and prints), applied here verbatim (plus base_url, api_key):
`max_concurrent_requests` = C; `max_requests_per_minute` / `max_tokens_per_minute` far above
reach (its rate limiter is a token bucket; with no rate-limit headers from the endpoint it
falls back to 200 requests and 100k tokens a minute, and it reserves 4,096 output tokens per
request for a model litellm does not know), so C alone bounds it; `max_retries`,
`request_timeout`; `seconds_to_pause_on_rate_limit` (after a 429 curator sends nothing new for
that long). Its cache lives in
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


def offline_env(cache_dir: str) -> None:
    """Before curator is imported: no network but the endpoint, no cache from another round."""
    os.environ.update(TELEMETRY_ENABLED="false", CURATOR_VIEWER="0", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      LITELLM_LOCAL_MODEL_COST_MAP="True", CURATOR_CACHE_DIR=cache_dir)
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        spec = importlib.util.find_spec("litellm")
        if spec and spec.origin:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(spec.origin).parent / "litellm_core_utils" / "tokenizers")


def main() -> None:
    prompts_path, api_base, settings, cache_dir = sys.argv[1:5]
    prompts = json.loads(open(prompts_path).read())
    s = json.loads(settings)
    offline_env(cache_dir)

    from bespokelabs import curator

    llm = curator.LLM(
        model_name="fake",
        backend="openai",
        generation_params=s["generation_params"],
        backend_params={"base_url": api_base, "api_key": "EMPTY", **s["backend_params"]},
    )

    t = time.perf_counter()
    response = llm(prompts)
    seconds = time.perf_counter() - t
    rows = response.dataset
    ok = sum(1 for r in rows["response"] if r)
    print(json.dumps({"rows": len(rows), "generated": ok, "failed": len(prompts) - ok, "seconds": seconds}))


if __name__ == "__main__":
    main()
