"""Axolotl YAML for the SFT and preference stages: computed defaults, then the recipe's mapping.

The defaults carry what the Orca-Math paper states (1 epoch, no packing, loss on the
answer only) and dataset forms that Axolotl 0.19 accepts; everything else is the
recipe's to override under `training.sft.axolotl` / `training.preference.axolotl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orca_recipe.mapping import deep_merge

if TYPE_CHECKING:  # the recipe package imports this one, not the other way round
    from orca_recipe.recipe.schema import Distributed

DEEPSPEED_FILE = "deepspeed.json"  # written into the stage folder by the training stage
# LoRA defaults where the recipe sets `adapter` but not these (Axolotl's example configs).
LORA_DEFAULTS = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}


def output_dir(stage_dir: Path, overrides: dict[str, Any]) -> Path:
    """Where Axolotl writes: `output` holds the model the next stages serve; an adapter is
    trained into `adapter` and merged into `output` afterwards."""
    return stage_dir / ("adapter" if overrides.get("adapter") else "output")


# Axolotl 0.19 switches these on for every LoRA unless set; they are Triton kernels that only
# run on CUDA ("Torch not compiled with CUDA enabled" on a CPU) and compute the same result.
LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


CPU_PLUGIN = "orca_cpu_training.CPUTraining"  # train/axolotl_plugin/orca_cpu_training.py
PROGRESS_PLUGIN = "orca_progress.Progress"  # train/axolotl_plugin/orca_progress.py
PLUGIN_DIR = Path(__file__).resolve().parent / "axolotl_plugin"  # on the trainer's PYTHONPATH


def without_gpu(cfg: dict[str, Any]) -> dict[str, Any]:
    """Keys a machine without a GPU needs on top of `cfg`: the LoRA kernels off, unless the
    recipe set them, and, for bf16 training, the plugin that gives the trainer `use_cpu`
    (transformers refuses bf16 without a GPU otherwise). Applied when the stage runs, not in
    the plan: they make the same training run on a CPU, so the fingerprint stays the same."""
    keys: dict[str, Any] = {}
    if cfg.get("adapter"):
        keys.update({k: False for k in LORA_KERNELS if cfg.get(k) is None})
    if cfg.get("bf16") in (True, "full") or cfg.get("bfloat16") is True:
        keys.update(with_plugin(cfg, CPU_PLUGIN))
    return keys


def with_plugin(cfg: dict[str, Any], plugin: str) -> dict[str, Any]:
    """{"plugins": the config's own plugins, then `plugin`} (once)."""
    return {"plugins": [*[p for p in cfg.get("plugins") or [] if p != plugin], plugin]}


def scale_keys(stage_dir: Path, overrides: dict[str, Any], distributed: "Distributed | None") -> dict[str, Any]:
    """Axolotl keys for an adapter and for sharded training; the recipe's own keys still win."""
    cfg: dict[str, Any] = {}
    if overrides.get("adapter"):
        cfg.update(LORA_DEFAULTS)
        if "lora_target_modules" not in overrides:
            cfg["lora_target_linear"] = True
        if overrides["adapter"] == "qlora":
            cfg["load_in_4bit"] = True
    if distributed is not None and distributed.deepspeed:
        cfg["deepspeed"] = str(stage_dir / DEEPSPEED_FILE)
    if distributed is not None and distributed.fsdp:
        fsdp = distributed.fsdp.model_dump(exclude_none=True)
        cfg["fsdp_version"] = fsdp.pop("version")
        cfg["fsdp_config"] = fsdp
    return cfg


def resume_keys(every_steps: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints every `every_steps` steps (mid-epoch), unless the recipe's own Axolotl block
    says how to save (Axolotl refuses save_steps beside saves_per_epoch)."""
    if any(k in overrides for k in ("save_steps", "saves_per_epoch", "save_strategy")):
        return {}
    return {"save_steps": every_steps}


def _common(base_model: str, output_dir: str, prepared_dir: str) -> dict[str, Any]:
    return {
        "base_model": base_model,
        "chat_template": "tokenizer_default",
        "output_dir": output_dir,
        "dataset_prepared_path": prepared_dir,
        "val_set_size": 0.0,
        "sequence_len": 2048,
        "sample_packing": False,  # paper: no packing
        "pad_to_sequence_len": False,
        "num_epochs": 1,  # paper: 1 epoch
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 4,
        "optimizer": "adamw_torch",
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.03,
        "bf16": "auto",
        "logging_steps": 1,
        "save_total_limit": 2,  # + save_steps from the recipe (resume_keys)
        "auto_resume_from_checkpoints": True,  # a crashed run resumes from output_dir/checkpoint-N
        "seed": 42,
    }


def sft_config(base_model: str, data_path: str, output_dir: str, prepared_dir: str, overrides: dict[str, Any],
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`extra` (from `scale_keys`) goes under the recipe's own keys."""
    cfg = _common(base_model, output_dir, prepared_dir) | (extra or {})
    cfg.update(
        {
            "datasets": [
                {
                    "path": data_path,
                    "ds_type": "json",
                    "type": "chat_template",
                    "field_messages": "messages",
                    "roles_to_train": ["assistant"],  # paper: loss on the answer tokens only
                }
            ],
            "train_on_inputs": False,
            "learning_rate": 1e-5,
        }
    )
    return deep_merge(cfg, overrides)


def preference_config(
    kind: str, base_model: str, data_path: str, output_dir: str, prepared_dir: str, overrides: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = _common(base_model, output_dir, prepared_dir) | (extra or {})
    if kind == "dpo":
        dataset: dict[str, Any] = {
            "path": data_path,
            "ds_type": "json",
            "split": "train",
            "type": "chat_template.default",
            "field_messages": "prompt",
            "field_chosen": "chosen",
            "field_rejected": "rejected",
        }
        cfg.update({"rl": "dpo", "rl_beta": 0.1})
    else:
        # The preferences stage writes `prompt` already rendered with the student's own chat
        # template (as SFT, serving and eval see it) and `completion` with its end-of-turn
        # tokens; a fixed ChatML format here would train on another prompt than the one served.
        dataset = {"path": data_path, "ds_type": "json", "split": "train",
                   "type": {"field_prompt": "prompt", "field_completion": "completion", "field_label": "label",
                            "prompt_format": "{prompt}", "completion_format": "{completion}"}}
        cfg.update({"rl": "kto", "rl_beta": 0.1, "remove_unused_columns": False})
    cfg.update({"datasets": [dataset], "learning_rate": 5e-7})
    return deep_merge(cfg, overrides)
