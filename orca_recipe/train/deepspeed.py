"""DeepSpeed ZeRO presets, as Axolotl ships them in its repository's `deepspeed_configs/`.

The pip package has no copy (`axolotl fetch deepspeed_configs` downloads them), so the
presets live here and the training stage writes the chosen one into its own folder: the
run is self-contained and the file Axolotl reads is the one the fingerprint covered.
"auto" values are filled in by the Hugging Face trainer from the Axolotl config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

_FP16_AUTO = {"enabled": "auto", "auto_cast": False, "loss_scale": 0, "initial_scale_power": 32,
              "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
_BATCH_AUTO = {"gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "train_batch_size": "auto",
               "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": False}
_ZERO3 = {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 0, "reduce_bucket_size": "auto",
          "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 0,
          "stage3_max_reuse_distance": 0, "stage3_gather_16bit_weights_on_model_save": True}

PRESETS: dict[str, dict[str, Any]] = {
    # deepspeed_configs/zero2.json: optimizer state sharded and offloaded to CPU memory.
    "zero2": {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, "contiguous_gradients": True, "overlap_comm": True},
              "bf16": {"enabled": "auto"}, "fp16": _FP16_AUTO, **_BATCH_AUTO},
    # deepspeed_configs/zero3.json: parameters, gradients and optimizer state sharded; the
    # 16-bit weights are gathered on save, so the output is a plain model folder.
    "zero3": {"zero_optimization": _ZERO3, "bf16": {"enabled": "auto"}, "fp16": _FP16_AUTO, **_BATCH_AUTO},
    # deepspeed_configs/zero3_bf16_cpuoffload_all.json, with zero3.json's bf16/fp16 "auto"
    # (the shipped file forces bf16, which fails on GPUs without it).
    "zero3_offload": {"zero_force_ds_cpu_optimizer": False, "zero_allow_untested_optimizer": True,
                      "zero_optimization": {**_ZERO3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                            "offload_param": {"device": "cpu", "pin_memory": True}},
                      "bf16": {"enabled": "auto"}, "fp16": _FP16_AUTO, **_BATCH_AUTO},
}


def write_deepspeed_config(choice: str, dest: Path) -> Path:
    """Write a preset by name, or copy the recipe's own JSON file, to `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if choice in PRESETS:
        dest.write_text(json.dumps(PRESETS[choice], indent=2) + "\n")
    else:
        shutil.copyfile(choice, dest)
    return dest
