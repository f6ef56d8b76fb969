"""Agent prompts: Jinja in a sandbox with StrictUndefined, checked before anything runs.

Each role provides a fixed set of variables; `check_template` parses a template and
names any variable the role does not provide, so a typo fails at `validate`, not after
an hour of paid calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orca_recipe.errors import UserError

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

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


_compiled = lru_cache(maxsize=512)(_ENV.from_string)  # one compile per template text, not per call


@dataclass(frozen=True)
class Prompt:
    """A loaded template: its source text (fingerprinted) and where it came from."""

    source: str
    origin: str  # file path, or "agents.NAME.template"

    def render(self, **variables: Any) -> str:
        try:
            return _compiled(self.source).render(**variables).strip()
        except (jinja2.exceptions.SecurityError, OverflowError) as e:  # the sandbox's unsafe-call and range limits
            raise UserError(f"template blocked by the sandbox: {e}", where=self.origin) from None
        except jinja2.UndefinedError as e:
            raise UserError(f"template uses an undefined value: {e.message}", where=self.origin) from None
        except jinja2.TemplateError as e:
            raise UserError(f"template error: {e}", where=self.origin) from None


def load_prompt(path: str | None, inline: str | None, *, key: str, where: str | None) -> Prompt:
    if inline is not None:
        return Prompt(inline, f"{key}.template")
    assert path is not None
    p = Path(path)
    try:
        return Prompt(p.read_text(encoding="utf-8"), str(p))
    except FileNotFoundError:
        raise UserError(f"prompt file not found: {p}", where=where, key=key) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # a folder, no permission, not UTF-8, a NUL in the name
        raise UserError(f"cannot read prompt file {p}: {e.__class__.__name__}", where=where, key=key) from None


def template_variables(prompt: Prompt, *, key: str, where: str | None) -> set[str]:
    try:
        ast = _ENV.parse(prompt.source)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"Jinja syntax error in {prompt.origin}:{e.lineno}: {e.message}", where=where, key=key) from None
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
