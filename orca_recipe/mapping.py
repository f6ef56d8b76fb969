"""Merging nested mappings, the way recipes (`extends`) and Axolotl configs (defaults) layer."""

from __future__ import annotations

from typing import Any


def deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key (child wins); lists and scalars are replaced whole."""
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
