"""What every stage gets and gives back, and the few helpers they share.

A stage is `async def run(ctx) -> StageResult`: its compiled StageRun and input datasets in,
rows out. It never sees the recipe (only the section, agents and files its fingerprint was
made of), never reads YAML, never parses flags, and reaches models only through `ctx.llm`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from orca_recipe.prompts import Prompt
from orca_recipe.recipe.compile import StageRun

T = TypeVar("T")
R = TypeVar("R")
Row = dict[str, Any]
NUMBERED_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•]|Q\d*[:.])\s*(.+?)\s*$")  # a list item in an agent's reply: "1.", "2)", "-", "Q3:"


class ParseFailure(Exception):
    """An agent's reply could not be parsed after the bounded retries."""

    def __init__(self, reason: str, text: str):
        super().__init__(reason)
        self.reason = reason
        self.text = text


@dataclass
class StageResult:
    rows: list[Row]
    rejects: list[Row] = field(default_factory=list)  # dropped on purpose, with a reason
    failures: list[Row] = field(default_factory=list)  # could not be produced, with a reason
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    stage: StageRun
    inputs: dict[str, list[Row]]
    out_dir: Path
    llm: Any = None  # orca_recipe.llm.door.LLM
    usage: Any = None  # orca_recipe.llm.door.Usage
    endpoint_for: Callable[[str], str] = lambda agent: agent  # agent -> endpoint name in the door
    set_total: Callable[[int], None] = lambda n: None
    advance: Callable[[int], None] = lambda n=1: None  # type: ignore[misc]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def section(self) -> Any:
        """The recipe section this stage runs (typed), e.g. recipe.evolve for evolve."""
        return self.stage.section

    def prompt(self, agent: str) -> Prompt:
        prompt = self.stage.agent(agent).prompt
        assert prompt is not None, f"{self.stage.name} calls '{agent}', whose prompt the compiler did not load"
        return prompt

    def messages(self, agent: str, **variables: Any) -> list[dict[str, str]]:
        a = self.stage.agent(agent)
        msgs = [{"role": "system", "content": a.system}] if a.system else []
        msgs.append({"role": "user", "content": self.prompt(agent).render(**variables)})
        return msgs

    def sampling(self, agent: str, **override: Any) -> dict[str, Any]:
        s = dict(self.stage.agent(agent).sampling)
        s.update({k: v for k, v in override.items() if v is not None})
        s.setdefault("seed", 0)
        return s

    async def ask(self, agent: str, variables: dict[str, Any], *, sample_index: int = 0, **sampling: Any) -> Any:
        """One completion for `agent` (cached by the door)."""
        return await self.llm.complete(
            self.endpoint_for(agent), self.messages(agent, **variables), self.sampling(agent, **sampling),
            sample_index=sample_index, usage=self.usage,
        )

    async def ask_parsed(
        self, agent: str, variables: dict[str, Any], parse: Callable[[str], T | None], *, retries: int = 2, **sampling: Any
    ) -> tuple[T, Any]:
        """Ask, parse; on unparseable output retry with another sample (warmer), then give up."""
        text = ""
        for attempt in range(retries + 1):
            extra = dict(sampling)
            if attempt:
                extra["temperature"] = max(0.7, float(self.sampling(agent, **sampling).get("temperature", 0)))
            comp = await self.ask(agent, variables, sample_index=attempt, **extra)
            text = comp.text
            parsed = parse(text)
            if parsed is not None:
                return parsed, comp
        raise ParseFailure(f"unparseable reply from '{agent}' after {retries + 1} tries", text)


async def map_bounded(items: Iterable[T], fn: Callable[[T], Awaitable[R]], limit: int) -> list[R]:
    """Run `fn` over items with at most `limit` in flight; results in input order.

    Workers pull from a shared iterator, so memory holds `limit` coroutines, not one per row.
    """
    items = list(items)
    results: list[Any] = [None] * len(items)
    it = iter(enumerate(items))

    async def worker() -> None:
        for i, item in it:
            results[i] = await fn(item)

    await asyncio.gather(*(worker() for _ in range(max(1, min(limit, len(items))))))
    return results


def collect(results: list[tuple[Any, Row | None]]) -> tuple[list[Row], list[Row]]:
    """Split per-item (output, failure) pairs into the stage's rows and its failures table.

    An output is one row, a list of rows, or None when the item failed.
    """
    rows: list[Row] = []
    failures: list[Row] = []
    for out, fail in results:
        if isinstance(out, list):
            rows.extend(out)
        elif out is not None:
            rows.append(out)
        if fail is not None:
            failures.append(fail)
    return rows, failures


def failure_row(row_id: str, stage: str, reason: str, **extra: Any) -> Row:
    return {"id": row_id, "stage": stage, "reason": reason, **extra}
