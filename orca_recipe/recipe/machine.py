"""What a recipe asks of the machine (GPUs), and the check that this machine has it.

vLLM parallelism, multi-process training, DeepSpeed/FSDP and QLoRA all need CUDA GPUs. On a
machine without enough of them they fail minutes into a run, after generation has spent
tokens; `validate` and `run` refuse them up front instead, naming the key that asked.
`plan` only lists the needs, so a GPU recipe can be planned on a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass

from orca_recipe.errors import UserError
from orca_recipe.recipe.load import Loaded, dotted
from orca_recipe.recipe.schema import Recipe


@dataclass(frozen=True)
class Need:
    key: tuple[str, ...]  # the recipe key that asks for GPUs
    gpus: int  # per node
    what: str


def gpu_needs(recipe: Recipe) -> list[Need]:
    """Every GPU requirement in the recipe, in recipe order."""
    needs: list[Need] = []
    for name, m in recipe.models.items():
        local = m.local
        if local is None:
            continue
        base = ("models", name, "local")
        if local.gpus > 1:
            parts = [f"{k} {getattr(local, k)}" for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")
                     if getattr(local, k) > 1]
            key = next(k for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size") if getattr(local, k) > 1)
            needs.append(Need(base + (key,), local.gpus, f"vLLM serves '{name}' on {local.gpus} GPUs ({' x '.join(parts)})"))
        elif local.distributed_executor_backend == "ray":
            needs.append(Need(base + ("distributed_executor_backend",), 1, f"vLLM's ray executor for '{name}' runs on GPUs"))
    tr = recipe.training
    if tr is None:
        return needs
    if tr.launcher.num_processes > 1 or tr.launcher.num_nodes > 1:
        nodes = f" on each of {tr.launcher.num_nodes} nodes" if tr.launcher.num_nodes > 1 else ""
        needs.append(Need(("training", "launcher", "num_processes"), tr.launcher.num_processes,
                          f"training runs {tr.launcher.num_processes} processes{nodes}, one per GPU"))
    dist = tr.distributed
    if dist.deepspeed or dist.fsdp:
        how, key = (f"DeepSpeed {dist.deepspeed}", "deepspeed") if dist.deepspeed else (f"FSDP{dist.fsdp.version}", "fsdp")  # type: ignore[union-attr]
        needs.append(Need(("training", "distributed", key), tr.launcher.num_processes, f"{how} shards training across GPUs"))
    sections = [("sft", tr.sft)] + ([("preference", tr.preference)] if recipe.iterations > 1 else [])
    for section, stage in sections:
        opts = stage.axolotl
        if opts.adapter == "qlora" or opts.load_in_4bit or opts.load_in_8bit:
            key = "adapter" if opts.adapter == "qlora" else ("load_in_4bit" if opts.load_in_4bit else "load_in_8bit")
            needs.append(Need(("training", section, "axolotl", key), 1,
                              "QLoRA / 8-bit loading quantizes the base with bitsandbytes, which needs a CUDA GPU"))
    return needs


def check_machine(recipe: Recipe, loaded: Loaded, gpus: int) -> None:
    """Raise one UserError naming every need this machine (`gpus` per node) cannot meet, so
    a user fixes them in one go instead of meeting them one at a time."""
    unmet = [need for need in gpu_needs(recipe) if need.gpus > gpus]
    if not unmet:
        return
    have = "no GPU (none found)" if gpus == 0 else f"{gpus} GPU{'s' if gpus != 1 else ''}"
    most = max(n.gpus for n in unmet)
    errors = [UserError(f"{n.what}: needs {n.gpus} GPU{'s' if n.gpus != 1 else ''} per node, this machine has {have}.",
                        where=loaded.where(n.key), key=dotted(n.key)) for n in unmet]
    hint = f" Run it on a GPU machine; `validate --gpus {most}` checks it for one from here."
    if len(errors) == 1:
        e = errors[0]
        raise UserError(e.args[0] + hint, where=e.where, key=e.key)
    raise UserError(f"{len(errors)} GPU needs this machine cannot meet:\n  " + "\n  ".join(map(str, errors)) + "\n" + hint.strip())
