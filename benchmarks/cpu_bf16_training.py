"""bf16 against float32 SFT on this CPU, through the product (Axolotl, the tiny recipe's SFT).

Run: .venv/bin/python benchmarks/cpu_bf16_training.py [--steps 8] [--rows 64]

Trains the embedded SmolLM2-135M twice on the same rows, the same seed and the same steps:
once as tiny.yaml ships it (float32), once with `training.sft.axolotl.bf16=true` (bf16
autocast; on a machine without a GPU the product adds its Axolotl plugin that sets the
trainer's `use_cpu`). Prints, beside the CPU line: seconds per step (from the trainer's own
log history, the first step left out: it includes warm-up) and the loss at every step of
each. The verdict is the CPU's: bf16 pays where the CPU has it in hardware (avx512_bf16,
AMX); where it is emulated (AVX2 only) it is slower. Take it alone: nothing else on the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from orca_recipe.llm.hardware import cpu_info  # noqa: E402
from orca_recipe.recipe.compile import compile_file  # noqa: E402
from orca_recipe.stages import train  # noqa: E402
from orca_recipe.stages.base import StageContext  # noqa: E402


def gsm8k_rows(path: Path, n: int) -> list[dict]:
    """The first `n` GSM8K train problems as solved rows (the worked solution, as tiny.yaml's SFT uses)."""
    rows = []
    with path.open() as f:
        for i, line in zip(range(n), f):
            r = json.loads(line)
            rows.append({"id": f"p{i}", "question": r["question"], "solution": r["answer"], "final_answer": r["answer"].rsplit("####", 1)[-1].strip()})
    return rows


def one(dtype: str, steps: int, rows: list[dict], root: Path) -> dict:
    sets = [f"training.sft.axolotl.max_steps={steps}", f"training.checkpoint_every_steps={steps}",
            "training.sft.axolotl.save_total_limit=1"]
    if dtype == "bf16":
        sets.append("training.sft.axolotl.bf16=true")
    run_dir = root / dtype
    plan = compile_file(REPO / "recipes" / "tiny.yaml", sets, run_dir=run_dir)
    ctx = StageContext(stage=plan.stage("sft"), inputs={"filter": rows}, out_dir=run_dir / "sft")
    result = asyncio.run(train.run(ctx))
    log = (run_dir / "sft" / "train.log").read_text(errors="replace")
    losses = [json.loads(line.replace("'", '"'))["loss"] for line in log.splitlines() if line.startswith("{'loss'")]
    return {"dtype": dtype, "steps": result.report["steps"], "train_seconds": result.report["train_seconds"], "loss": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rows", type=int, default=64)
    args = ap.parse_args()
    rows = gsm8k_rows(REPO / "data" / "gsm8k" / "train.jsonl", args.rows)
    print(f"CPU: {cpu_info().describe()}")
    with tempfile.TemporaryDirectory(prefix="bf16-bench-") as tmp:
        results = [one(d, args.steps, rows, Path(tmp)) for d in ("float32", "bf16")]
    for r in results:
        print(f"{r['dtype']:>8}: {r['steps']} steps in {r['train_seconds']:.1f} s ({r['train_seconds'] / max(r['steps'], 1):.1f} s/step, "
              f"Axolotl start-up included); loss by step: {', '.join(str(x) for x in r['loss'])}")
    f32, b16 = results
    print(f"bf16 / float32 time: {b16['train_seconds'] / f32['train_seconds']:.2f}x")


if __name__ == "__main__":
    main()
