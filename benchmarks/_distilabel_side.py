"""The distilabel half of benchmarks/vs_distilabel.py; runs inside .cache/bench-distilabel-venv.

    python _distilabel_side.py PROMPTS.json API_BASE CONCURRENCY MAX_TOKENS CACHE_DIR

A distilabel 1.5.3 Pipeline as its docs show: LoadDataFromDicts >> TextGeneration with the
OpenAI-compatible `OpenAILLM` (base_url = the loopback endpoint). Concurrency is distilabel's
own: an async LLM sends a whole input batch at once, so `input_batch_size` = C. Prints one
JSON line: rows generated, failures, seconds for `pipeline.run`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main() -> None:
    prompts_path, api_base, concurrency, max_tokens, cache_dir = sys.argv[1:6]
    prompts = json.loads(open(prompts_path).read())
    C = int(concurrency)

    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    with Pipeline(name="bench-vs-orca", cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=C)
        generate = TextGeneration(
            llm=OpenAILLM(model="fake", base_url=api_base, api_key="EMPTY", timeout=120, max_retries=3,
                          generation_kwargs={"temperature": 0.0, "max_new_tokens": int(max_tokens)}),
            input_batch_size=C,
        )
        load >> generate

    t = time.perf_counter()
    distiset = pipeline.run(use_cache=False, logging_handlers=[logging.NullHandler()])
    seconds = time.perf_counter() - t
    rows = distiset["default"]["train"]
    ok = sum(1 for g in rows["generation"] if g)
    print(json.dumps({"rows": len(rows), "generated": ok, "failed": len(rows) - ok, "seconds": seconds}))


if __name__ == "__main__":
    main()
