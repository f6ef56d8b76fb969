"""Forking, showing and diffing recipes: all work on the merged, validated data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from orca_recipe.errors import UserError
from orca_recipe.recipe.load import PATH_KEYS, Key, file_keys_in, get_key, load_recipe, parse_override, set_key
from orca_recipe.recipe.schema import Recipe

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "recipe.schema.json"


def effective(recipe: Recipe, *, relative_to: Path | None = None, drop_none: bool = False) -> dict[str, Any]:
    """The recipe with every default filled in.

    Paths are written relative to `relative_to` (the folder the YAML will live in, so that it
    validates there, as every recipe's paths are relative to its own file), or absolute when
    None: text piped to a file whose folder is not known here still validates on this machine.
    """
    data = recipe.model_dump(mode="json", exclude={"extends"}, exclude_none=drop_none)
    for key in file_keys_in(data):
        value = str(Path(get_key(data, key)).resolve())
        set_key(data, key, value if relative_to is None else os.path.relpath(value, relative_to.resolve()))
    return data


def only_keys_of(data: dict[str, Any], written: dict[str, Any]) -> dict[str, Any]:
    """`data` cut down to the keys the recipe files and overrides wrote (`show --no-defaults`)."""
    kept: dict[str, Any] = {}
    for k, v in written.items():
        if k == "extends" or k not in data:
            continue
        kept[k] = only_keys_of(data[k], v) if isinstance(v, dict) and isinstance(data[k], dict) else data[k]
    return kept


def to_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def fork_text(base: Path, new: Path, overrides: list[str]) -> str:
    """A minimal child recipe: `extends` plus only the overrides; validated before it is returned."""
    child: dict[str, Any] = {"extends": os.path.relpath(base.resolve(), new.resolve().parent), "name": new.stem}
    for text in overrides:
        key, value = parse_override(text)
        if key == ("name",):
            child["name"] = value
            continue
        if _is_path_key(key) and isinstance(value, str) and not os.path.isabs(value):
            # --set paths are relative to where the user typed them; the file's to the file.
            value = os.path.relpath(Path.cwd() / value, new.resolve().parent)
        set_key(child, key, value)
    schema = os.path.relpath(SCHEMA_FILE, new.resolve().parent)
    text = f"# yaml-language-server: $schema={schema}\n" + to_yaml(child)
    _check_child(new, text)
    return text


def _is_path_key(key: Key) -> bool:
    return any(len(p) == len(key) and all(a == "*" or a == b for a, b in zip(p, key)) for p in PATH_KEYS)


def _check_child(new: Path, text: str) -> None:
    """Validate the would-be child in place, without leaving a file behind if it is invalid."""
    tmp = new.with_name(f".{new.name}.tmp")
    tmp.write_text(text)
    try:
        from orca_recipe.recipe.compile import compile_plan

        recipe, loaded = load_recipe(tmp)
        compile_plan(recipe, loaded)
    except UserError as e:
        msg = str(e).replace(str(tmp), str(new))
        raise UserError(f"the fork would not be valid: {msg}") from None
    finally:
        tmp.unlink(missing_ok=True)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every leaf that differs; a missing side is `<unset>`."""
    fa, fb = flatten(a), flatten(b)
    missing = "<unset>"
    return [(k, fa.get(k, missing), fb.get(k, missing)) for k in sorted(set(fa) | set(fb)) if fa.get(k, missing) != fb.get(k, missing)]
