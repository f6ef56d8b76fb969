"""The distilabel half of benchmarks/vs_distilabel.py; runs inside .cache/bench-distilabel-venv.

    python _distilabel_side.py PROMPTS.json API_BASE SETTINGS_JSON CACHE_DIR

A distilabel 1.5.3 Pipeline as its docs show: LoadDataFromDicts >> TextGeneration with the
OpenAI-compatible `OpenAILLM` (base_url = the loopback endpoint). SETTINGS_JSON holds the knobs
benchmarks/vs_distilabel.py chose (and prints), applied here verbatim:

    replicas          TextGeneration's `resources=StepResources(replicas=...)`: processes running the step
    input_batch_size  rows per batch; an async LLM sends a batch's requests at once and waits for all
    load_batch_size   LoadDataFromDicts' `batch_size`
    max_retries, timeout   OpenAILLM's (its openai client retries 429s, honouring Retry-After)
    generation_kwargs      OpenAILLM's (temperature, max_new_tokens)

Prints one JSON line: rows generated, failures, seconds for `pipeline.run`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def build(prompts: list[str], api_base: str, s: dict, cache_dir: str):
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts, StepResources
    from distilabel.steps.tasks import TextGeneration

    with Pipeline(name="bench-vs-orca", cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=s["load_batch_size"])
        generate = TextGeneration(
            llm=OpenAILLM(model="fake", base_url=api_base, api_key="EMPTY", timeout=s["timeout"],
                          max_retries=s["max_retries"], generation_kwargs=s["generation_kwargs"]),
            input_batch_size=s["input_batch_size"],
            resources=StepResources(replicas=s["replicas"]),
        )
        load >> generate
    return pipeline


def main() -> None:
    prompts_path, api_base, settings, cache_dir = sys.argv[1:5]
    prompts = json.loads(open(prompts_path).read())
    pipeline = build(prompts, api_base, json.loads(settings), cache_dir)
    t = time.perf_counter()
    distiset = pipeline.run(use_cache=False, logging_handlers=[logging.NullHandler()])
    seconds = time.perf_counter() - t
    rows = distiset["default"]["train"]
    ok = sum(1 for g in rows["generation"] if g)
    print(json.dumps({"rows": len(rows), "generated": ok, "failed": len(rows) - ok, "seconds": seconds}))


if __name__ == "__main__":
    main()
