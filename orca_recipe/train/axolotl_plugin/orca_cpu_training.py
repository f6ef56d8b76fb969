"""An Axolotl plugin that trains on the CPU: bf16 (autocast) on a machine with no GPU.

transformers' TrainingArguments refuses `bf16=True` without a bf16 GPU unless `use_cpu` is
set, and Axolotl's schema has no `use_cpu` key; Axolotl's public plugin hook
`get_training_args` is how a config adds a training argument. orca-recipe puts this folder on
the trainer's PYTHONPATH and names `orca_cpu_training.CPUTraining` under `plugins:` only when
a stage asks for bf16 on a machine without a GPU. It imports nothing from orca-recipe: it runs
inside Axolotl's own environment.
"""

from axolotl.integrations.base import BasePlugin  # type: ignore[import-not-found]  # Axolotl's venv


class CPUTraining(BasePlugin):
    """`use_cpu=True` for the trainer (SFT and the preference trainers alike)."""

    def get_training_args(self, cfg):  # Axolotl calls it with the whole config
        return {"use_cpu": True}
