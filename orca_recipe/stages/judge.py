"""The teacher judge (Orca-Math §3.3): is the student's final answer the problem setter's?

`exact` compares normalised final answers (math-verify beyond plain numbers) with the gold
answer where the problem has one, else with the teacher's; `llm` asks the judge agent and
reads "Final Verdict: Correct/Incorrect"; `exact_then_llm` asks only where exact matching
cannot decide (and a reply without a single number is wrong without asking). The exact check always runs (it is free), so `llm` mode also
reports how often the two agree.
"""

from __future__ import annotations

import re
from collections import Counter

from orca_recipe.answers import equivalent
from orca_recipe.llm.door import LLMError
from orca_recipe.recipe.schema import Judge
from orca_recipe.stages.base import ParseFailure, Row, StageContext, StageResult, collect, failure_row, map_bounded

_VERDICT = re.compile(r"final\s+verdict\s*:?\s*\**\s*(correct|incorrect)", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    found = _VERDICT.findall(text)
    if found:
        return found[-1].lower() == "correct"
    return None


def exact_verdict(sample: Row, ref: Row, mode: str) -> tuple[str, bool | None, bool | None]:
    """(reference answer, exact verdict, verdict before any LLM) for one practice sample.
    A verdict of None is what the LLM judge decides (always, in `llm` mode)."""
    reference_answer = ref.get("gold") or ref["final_answer"]  # gold where the problem has one
    exact = equivalent(sample.get("response_answer"), reference_answer)
    verdict = exact
    if exact is None and sample.get("response_answer") is None and mode == "exact_then_llm":
        verdict = False  # not a single number in the reply: nothing for a judge to weigh
    return reference_answer, exact, None if mode == "llm" else verdict


def needs_llm(ctx: StageContext) -> bool:
    """Whether any sample needs the LLM judge; the runner starts no model server when none does."""
    mode = ctx.section.mode
    if mode == "exact":
        return False
    solutions = {r["id"]: r for r in ctx.inputs["filter"]}
    return any(exact_verdict(s, solutions[s["problem_id"]], mode)[2] is None for s in ctx.inputs[ctx.stage.inputs[0]])


async def run(ctx: StageContext) -> StageResult:
    cfg: Judge = ctx.section
    solutions = {r["id"]: r for r in ctx.inputs["filter"]}
    samples = ctx.inputs[ctx.stage.inputs[0]]
    ctx.set_total(len(samples))

    async def one(s: Row) -> tuple[Row | None, Row | None]:
        ref = solutions[s["problem_id"]]
        reference_answer, exact, verdict = exact_verdict(s, ref, cfg.mode)
        by = "exact" if verdict is None or exact is not None else "no_answer"
        llm_verdict = None
        try:
            if cfg.mode != "exact" and verdict is None:
                variables = {
                    "problem": s["question"], "reference": ref["solution"], "reference_answer": reference_answer,
                    "response": s["response"], "response_answer": s.get("response_answer") or "",
                }
                llm_verdict, _ = await ctx.ask_parsed(cfg.agent, variables, parse_verdict)
                verdict, by = llm_verdict, "llm"
        except ParseFailure as e:
            return None, failure_row(s["id"], "judge", e.reason, reply=e.text[:500])
        except LLMError as e:
            return None, failure_row(s["id"], "judge", f"llm: {e}")
        finally:
            ctx.advance(1)
        if verdict is None:  # exact mode and undecidable: no evidence it is right
            verdict, by = False, "exact_undecided"
        return s | {"correct": bool(verdict), "judged_by": by, "exact_verdict": exact, "llm_verdict": llm_verdict,
                    "reference_answer": reference_answer}, None

    rows, failures = collect(await map_bounded(samples, one, ctx.extra.get("parallel", 16)))
    both = [r for r in rows if r["exact_verdict"] is not None and r["llm_verdict"] is not None]
    report = {
        "samples": len(samples), "correct": sum(r["correct"] for r in rows),
        "judged_by": dict(Counter(r["judged_by"] for r in rows)),
        "both_ran": len(both), "agreement": (sum(r["exact_verdict"] == r["llm_verdict"] for r in both) / len(both)) if both else None,
    }
    return StageResult(rows=rows, failures=failures, report=report)
