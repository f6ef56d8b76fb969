"""The teacher solves every problem: k samples, answer agreement, length cap, gold check.
A sample cut off at max_tokens (finish_reason "length") never counts as an answer.

Two ways to ground a weak teacher in gold (the paper's DMath rule, §3.2): `gold_solutions`
takes a seed's own worked solution instead of asking the model, and `keep_if_gold_matches`
keeps, of the teacher's k samples, one whose final answer equals the gold answer
(rejection sampling), rejecting the problem when none does.

Every problem ends up in exactly one place: the output (with its solution and final
answer), the rejects table (with why it was dropped), or the failures table.
"""

from __future__ import annotations

from collections import Counter

from orca_recipe.answers import equivalent, extract_final, gsm8k_worked_solution, to_number
from orca_recipe.llm.door import LLMError
from orca_recipe.recipe.schema import Solve
from orca_recipe.stages.base import Row, StageContext, StageResult, failure_row, map_bounded


def _answer_key(answer: str) -> str:
    n = to_number(answer)
    return str(n) if n is not None else answer.strip().lower()


def lineage(p: Row) -> Row:
    return {"id": p["id"], "question": p["question"], **{k: p.get(k) for k in ("seed_id", "parent_id", "origin", "round")}}


def judge_samples(cfg: Solve, p: Row, texts: list[str], cut: list[bool]) -> tuple[str, Row]:
    """("row" | "reject", row) for a problem's teacher samples: gold decides where there is one
    (`keep_if_gold_matches`), else the samples' majority answer, within `max_answer_chars`."""
    base = lineage(p)
    samples = []
    for text, was_cut in zip(texts, cut):
        ans, how = extract_final(text)
        samples.append((text.strip(), None if was_cut else ans, how))  # a reply cut at max_tokens has no final answer
    answered = [s for s in samples if s[1] is not None]
    if not answered:
        reason = "cut_off: every sample reached max_tokens" if all(cut) else "no_final_answer"
        return "reject", base | {"reason": reason, "solution": samples[0][0][:2000]}
    fits = [s for s in answered if cfg.max_answer_chars is None or len(s[0]) <= cfg.max_answer_chars]
    gold = p.get("gold")
    if cfg.keep_if_gold_matches and gold is not None:
        right = [s for s in answered if equivalent(s[1], gold) is True]
        if not right:
            return "reject", base | {"reason": f"gold_mismatch: 0/{len(texts)} samples equal the gold answer",
                                     "answers": [s[1] for s in samples], "gold": gold}
        kept = [s for s in right if s in fits]
        if not kept:
            return "reject", base | {"reason": f"too_long: {min(len(s[0]) for s in right)} chars > {cfg.max_answer_chars}"}
        solution, answer, how = kept[0]
        return "row", base | {"solution": solution, "final_answer": answer, "answer_extraction": how,
                              "agreement": len(right), "samples": cfg.samples, "gold": gold, "teacher": "model"}
    votes = Counter(_answer_key(s[1]) for s in answered)
    top, count = votes.most_common(1)[0]
    if count < cfg.min_agreement:
        return "reject", base | {"reason": f"agreement {count}/{cfg.samples} < {cfg.min_agreement}", "answers": [s[1] for s in samples]}
    fitting = [s for s in fits if _answer_key(s[1]) == top]
    if not fitting:
        longest = min(len(s[0]) for s in answered if _answer_key(s[1]) == top)
        return "reject", base | {"reason": f"too_long: {longest} chars > {cfg.max_answer_chars}"}
    solution, answer, how = fitting[0]
    return "row", base | {"solution": solution, "final_answer": answer, "answer_extraction": how,
                          "agreement": count, "samples": cfg.samples, "gold": gold, "teacher": "model"}


async def run(ctx: StageContext) -> StageResult:
    cfg: Solve = ctx.section
    problems = [p for name in cfg.inputs for p in ctx.inputs[name]]
    ctx.set_total(len(problems))
    agent = cfg.agent

    def worked(p: Row) -> str | None:
        if not (cfg.gold_solutions and p.get("origin") == "seeds" and p.get("gold") is not None):
            return None
        return gsm8k_worked_solution(p.get("answer") or "")

    async def one(p: Row) -> tuple[str, Row]:
        solution = worked(p)
        if solution is not None:
            ctx.advance(1)
            return "row", lineage(p) | {"solution": solution, "final_answer": p["gold"], "answer_extraction": "gold",
                                        "agreement": None, "samples": 0, "gold": p["gold"], "teacher": "gold"}
        try:
            comps = await ctx.llm.complete_n(
                ctx.endpoint_for(agent), ctx.messages(agent, problem=p["question"]), ctx.sampling(agent), cfg.samples, usage=ctx.usage
            )
        except LLMError as e:
            return "failure", failure_row(p["id"], "solve", f"llm: {e}")
        finally:
            ctx.advance(1)
        return judge_samples(cfg, p, [c.text for c in comps], [c.finish_reason == "length" for c in comps])

    rows: list[Row] = []
    rejects: list[Row] = []
    failures: list[Row] = []
    for kind, row in await map_bounded(problems, one, ctx.extra["parallel"]):
        {"row": rows, "reject": rejects, "failure": failures}[kind].append(row)
    reasons = Counter(r["reason"].split(":")[0] for r in rejects)
    return StageResult(rows=rows, rejects=rejects, failures=failures, report={
        "problems": len(problems), "rejected_by_reason": dict(reasons), "solved_by": dict(Counter(r["teacher"] for r in rows))})
