"""The teacher solves every problem: k samples, answer agreement, length cap, gold check.

Every problem ends up in exactly one place: the output (with its solution and final
answer), the rejects table (with why it was dropped), or the failures table.
"""

from __future__ import annotations

from collections import Counter

from orca_recipe.answers import equivalent, extract_final, to_number
from orca_recipe.stages.base import Row, StageContext, StageResult, failure_row, map_bounded


def _answer_key(answer: str) -> str:
    n = to_number(answer)
    return str(n) if n is not None else answer.strip().lower()


async def run(ctx: StageContext) -> StageResult:
    cfg = ctx.recipe.solve
    problems = [p for name in cfg.inputs for p in ctx.inputs[name]]
    ctx.set_total(len(problems))
    agent = cfg.agent

    async def one(p: Row) -> tuple[str, Row]:
        try:
            comps = await ctx.llm.complete_n(
                ctx.endpoint_for(agent), ctx.messages(agent, problem=p["question"]), ctx.sampling(agent), cfg.samples, usage=ctx.usage
            )
        except ctx.extra["LLMError"] as e:
            return "failure", failure_row(p["id"], "solve", f"llm: {e}")
        finally:
            ctx.advance(1)
        samples = []
        for c in comps:
            ans, how = extract_final(c.text)
            samples.append((c.text.strip(), ans, how))
        lineage = {k: p.get(k) for k in ("seed_id", "parent_id", "origin", "round")}
        base = {"id": p["id"], "question": p["question"], **lineage}
        answered = [s for s in samples if s[1] is not None]
        if not answered:
            return "reject", base | {"reason": "no_final_answer", "solution": samples[0][0][:2000]}
        votes = Counter(_answer_key(s[1]) for s in answered)
        top, count = votes.most_common(1)[0]
        if count < cfg.min_agreement:
            return "reject", base | {"reason": f"agreement {count}/{cfg.samples} < {cfg.min_agreement}", "answers": [s[1] for s in samples]}
        fitting = [s for s in answered if _answer_key(s[1]) == top and (cfg.max_answer_chars is None or len(s[0]) <= cfg.max_answer_chars)]
        if not fitting:
            longest = min(len(s[0]) for s in answered if _answer_key(s[1]) == top)
            return "reject", base | {"reason": f"too_long: {longest} chars > {cfg.max_answer_chars}"}
        solution, answer, how = fitting[0]
        if cfg.keep_if_gold_matches and p.get("gold") is not None and equivalent(answer, p["gold"]) is not True:
            return "reject", base | {"reason": "gold_mismatch", "answer": answer, "gold": p["gold"]}
        return "row", base | {"solution": solution, "final_answer": answer, "answer_extraction": how,
                              "agreement": count, "samples": cfg.samples, "gold": p.get("gold")}

    rows, rejects, failures = [], [], []
    for kind, row in await map_bounded(problems, one, ctx.extra["parallel"]):
        {"row": rows, "reject": rejects, "failure": failures}[kind].append(row)
    reasons = Counter(r["reason"].split(":")[0] for r in rejects)
    return StageResult(rows=rows, rejects=rejects, failures=failures, report={"problems": len(problems), "rejected_by_reason": dict(reasons)})
