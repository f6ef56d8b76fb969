"""Check rendered Axolotl configs against Axolotl's own schema, in Axolotl's environment.

Axolotl is not importable from the toolkit's environment (and is slow to import), so the
check runs one subprocess with the venv's Python that validates every config at once.
"""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING, Any

from orca_recipe.errors import UserError
from orca_recipe.train.launch import axolotl_bin, train_env

if TYPE_CHECKING:  # the recipe package imports this one, not the other way round
    from orca_recipe.recipe.schema import Launcher

_SNIPPET = r"""
import json, sys, logging, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault
results = {}
for name, cfg in json.load(sys.stdin).items():
    try:
        validate_config(DictDefault(cfg))
        results[name] = None
    except Exception as e:  # pydantic ValidationError or ValueError: Axolotl's own message
        results[name] = f"{type(e).__name__}: {e}"
print("@@RESULTS@@" + json.dumps(results))
"""


def axolotl_available(launcher: Launcher) -> bool:
    try:
        axolotl_bin(launcher)
        return True
    except UserError:
        return False


def check_configs(configs: dict[str, dict[str, Any]], launcher: Launcher, timeout: float = 300) -> dict[str, str | None]:
    """stage name -> None when Axolotl accepts the config, else its error message."""
    python = axolotl_bin(launcher).parent / "python"
    proc = subprocess.run(
        [str(python), "-c", _SNIPPET], input=json.dumps(configs, default=str), capture_output=True, text=True,
        timeout=timeout, env=train_env(launcher),
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULTS@@"):
            return json.loads(line[len("@@RESULTS@@"):])
    tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-10:])
    raise UserError(f"could not run Axolotl's config check ({python}):\n{tail}")


def check_plan(plan: Any) -> int:
    """Raise a UserError naming the recipe key if Axolotl rejects a rendered config; return how many passed."""
    tr = plan.recipe.training
    configs = {s.name: s.trainer_config for s in plan.stages if s.trainer_config is not None}
    if tr is None or not configs:
        return 0
    for name, problem in check_configs(configs, tr.launcher).items():
        if problem:
            section = "sft" if name == "sft" else "preference"
            key = ("training", section, "axolotl")
            detail = " ".join(line.strip() for line in problem.splitlines() if line.strip() and "errors.pydantic.dev" not in line)
            raise UserError(f"Axolotl rejects the rendered {name} config: {detail}", where=plan.loaded.where(key), key=".".join(key))
    return len(configs)
