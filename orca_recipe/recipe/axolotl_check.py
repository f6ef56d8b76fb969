"""Axolotl's own verdict on a plan's rendered trainer configs, with the recipe key to blame.

The check itself runs in Axolotl's environment (orca_recipe.train.check); this is the part that
knows recipes: which capabilities a recipe's node has, and which key a rejection points at.
"""

from __future__ import annotations

from typing import Any

from orca_recipe.errors import UserError
from orca_recipe.recipe.machine import gpu_needs
from orca_recipe.train.check import check_configs, gpu_node


def plan_configs(plan: Any) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """A plan's rendered trainer configs by stage name, and the capabilities Axolotl validates
    them for: a GPU node's (see `gpu_node`) when the recipe trains on GPUs, else this machine's."""
    tr = plan.recipe.training
    configs = {s.name: s.trainer_config for s in plan.stages if s.trainer_config is not None}
    if tr is None or not configs:
        return {}, None
    on_gpus = any(n.key[0] == "training" for n in gpu_needs(plan.recipe))
    return configs, gpu_node(tr.launcher.num_processes, tr.launcher.num_nodes) if on_gpus else None


def check_plan(plan: Any) -> int:
    """Raise a UserError naming the recipe key if Axolotl rejects a rendered config; return how
    many passed. A recipe that trains on GPUs is checked with that node's capabilities."""
    configs, caps = plan_configs(plan)
    if not configs:
        return 0
    for name, problem in check_configs(configs, plan.recipe.training.launcher, capabilities=caps).items():
        if problem:
            section = "sft" if name == "sft" else "preference"
            key = ("training", section, "axolotl")
            detail = " ".join(line.strip() for line in problem.splitlines() if line.strip() and "errors.pydantic.dev" not in line)
            raise UserError(f"Axolotl rejects the rendered {name} config: {detail}", where=plan.loaded.where(key), key=".".join(key))
    return len(configs)
