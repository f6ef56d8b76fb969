"""Student practice (Orca-Math §4): the current checkpoint samples n solutions per problem."""

from __future__ import annotations

from orca_recipe.answers import extract_final
from orca_recipe.llm.door import LLMError
from orca_recipe.recipe.schema import Practice
from orca_recipe.stages.base import Row, StageContext, StageResult, collect, failure_row, map_bounded


async def run(ctx: StageContext) -> StageResult:
    cfg: Practice = ctx.section
    assert cfg is not None
    it = ctx.stage.iteration
    problems = ctx.inputs["filter"][: cfg.problems] if cfg.problems else ctx.inputs["filter"]
    ctx.set_total(len(problems))
    sampling = ctx.sampling(cfg.agent, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed + 1000 * (it or 0))

    async def one(p: Row) -> tuple[list[Row], Row | None]:
        try:
            comps = await ctx.llm.complete_n(
                ctx.endpoint_for(cfg.agent), ctx.messages(cfg.agent, problem=p["question"]), sampling, cfg.samples_per_problem, usage=ctx.usage
            )
        except LLMError as e:
            return [], failure_row(p["id"], "practice", f"llm: {e}", iteration=it)
        finally:
            ctx.advance(1)
        out = []
        for i, c in enumerate(comps):
            ans, how = extract_final(c.text)
            out.append({
                "id": f"{p['id']}#it{it}s{i}", "problem_id": p["id"], "iteration": it, "sample_index": i,
                "question": p["question"], "response": c.text.strip(), "response_answer": ans, "answer_extraction": how,
            })
        return out, None

    rows, failures = collect(await map_bounded(problems, one, ctx.extra["parallel"]))
    return StageResult(rows=rows, failures=failures, report={"problems": len(problems), "samples": len(rows)})
