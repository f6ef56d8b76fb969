"""Suggester/Editor evolution (Orca-Math §3.1): R rounds, each rewriting the previous round.

An optional verifier (a third agent) drops edited problems it finds unsolvable; they land in
the rejects table with its verdict, so nothing disappears silently.
"""

from __future__ import annotations

import re

from orca_recipe.llm.door import LLMError
from orca_recipe.recipe.schema import Evolve
from orca_recipe.stages.base import NUMBERED_ITEM, ParseFailure, Row, StageContext, StageResult, failure_row, map_bounded


def parse_suggestions(text: str) -> str | None:
    items = [m.group(1).strip() for line in text.splitlines() if (m := NUMBERED_ITEM.match(line)) and len(m.group(1).strip()) > 5]
    if items:
        return "\n".join(f"{i}. {s}" for i, s in enumerate(items, 1))
    text = text.strip()
    return text if len(text) > 10 else None


def parse_problem(text: str) -> str | None:
    """The edited problem: the text after the last 'Problem:' label, else the whole reply."""
    body = re.split(r"(?im)^\s*(?:new |harder )?problem\s*:\s*", text)[-1].strip()
    body = re.split(r"(?im)^\s*(?:solution|answer|suggestions?)\s*:", body)[0].strip()
    return body if len(body) >= 20 and any(ch.isdigit() for ch in body) else None


def parse_verdict(text: str) -> bool | None:
    m = re.search(r"verdict\s*:\s*(unsolvable|solvable)", text, re.IGNORECASE)
    if m:
        return m.group(1).lower() == "solvable"
    low = text.lower()
    if "unsolvable" in low:
        return False
    if "solvable" in low:
        return True
    return None


async def run(ctx: StageContext) -> StageResult:
    cfg: Evolve = ctx.section
    assert cfg is not None
    current = ctx.inputs[cfg.input][: cfg.limit] if cfg.limit else list(ctx.inputs[cfg.input])
    ctx.set_total(len(current) * cfg.rounds)
    kept: list[Row] = []
    rejects: list[Row] = []
    failures: list[Row] = []

    for rnd in range(1, cfg.rounds + 1):

        async def one(parent: Row, rnd: int = rnd) -> tuple[Row | None, Row | None, Row | None]:
            root = parent.get("evolve_root", parent["id"])  # the problem this lineage started from
            row_id = f"evo-{root}-r{rnd}"
            try:
                suggestions, _ = await ctx.ask_parsed(cfg.suggester, {"problem": parent["question"], "n": cfg.suggestions_per_round, "round": rnd}, parse_suggestions)
                problem, _ = await ctx.ask_parsed(cfg.editor, {"problem": parent["question"], "suggestions": suggestions, "round": rnd}, parse_problem)
                row = {"id": row_id, "question": problem, "seed_id": parent["seed_id"], "parent_id": parent["id"],
                       "origin": "evolve", "round": rnd, "evolve_root": root, "suggestions": suggestions, "gold": None}
                if cfg.verifier:
                    ok, comp = await ctx.ask_parsed(cfg.verifier, {"problem": problem}, parse_verdict)
                    if not ok:
                        return None, row | {"reason": "verifier: unsolvable", "verifier_reply": comp.text[:300]}, None
                return row, None, None
            except ParseFailure as e:
                return None, None, failure_row(row_id, "evolve", e.reason, reply=e.text[:500], round=rnd)
            except LLMError as e:
                return None, None, failure_row(row_id, "evolve", f"llm: {e}", round=rnd)
            finally:
                ctx.advance(1)

        results = await map_bounded(current, one, ctx.extra["parallel"])
        nxt = []
        for row, rej, fail in results:
            if row:
                nxt.append(row)
            if rej:
                rejects.append(rej)
            if fail:
                failures.append(fail)
        if cfg.keep_all_rounds or rnd == cfg.rounds:
            kept.extend(nxt)
        current = nxt
    by_round = {r: sum(1 for x in kept if x["round"] == r) for r in range(1, cfg.rounds + 1)}
    return StageResult(rows=kept, rejects=rejects, failures=failures, report={"kept_by_round": by_round})
