"""pass@1 (greedy) on the eval set for the base model or a checkpoint, with a 95% interval."""

from __future__ import annotations

from orca_recipe.answers import equivalent, extract_final
from orca_recipe.llm.door import LLMError
from orca_recipe.problems import load_problems
from orca_recipe.recipe.schema import Eval
from orca_recipe.stages.base import Row, StageContext, StageResult, collect, failure_row, map_bounded
from orca_recipe.stats import wilson  # re-exported: one copy, in orca_recipe.stats


async def run(ctx: StageContext) -> StageResult:
    ev: Eval = ctx.section
    assert ev is not None
    got = load_problems(ev.path, "auto", ev.question_field, ev.answer_field, ev.answer_format, limit=ev.limit, shuffle=False,
                        seed=0, prefix="eval", key="eval.path", max_steps=ev.max_solution_steps, need_gold=True)
    problems = got.rows  # a problem whose gold cannot be parsed is a reject, not a wrong answer
    ctx.set_total(len(problems))

    async def one(p: Row) -> tuple[Row | None, Row | None]:
        try:
            comp = await ctx.ask(ev.agent, {"problem": p["question"]}, temperature=0.0, top_p=1.0, max_tokens=ev.max_tokens)
        except LLMError as e:
            return None, failure_row(p["id"], ctx.stage.name, f"llm: {e}")
        finally:
            ctx.advance(1)
        ans, how = extract_final(comp.text)
        cut = comp.finish_reason == "length"
        ok = equivalent(ans, p["gold"]) is True and not (cut and ev.truncated == "wrong")
        return {"id": p["id"], "question": p["question"], "gold": p["gold"], "response": comp.text.strip(), "answer": ans, "answer_extraction": how, "correct": ok,
                "finish_reason": comp.finish_reason}, None  # "length": truncated at max_tokens (eval.truncated's rule), counted in the report

    rows, failures = collect(await map_bounded(problems, one, ctx.extra.get("parallel", 16)))
    n = len(problems)  # a failed request counts as wrong: pass@1 is over the whole eval set
    correct = sum(r["correct"] for r in rows)
    lo, hi = wilson(correct, n)
    model = ctx.stage.config.get("model_from") or "base"
    return StageResult(rows=rows, rejects=got.rejects, failures=failures,
                       report={"model": model, "n": n, "correct": correct, "pass_at_1": correct / n if n else 0.0, "ci95": [lo, hi]})
