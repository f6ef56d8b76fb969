"""Axolotl training stages: SFT on the teacher's solutions, then KTO/DPO on preferences.

The stage writes its training rows and the rendered Axolotl YAML into its folder, runs
`axolotl train` (resuming from the newest checkpoint after a crash) and hands the finished
model folder to the stages downstream. A LoRA/QLoRA adapter is trained into `adapter/` and
merged into the base (`axolotl merge-lora`) as `output/`: the next stages serve a plain
model folder with the same vLLM code as after full fine-tuning.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from orca_recipe.errors import UserError
from orca_recipe.llm.hardware import gpu_count
from orca_recipe.recipe.compile import TrainerSetup
from orca_recipe.stages.base import Row, StageContext, StageResult
from orca_recipe.stages.student import student_messages
from orca_recipe.store import atomic_write_text, write_jsonl
from orca_recipe.train.config import DEEPSPEED_FILE, PROGRESS_PLUGIN, with_plugin, without_gpu
from orca_recipe.train.deepspeed import write_deepspeed_config
from orca_recipe.train.launch import is_model_folder, latest_checkpoint, run_axolotl


def sft_rows(ctx: StageContext, solved: list[Row]) -> list[Row]:
    return [
        {"id": r["id"], "messages": [*student_messages(ctx, r["question"]), {"role": "assistant", "content": r["solution"]}]}
        for r in solved
    ]


def _ensure_base_model(ctx: StageContext) -> None:
    local = ctx.stage.student
    if local is not None and local.embedded:
        from orca_recipe.llm.embedded import ensure_embedded_model

        ensure_embedded_model(local.embedded)


def kto_weights(rows: list[Row], cfg: dict) -> dict:
    """Balance KTO's two losses when the recipe does not: the KTO paper (Ethayarajh et al.
    2024, §4) keeps desirable_weight x #desirable / (undesirable_weight x #undesirable) in
    [1, 4/3]. A weak student's practice is mostly wrong, so unweighted KTO would mostly push
    away from its own mistakes and barely toward correct solutions."""
    if "kto_desirable_weight" in cfg or "kto_undesirable_weight" in cfg:
        return {}
    good = sum(1 for r in rows if r.get("label") is True)
    bad = sum(1 for r in rows if r.get("label") is False)
    if good == 0 or bad <= good:
        return {}
    return {"kto_desirable_weight": round(bad / good, 3)}


def drop_resume_checkpoints(output: Path) -> int:
    """Remove Axolotl's `checkpoint-N` folders once the final model is saved; return bytes freed.

    They exist only to resume a crashed run and hold optimizer state (about 3x the weights:
    1.6 GB for a 135M model in float32), so a finished run would otherwise keep 4x its models.
    """
    freed = 0
    for ckpt in output.glob("checkpoint-*"):
        if ckpt.is_dir():
            freed += sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
            shutil.rmtree(ckpt)
    return freed


def merge_adapter(config: Path, adapter_dir: Path, model_dir: Path, launcher, log: Path) -> None:
    """Merge the trained adapter into its base with Axolotl's own `merge-lora` (written to
    `adapter/merged`) and move the result to `model_dir`, replacing an older one."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"axolotl finished but {adapter_dir} holds no adapter (adapter_config.json); see {log}")
    merged = adapter_dir / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    run_axolotl(config, launcher, log, merge=True)
    if not is_model_folder(merged):
        raise UserError(f"axolotl merge-lora wrote no model to {merged}; see {log}")
    shutil.rmtree(model_dir, ignore_errors=True)
    merged.rename(model_dir)


async def run(ctx: StageContext) -> StageResult:
    tr: TrainerSetup = ctx.section
    assert tr is not None and ctx.stage.trainer_config is not None
    cfg = dict(ctx.stage.trainer_config)
    out_dir = ctx.out_dir
    if ctx.stage.kind == "sft":
        _ensure_base_model(ctx)
        rows = sft_rows(ctx, ctx.inputs["filter"])
        write_jsonl(Path(cfg["datasets"][0]["path"]), rows)
    else:
        rows = [{"id": r["id"]} for r in ctx.inputs[ctx.stage.inputs[0]]]
        base = Path(cfg["base_model"])
        if not is_model_folder(base):
            raise UserError(f"{ctx.stage.name}: the model to continue from is missing: {base}")
    if not rows:
        raise UserError(f"{ctx.stage.name}: no training rows (every problem was rejected or failed upstream); see the previous stages' rejects.jsonl")
    if cfg.get("rl") == "kto":
        cfg.update(kto_weights(ctx.inputs[ctx.stage.inputs[0]], cfg))
    if gpu_count() == 0:
        cfg.update(without_gpu(cfg))
    cfg.update(with_plugin(cfg, PROGRESS_PLUGIN))  # progress from the trainer's state: not in the fingerprint
    output = Path(cfg["output_dir"])
    model_dir = out_dir / "output"  # == output without an adapter
    resumed = latest_checkpoint(output)
    if tr.distributed.deepspeed:
        write_deepspeed_config(tr.distributed.deepspeed, out_dir / DEEPSPEED_FILE)
    config_path = out_dir / "axolotl.yaml"
    atomic_write_text(config_path, yaml.safe_dump(cfg, sort_keys=False))

    done = [0]

    def on_step(step: int, total: int) -> None:
        ctx.set_total(total)
        if step > done[0]:
            ctx.advance(step - done[0])
            done[0] = step

    t = time.monotonic()
    run_axolotl(config_path, tr.launcher, out_dir / "train.log", on_step)
    train_seconds = time.monotonic() - t
    freed = drop_resume_checkpoints(output)
    merge_seconds = None
    if cfg.get("adapter"):
        t = time.monotonic()
        merge_adapter(config_path, output, model_dir, tr.launcher, out_dir / "train.log")
        merge_seconds = round(time.monotonic() - t, 1)
    if not is_model_folder(model_dir):
        raise UserError(f"{ctx.stage.name}: axolotl finished but {model_dir} holds no model; see {out_dir / 'train.log'}")
    report: dict[str, Any] = {"checkpoint": str(model_dir), "train_rows": len(rows), "steps": done[0], "train_seconds": round(train_seconds, 1),
              **({"adapter": str(output), "merge_seconds": merge_seconds} if cfg.get("adapter") else {}),
              "resumed_from": str(resumed) if resumed else None, "resume_checkpoints_removed_bytes": freed,
              **{k: cfg[k] for k in ("kto_desirable_weight", "kto_undesirable_weight") if k in cfg}}
    return StageResult(rows=rows, report=report)
