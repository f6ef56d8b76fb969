"""Agent prompts: Jinja in a sandbox with StrictUndefined, checked before anything runs.

Each role provides a fixed set of variables; `check_template` parses a template and
names any variable the role does not provide, so a typo fails at `validate`, not after
an hour of paid calls.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError, safe_range

from orca_recipe.bounded import read_text
from orca_recipe.errors import UserError

MAX_PROMPT_CHARS = 1_000_000   # a rendered prompt; far above any model's context
MAX_LOOP_ITEMS = 1_000_000     # range() items one render may iterate, nested loops included
_spent: contextvars.ContextVar[list[int]] = contextvars.ContextVar("jinja_loop_items")
_WIDTH = re.compile(r"%[-+ #0]*(\d{7,})")  # a printf width of a million characters or more

# What each role's template may use.
ROLE_VARIABLES: dict[str, frozenset[str]] = {
    "ask_me_anything": frozenset({"problem", "answer", "n"}),
    "suggester": frozenset({"problem", "n", "round"}),
    "editor": frozenset({"problem", "suggestions", "round"}),
    "verifier": frozenset({"problem"}),
    "solver": frozenset({"problem"}),
    "judge": frozenset({"problem", "reference", "reference_answer", "response", "response_answer"}),
    "student": frozenset({"problem"}),
}



def _too_big(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_PROMPT_CHARS


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, bounded in what a template can allocate or loop over: a
    repeated string or list, a power, a width argument (`center`, `ljust`, `%9999999s`) and the
    items of every `range` of one render. Past a bound: SecurityError, one `error:` line."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError(f"a power of {right} is beyond what a prompt needs")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_PROMPT_CHARS:
                    raise SecurityError(f"repeating a value {times:,} times makes more than {MAX_PROMPT_CHARS:,} characters")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's signature)
        if any(_too_big(a) for a in (*args, *kwargs.values())):
            raise SecurityError(f"an argument over {MAX_PROMPT_CHARS:,} is beyond what a prompt needs")
        if __obj is safe_range:
            spent = _spent.get(None)
            if spent is not None:
                spent[0] += len(range(*args))
                if spent[0] > MAX_LOOP_ITEMS:
                    raise SecurityError(f"loops over more than {MAX_LOOP_ITEMS:,} items in one prompt")
        return super().call(__context, __obj, *args, **kwargs)


def _bounded_filter(f: Callable[..., Any]) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        if any(_too_big(a) for a in (*args, *kwargs.values())) or (isinstance(args[0] if args else None, str) and _WIDTH.search(args[0])):
            raise SecurityError(f"a width over {MAX_PROMPT_CHARS:,} characters is beyond what a prompt needs")
        return f(*args, **kwargs)

    checked.__name__ = getattr(f, "__name__", "filter")
    for marker in ("jinja_pass_arg",):
        if hasattr(f, marker):
            setattr(checked, marker, getattr(f, marker))
    return checked


_ENV = BoundedSandbox(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
for _name in ("center", "indent", "format", "wordwrap", "truncate", "batch", "slice", "join", "replace"):
    _ENV.filters[_name] = _bounded_filter(_ENV.filters[_name])


_compiled = lru_cache(maxsize=512)(_ENV.from_string)  # one compile per template text, not per call


@dataclass(frozen=True)
class Prompt:
    """A loaded template: its source text (fingerprinted) and where it came from."""

    source: str
    origin: str  # file path, or "agents.NAME.template"

    def render(self, **variables: Any) -> str:
        token = _spent.set([0])
        try:
            out: list[str] = []
            size = 0
            for piece in _compiled(self.source).generate(**variables):
                size += len(piece)
                if size > MAX_PROMPT_CHARS:
                    raise SecurityError(f"the rendered prompt is over {MAX_PROMPT_CHARS:,} characters")
                out.append(piece)
            return "".join(out).strip()
        except (jinja2.exceptions.SecurityError, OverflowError, MemoryError) as e:  # the sandbox's unsafe-call, size and range limits
            raise UserError(f"template blocked by the sandbox: {e}", where=self.origin) from None
        except jinja2.UndefinedError as e:
            raise UserError(f"template uses an undefined value: {e.message}", where=self.origin) from None
        except jinja2.TemplateError as e:
            raise UserError(f"template error: {e}", where=self.origin) from None
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as e:  # e.g. '{{ problem / 0 }}'
            raise UserError(f"template error: {type(e).__name__}: {e}", where=self.origin) from None
        finally:
            _spent.reset(token)


def load_prompt(path: str | None, inline: str | None, *, key: str, where: str | None) -> Prompt:
    if inline is not None:
        return Prompt(inline, f"{key}.template")
    assert path is not None
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise UserError(f"prompt file not found: {p}", where=where, key=key)
    text = read_text(p, "prompt", key=key, where=where)  # regular files only, at most 1 MiB
    if not text.strip():
        raise UserError(f"prompt file {p} is empty: the model would be sent nothing", where=where, key=key)
    return Prompt(text, str(p))


def template_variables(prompt: Prompt, *, key: str, where: str | None) -> set[str]:
    try:
        ast = _ENV.parse(prompt.source)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"Jinja syntax error in {prompt.origin}:{e.lineno}: {e.message}", where=where, key=key) from None
    except RecursionError:
        raise UserError(f"{prompt.origin} is nested too deeply for Jinja to read", where=where, key=key) from None
    for tag in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        name = {nodes.Extends: "extends", nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "from ... import"}[type(tag)]
        raise UserError(f"{prompt.origin}:{tag.lineno} uses {{% {name} %}}: a prompt is one self-contained file (no template "
                        "loader reaches other files); put the text in it, or in a macro defined in the same file", where=where, key=key)
    return set(meta.find_undeclared_variables(ast))


def check_template(prompt: Prompt, roles: set[str], *, key: str, where: str | None) -> None:
    """Fail if the template uses a variable one of its roles does not provide."""
    used = template_variables(prompt, key=key, where=where)
    for role in sorted(roles):
        unknown = used - ROLE_VARIABLES[role]
        if unknown:
            provided = ", ".join(sorted(ROLE_VARIABLES[role]))
            raise UserError(
                f"{prompt.origin} uses undefined variable(s) {', '.join(sorted(unknown))}; as '{role}' it gets: {provided}",
                where=where,
                key=key,
            )
