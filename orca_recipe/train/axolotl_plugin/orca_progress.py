"""An Axolotl plugin that reports training progress from the trainer's own state.

orca-recipe shows a progress bar per training stage. Reading it from the trainer's
`TrainerState` (global_step, max_steps, the last logged loss) through a `TrainerCallback`
is exact where parsing tqdm's text is not (data preparation prints bars too). The callback
writes one small JSON file, replaced atomically at every step; its path comes from
$ORCA_RECIPE_PROGRESS, set by orca-recipe's launcher. Only the main process writes. It imports
nothing from orca-recipe: it runs inside Axolotl's own environment.
"""

import json
import os

from axolotl.integrations.base import BasePlugin  # type: ignore[import-not-found]  # Axolotl's venv
from transformers import TrainerCallback  # type: ignore[import-not-found]


class ProgressFile(TrainerCallback):  # type: ignore[misc]
    def __init__(self, path):
        self.path = path
        self.loss = None

    def _write(self, state):
        if not state.is_world_process_zero:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"step": state.global_step, "max_steps": state.max_steps, "loss": self.loss, "epoch": state.epoch}, f)
        os.replace(tmp, self.path)

    def on_train_begin(self, args, state, control, **kwargs):
        self._write(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._write(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and isinstance(logs.get("loss"), (int, float)):
            self.loss = float(logs["loss"])


class Progress(BasePlugin):  # type: ignore[misc]
    def add_callbacks_pre_trainer(self, cfg, model):  # Axolotl's hook: callbacks for the trainer
        path = os.environ.get("ORCA_RECIPE_PROGRESS")
        return [ProgressFile(path)] if path else []
