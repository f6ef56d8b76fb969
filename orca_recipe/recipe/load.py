"""Load a recipe: YAML with positions, `extends:` forking, `--set` overrides, validation.

Merge rules (documented in the README): mappings merge key by key, the child winning;
lists and scalars are replaced whole; `null` in a child sets the value to null.
Relative paths are resolved against the file that wrote them, so a fork in another
folder keeps its base's prompts and data.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orca_recipe.bounded import read_text
from orca_recipe.chat_template import KNOWN as KNOWN_TEMPLATES
from orca_recipe.errors import UserError
from orca_recipe.mapping import deep_merge
from orca_recipe.recipe.schema import DEEPSPEED_PRESETS, Recipe

Key = tuple[str | int, ...]

# Keys whose values are file paths, resolved against the file (or cwd for --set) that set them.
PATH_KEYS: tuple[Key, ...] = (
    ("seeds", "path"),
    ("seeds", "holdout"),
    ("eval", "path"),
    ("filters", "decontaminate", "path"),
    ("agents", "*", "prompt"),
    ("models", "*", "local", "path"),
    ("models", "*", "local", "chat_template"),  # unless a known name (chat_template.KNOWN)
    ("training", "launcher", "venv"),
    ("training", "distributed", "deepspeed"),  # unless a preset name (DEEPSPEED_PRESETS)
)


@dataclass
class Loaded:
    """A merged recipe as plain data, where each key came from, and the files it read."""

    data: dict[str, Any]
    positions: dict[Key, str] = field(default_factory=dict)  # key path -> "file:line:col"
    files: list[Path] = field(default_factory=list)  # the chain, child first

    def where(self, key: Key) -> str | None:
        """Position of `key`, or of its nearest ancestor that has one."""
        key = tuple(key)
        while key:
            if key in self.positions:
                return self.positions[key]
            key = key[:-1]
        return str(self.files[0]) if self.files else None


def dotted(key: Key) -> str:
    return ".".join(str(k) for k in key)


# --------------------------------------------------------------------------- YAML


def _mark(path: Path, mark: yaml.Mark | None) -> str:
    if mark is None:
        return str(path)
    return f"{path}:{mark.line + 1}:{mark.column + 1}"


MAX_YAML_DEPTH = 64         # a recipe is a few levels deep; recursive aliases never end
MAX_YAML_NODES = 200_000    # nodes built, aliases expanded: a "billion laughs" stops here


class _Budget:
    """What one document may cost to build: nesting depth and nodes, aliases counted each time."""

    def __init__(self, path: Path):
        self.path, self.nodes = path, 0

    def spend(self, node: yaml.Node, depth: int) -> None:
        self.nodes += 1
        if depth > MAX_YAML_DEPTH:
            raise UserError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels (or an alias that contains itself)",
                            where=_mark(self.path, node.start_mark))
        if self.nodes > MAX_YAML_NODES:
            raise UserError(f"YAML expands to more than {MAX_YAML_NODES:,} values (aliases repeating aliases?); a recipe is "
                            "a few hundred", where=_mark(self.path, node.start_mark))


def _construct(node: yaml.Node, loader: yaml.SafeLoader, path: Path, key: Key, pos: dict[Key, str], budget: _Budget) -> Any:
    budget.spend(node, len(key))
    pos[key] = _mark(path, node.start_mark)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<)
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise UserError("keys must be plain strings", where=_mark(path, knode.start_mark))
            k = loader.construct_object(knode, deep=True)
            if not isinstance(k, (str, int, float, bool)) or isinstance(k, bool):
                raise UserError("keys must be plain strings", where=_mark(path, knode.start_mark))
            k = str(k)
            if k in out:
                raise UserError(f"duplicate key '{k}' (it is also set above)", where=_mark(path, knode.start_mark), key=dotted(key + (k,)))
            out[k] = _construct(vnode, loader, path, key + (k,), pos, budget)
            pos[key + (k,)] = _mark(path, knode.start_mark)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, loader, path, key + (i,), pos, budget) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, path: Path) -> tuple[Any, dict[Key, str]]:
    """Parse one YAML document, keeping every key's file:line:col. Bounded: nesting, nodes and
    alias expansion have budgets (`_Budget`); control characters are one error, not a traceback."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader checks for unprintable characters here
        node = loader.get_single_node()
        if node is None:
            return None, {}
        pos: dict[Key, str] = {}
        return _construct(node, loader, path, (), pos, _Budget(path)), pos
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1 if isinstance(e.position, int) else None
        char = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        raise UserError(f"a control character ({char}) that YAML does not allow; a recipe is plain text",
                        where=f"{path}:{line}" if line else str(path)) from None
    except RecursionError:
        raise UserError(f"YAML nested deeper than this reader can follow (limit {MAX_YAML_DEPTH} levels)", where=str(path)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "invalid YAML"
        if "\t" in problem or "'\\t'" in problem:
            problem = "a tab character; YAML indents with spaces only"
        elif e.context:
            problem = f"{problem} ({e.context})"
        raise UserError(f"YAML syntax error: {problem}", where=_mark(path, mark)) from None
    except yaml.YAMLError as e:
        raise UserError(f"YAML error: {e}", where=str(path)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_mapping(path: Path) -> tuple[dict[str, Any], dict[Key, str]]:
    if not path.exists() and not path.is_symlink():
        raise UserError("recipe file not found", where=str(path))
    text = read_text(path, "recipe", where=str(path))  # regular files only, at most 4 MiB
    data, pos = parse_yaml(text, path)
    if data is None:
        raise UserError("the recipe is empty; expected a mapping with name, models, agents, seeds, solve ...", where=str(path))
    if not isinstance(data, dict):
        raise UserError(f"the top level must be a mapping of keys, not a {type(data).__name__}", where=pos.get((), str(path)))
    return data, pos


# --------------------------------------------------------------------------- merging


def path_keys_in(data: dict[str, Any]) -> list[Key]:
    """Concrete keys matching PATH_KEYS in `data`."""
    found: list[Key] = []

    def walk(node: Any, pattern: Key, prefix: Key) -> None:
        if not pattern:
            if isinstance(node, str):
                found.append(prefix)
            return
        if not isinstance(node, dict):
            return
        head, rest = pattern[0], pattern[1:]
        for k in node if head == "*" else [head]:
            if k in node:
                walk(node[k], rest, prefix + (k,))

    for pattern in PATH_KEYS:
        walk(data, pattern, ())
    return found


def get_key(data: Any, key: Key) -> Any:
    for k in key:
        data = data[k]
    return data


def set_key(data: dict[Any, Any], key: Key, value: Any) -> None:
    for k in key[:-1]:
        nxt = data.get(k)
        if not isinstance(nxt, dict):
            nxt = data[k] = {}
        data = nxt
    data[key[-1]] = value


def file_keys_in(data: dict[str, Any]) -> list[Key]:
    """The PATH_KEYS in `data` whose value names a file, not a preset (zero3, chatml)."""
    return [key for key in path_keys_in(data) if not _is_preset_name(key, get_key(data, key))]


def _is_preset_name(key: Key, value: str) -> bool:
    return (key == ("training", "distributed", "deepspeed") and value in DEEPSPEED_PRESETS) or (key[-1] == "chat_template" and value in KNOWN_TEMPLATES)


def _resolve_paths(data: dict[str, Any], base_dir: Path, pos: dict[Key, str] | None = None) -> None:
    for key in file_keys_in(data):
        value = get_key(data, key)
        if "\x00" in value:
            raise UserError("a path cannot contain a NUL byte", where=(pos or {}).get(key), key=".".join(map(str, key)))
        if not os.path.isabs(value):
            set_key(data, key, os.path.normpath(base_dir / value))


def _load_chain(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], dict[Key, str], list[Path]]:
    path = path.resolve() if path.exists() else path
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise UserError(f"'extends' forms a cycle: {chain}", where=str(seen[-1]), key="extends")
    data, pos = _read_mapping(path)
    _resolve_paths(data, path.parent, pos)
    files = [path]
    parent = data.pop("extends", None)
    if parent is None:
        return data, pos, files
    if not isinstance(parent, str) or "\x00" in parent:
        raise UserError("'extends' must be a path to a base recipe", where=pos.get(("extends",)), key="extends")
    parent_path = (path.parent / parent)
    if not parent_path.exists():
        raise UserError(f"base recipe '{parent}' not found (looked at {parent_path})", where=pos.get(("extends",)), key="extends")
    base, base_pos, base_files = _load_chain(parent_path, seen + (path,))
    merged_pos = dict(base_pos)
    merged_pos.update(pos)
    return deep_merge(base, data), merged_pos, files + base_files


# --------------------------------------------------------------------------- --set overrides


def parse_override(text: str) -> tuple[Key, Any]:
    """`a.b.c=value` -> (("a","b","c"), value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"--set expects KEY=VALUE, got '{text}'", where="--set")
    key_text, _, value_text = text.partition("=")
    key = tuple(p for p in key_text.strip().split("."))
    if not key_text.strip() or any(not p for p in key):
        raise UserError(f"--set: bad key '{key_text}'", where="--set")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    return key, value


def apply_overrides(loaded: Loaded, overrides: list[str], cwd: Path | None = None) -> None:
    cwd = cwd or Path.cwd()
    for text in overrides:
        key, value = parse_override(text)
        probe: dict[str, Any] = {}
        set_key(probe, key, value)
        _resolve_paths(probe, cwd)
        if not isinstance(value, dict):
            value = get_key(probe, key)
        node: Any = loaded.data
        for k in key[:-1]:
            if isinstance(node, dict) and k in node and not isinstance(node[k], dict):
                raise UserError(f"cannot set '{dotted(key)}': '{k}' is not a mapping", where="--set", key=dotted(key))
            node = node.get(k, {}) if isinstance(node, dict) else {}
        old = node.get(key[-1]) if isinstance(node, dict) else None
        if isinstance(old, dict) and isinstance(value, dict):
            value = deep_merge(old, value)
        set_key(loaded.data, key, value)
        loaded.positions[key] = f"--set {dotted(key)}"


# --------------------------------------------------------------------------- validation


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at `loc` (a pydantic error location), for did-you-mean."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(model, type) and issubclass(model, BaseModel):
            f = model.model_fields.get(str(part))
            if f is None:
                return []
            model = f.annotation
        else:
            model = _inner_model(model, dict_value=True)
            continue
        model = _inner_model(model, dict_value=False)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _inner_model(tp: Any, dict_value: bool) -> Any:
    """Unwrap Optional[...] / dict[str, M] to the model class inside."""
    args = getattr(tp, "__args__", None)
    if not args:
        return tp
    origin = getattr(tp, "__origin__", None)
    if origin is dict:
        return args[1] if dict_value else tp
    for a in args:
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return tp


def _error_message(err: Any) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        allowed = _allowed_keys(loc)
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key '{name}'{hint} (allowed: {', '.join(allowed)})" if allowed else f"unknown key '{name}'{hint}"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return msg


def validate(loaded: Loaded) -> Recipe:
    try:
        return Recipe.model_validate(loaded.data)
    except ValidationError as e:
        errors = e.errors()
        lines = []
        for err in errors:
            loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
            where = loaded.where(loc) or "recipe"
            lines.append(f"{where}: {dotted(loc) or '(top level)'}: {_error_message(err)}")
        first, rest = lines[0], lines[1:]
        more = ("\n" + "\n".join(rest)) if rest else ""
        raise UserError(first + more) from None


def load_recipe_data(path: str | Path, overrides: list[str] | None = None) -> Loaded:
    """Read a recipe and its bases and apply overrides; no validation."""
    path = Path(path)
    data, pos, files = _load_chain(path, ())
    loaded = Loaded(data=data, positions=pos, files=files)
    apply_overrides(loaded, overrides or [])
    data.setdefault("name", files[0].stem)
    return loaded


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Loaded]:
    loaded = load_recipe_data(path, overrides)
    return validate(loaded), loaded
