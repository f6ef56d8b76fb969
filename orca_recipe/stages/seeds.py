"""Seed problems from a local file or a `datasets` folder: fields mapped, shuffled, limited;
unusable rows are rejects with their line (orca_recipe.problems)."""

from __future__ import annotations

from orca_recipe.problems import held_out_questions, load_problems
from orca_recipe.recipe.schema import Seeds
from orca_recipe.stages.base import StageContext, StageResult


async def run(ctx: StageContext) -> StageResult:
    s: Seeds = ctx.section
    got = load_problems(s.path, s.format, s.question_field, s.answer_field, s.answer_format,
                        limit=s.limit, shuffle=s.shuffle, seed=s.seed, prefix="seed", key="seeds.path", max_steps=s.max_solution_steps,
                        held_out=held_out_questions(s.holdout, key="seeds.holdout"))
    for r in got.rows:
        r.update(seed_id=r["id"], parent_id=None, origin="seeds", round=0)
    ctx.set_total(got.read)
    ctx.advance(got.read)
    return StageResult(rows=got.rows, rejects=got.rejects, report=got.report())
