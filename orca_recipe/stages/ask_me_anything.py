"""Ask-Me-Anything (Orca-Math §3.1): each seed becomes several new questions."""

from __future__ import annotations

from orca_recipe.llm.door import LLMError
from orca_recipe.recipe.schema import AskMeAnything
from orca_recipe.stages.base import NUMBERED_ITEM, ParseFailure, Row, StageContext, StageResult, collect, failure_row, map_bounded


def parse_questions(text: str) -> list[str] | None:
    """Numbered (or bulleted) lines that read as questions, else any line that is a
    whole word problem ending in '?'; None when there are none."""
    numbered, plain = [], []
    for line in text.splitlines():
        m = NUMBERED_ITEM.match(line)
        q = (m.group(1) if m else line).strip().strip('"')
        if q.lower().startswith(("question:", "problem:")):
            q = q.split(":", 1)[1].strip()
        if "?" not in q:
            continue
        if m and len(q) >= 15:
            numbered.append(q)
        elif not m and len(q) >= 40 and any(ch.isdigit() for ch in q):
            plain.append(q)
    return numbered or plain or None


async def run(ctx: StageContext) -> StageResult:
    cfg: AskMeAnything = ctx.section
    assert cfg is not None
    seeds = ctx.inputs["seeds"][: cfg.limit] if cfg.limit else ctx.inputs["seeds"]
    ctx.set_total(len(seeds))

    async def one(seed: Row) -> tuple[list[Row], Row | None]:
        try:
            questions, _ = await ctx.ask_parsed(cfg.agent, {"problem": seed["question"], "answer": seed["answer"], "n": cfg.questions_per_seed}, parse_questions)
        except ParseFailure as e:
            return [], failure_row(seed["id"], "ask_me_anything", e.reason, reply=e.text[:500])
        except LLMError as e:
            return [], failure_row(seed["id"], "ask_me_anything", f"llm: {e}")
        finally:
            ctx.advance(1)
        out = [
            {"id": f"ama-{seed['id']}-{k}", "question": q, "seed_id": seed["seed_id"], "parent_id": seed["id"], "origin": "ask_me_anything", "round": 0, "gold": None}
            for k, q in enumerate(questions[: cfg.questions_per_seed])
        ]
        return out, None

    rows, failures = collect(await map_bounded(seeds, one, ctx.extra["parallel"]))
    return StageResult(rows=rows, failures=failures, report={"seeds": len(seeds), "questions": len(rows)})
