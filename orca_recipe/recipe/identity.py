"""What a stage's fingerprint is made of: the identities of the models it calls, of the trainer
setup it runs, and of its data by content, written portably (paths relative to the recipe).

Each identity holds what can change a stage's outputs and nothing else: not a model's rate
limits or price, not how a trainer is launched.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from orca_recipe.chat_template import template_text
from orca_recipe.content import content_id
from orca_recipe.home import embedded_model_dir
from orca_recipe.recipe.schema import DEEPSPEED_PRESETS, ModelEndpoint, Recipe


def fingerprint_of(obj: Any) -> str:
    """16 hex digits of sha256 over the canonical JSON of `obj`."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def portable(obj: Any, base: Path) -> Any:
    """`obj` with every absolute path written relative to `base` (the recipe's folder), so a
    project folder copied or moved elsewhere keeps its fingerprints."""
    if isinstance(obj, dict):
        return {k: portable(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, base) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and os.path.isabs(obj):
        return os.path.relpath(obj, base)
    return obj


def chat_template_of(m: ModelEndpoint) -> str | None:
    """The chat template a recipe names for a local model (its text), or None: the tokenizer's own."""
    if m.local is None or m.local.chat_template is None:
        return None
    return template_text(m.local.chat_template, key="chat_template")


def model_identity(m: ModelEndpoint) -> dict[str, Any]:
    """What decides a model's outputs (not its rate limits, concurrency or price)."""
    if m.local is not None:
        source = {"embedded": m.local.embedded} if m.local.embedded else {"weights": content_id(m.local.path)}
        template = {"chat_template": chat_template_of(m)} if m.local.chat_template else {}  # none set: fingerprints unchanged
        return source | template | {"dtype": m.local.dtype, "sampling": m.sampling.model_dump(exclude_none=True)}
    return {"model": m.model, "api_base": m.api_base, "sampling": m.sampling.model_dump(exclude_none=True)}


def launcher_identity(tr: Any) -> dict[str, Any]:
    """What of the launcher can change a trained model: how many processes share the global
    batch. Not how they are started (`kind`, `extra_args`, `venv`) nor per-node addressing:
    changing those must not throw a trained model away, and every node has one fingerprint."""
    return tr.launcher.model_dump(include={"num_processes", "num_nodes"})


def distributed_identity(tr: Any) -> dict[str, Any]:
    """{"distributed": the sharding settings, a DeepSpeed file by its content}, or {} when unset
    (so a recipe without it keeps its fingerprints)."""
    ident = tr.distributed.model_dump(exclude_none=True)
    ds = tr.distributed.deepspeed
    if ds is not None and ds not in DEEPSPEED_PRESETS:
        ident["deepspeed"] = content_id(ds)
    return {"distributed": ident} if ident else {}


def student_agent(recipe: Recipe) -> str | None:
    """The agent whose prompt SFT trains under: the one evaluation scores with (else practice's),
    so the student is trained on the very user turn it is measured on."""
    if recipe.eval is not None:
        return recipe.eval.agent
    return recipe.practice.agent if recipe.practice and recipe.iterations > 1 else None


def student_model_path(recipe: Recipe) -> str | None:
    """The folder of the model training starts from (the embedded one is unpacked there)."""
    if recipe.training is None:
        return None
    local = recipe.models[recipe.training.student].local
    assert local is not None
    if local.path:
        return local.path
    return str(embedded_model_dir(local.embedded))  # type: ignore[arg-type]
