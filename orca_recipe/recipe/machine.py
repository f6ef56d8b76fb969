"""What a recipe asks of the machine (GPUs), and the check that this machine has it.

vLLM parallelism, multi-process training, DeepSpeed/FSDP and QLoRA all need CUDA GPUs. On a
machine without enough of them they fail minutes into a run, after generation has spent
tokens; `validate` and `run` refuse them up front instead, naming the key that asked.
`plan` only lists the needs, so a GPU recipe can be planned on a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def sharding(recipe: Recipe) -> str | None:
    """How training shards model states: a ZeRO stage, 'fsdp', or None (plain data parallel)."""
    dist = recipe.training.distributed if recipe.training else None
    if dist is None:
        return None
    if dist.fsdp is not None:
        return "fsdp"
    ds = dist.deepspeed
    if ds is None:
        return None
    if ds in ("zero2", "zero3", "zero3_offload"):
        return ds.split("_")[0]
    from orca_recipe.bounded import maybe_json

    try:  # a DeepSpeed file of the user's: its zero_optimization.stage
        stage = maybe_json(ds, "DeepSpeed config").get("zero_optimization", {}).get("stage", 0)
    except AttributeError:  # unreadable, not JSON, or not an object
        return None
    return f"zero{stage}" if stage in (1, 2, 3) else None


@dataclass(frozen=True)
class MemoryNeed:
    key: tuple[str, ...]   # where to change it
    what: str              # "sft (Axolotl)", "vLLM server 'student'"
    estimate: Any          # train.memory.Estimate


def memory_needs(plan: Any) -> list[MemoryNeed]:
    """Per training stage and per local server, what one GPU must hold (train.memory), where
    the model's architecture is known (its config.json, or a public model its folder is named for)."""
    from orca_recipe.train.memory import architecture, serving_estimate, training_estimate

    recipe: Recipe = plan.recipe
    out: list[MemoryNeed] = []
    for name, m in recipe.models.items():
        if m.local is None or m.local.path is None:
            continue
        arch = architecture(m.local.path)
        if arch is not None:
            out.append(MemoryNeed(("models", name, "local", "tensor_parallel_size"), f"vLLM server '{name}'",
                                  serving_estimate(arch, m.local.tensor_parallel_size, m.local.max_model_len)))
    if recipe.training is None:
        return out
    student = recipe.models[recipe.training.student].local
    arch = architecture(student.path if student else None)
    if arch is None:
        return out
    gpus = recipe.training.launcher.num_processes
    for s in plan.stages:
        if s.trainer_config is None:
            continue
        section = "sft" if s.kind == "sft" else "preference"
        out.append(MemoryNeed(("training", section, "axolotl", "micro_batch_size"), f"{s.name} (Axolotl)",
                              training_estimate(arch, s.trainer_config, gpus, sharding(recipe))))
    return out


def check_memory(plan: Any, gib_per_gpu: float) -> None:
    """Raise one UserError naming every stage or server that cannot fit `gib_per_gpu`."""
    from orca_recipe.train.memory import GIB

    over = [n for n in memory_needs(plan) if n.estimate.total > gib_per_gpu * GIB]
    if not over:
        return
    lines = [str(UserError(f"{n.what} needs {n.estimate.describe()}, more than {gib_per_gpu:g} GiB: shard it "
                           "(training.distributed.deepspeed: zero3, or fsdp), turn on gradient_checkpointing, or lower the micro batch",
                           where=plan.loaded.where(n.key), key=dotted(n.key))) for n in over]
    raise UserError(lines[0] if len(lines) == 1 else f"{len(lines)} do not fit {gib_per_gpu:g} GiB per GPU:\n  " + "\n  ".join(lines))


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
