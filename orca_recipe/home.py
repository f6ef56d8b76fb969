"""Where orca-recipe keeps what outlives a run: converted embedded models, vLLM's caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """`$ORCA_RECIPE_HOME`, or ``~/.cache/orca-recipe``."""
    env = os.environ.get("ORCA_RECIPE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "orca-recipe"


def embedded_model_dir(name: str) -> Path:
    """Where the embedded model `name` is (or will be) converted; no check that it is complete."""
    return cache_home() / "models" / name
