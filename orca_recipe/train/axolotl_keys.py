"""Axolotl's config keys, shipped as a list so `validate` can refuse a typo inside an
`axolotl:` block (`learning_rte`) without importing Axolotl (seconds, and another venv).
tests/test_axolotl.py checks the list against the installed Axolotl's own schema."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

KEYS_FILE = Path(__file__).with_name("axolotl_keys.txt")


@lru_cache(maxsize=1)
def axolotl_keys() -> frozenset[str]:
    lines = KEYS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def schema_keys() -> list[str]:
    """The installed Axolotl's keys (run inside its venv): every field and alias of its config models."""
    from axolotl.utils.schemas.config import AxolotlConfigWCapabilities, AxolotlInputConfig

    names: set[str] = set()
    for model in (AxolotlInputConfig, AxolotlConfigWCapabilities):
        for name, f in model.model_fields.items():
            names.add(name)
            names.update(a for a in (f.alias, f.validation_alias) if isinstance(a, str))
    return sorted(names)


if __name__ == "__main__":  # .venv-axolotl/bin/python -m orca_recipe.train.axolotl_keys > orca_recipe/train/axolotl_keys.txt
    print("# Axolotl 0.19.0's config keys (AxolotlInputConfig and its capabilities model, aliases included),")
    print("# read by recipe validation to refuse typos in training.*.axolotl. Regenerate with the Axolotl venv:")
    print("#   .venv-axolotl/bin/python -m orca_recipe.train.axolotl_keys > orca_recipe/train/axolotl_keys.txt")
    print("\n".join(schema_keys()))
