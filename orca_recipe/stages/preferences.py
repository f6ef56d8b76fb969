"""Preference data from judged practice: KTO rows or DPO pairs (Orca-Math §4).

KTO: each judged sample is a row, correct = desirable. DPO: each incorrect sample is paired
with a correct one — a correct student sample if the problem has any, else the teacher's
solution (as the paper does when the student never gets it right).
"""

from __future__ import annotations

from collections import defaultdict

from orca_recipe.recipe.schema import Preferences
from orca_recipe.stages.base import Row, StageContext, StageResult
from orca_recipe.stages.student import ChatFormat, student_folder, student_prompt


def kto_rows(groups: dict[str, list[Row]], teacher: dict[str, Row], prompt_of, *, max_per_problem: int | None,
             teacher_fallback: bool, drop_all_correct: bool, fmt: ChatFormat | None = None) -> list[Row]:
    """One row per judged sample (correct = desirable). With `fmt`, `prompt` and `completion`
    are the chat-formatted texts the trainer sees; `user` and `response` keep the plain ones."""
    rows = []
    for pid, samples in groups.items():
        if drop_all_correct and all(s["correct"] for s in samples):
            continue
        user = prompt_of(samples[0]["question"])
        replies = [(s["id"], s["response"], bool(s["correct"]), "student") for s in samples]
        if teacher_fallback and not any(s["correct"] for s in samples) and pid in teacher:
            replies.append((f"{pid}#teacher", teacher[pid]["solution"], True, "teacher"))
        prompt = fmt.prompt(user) if fmt else user  # rendered once per problem
        out = [{"id": rid, "problem_id": pid, "prompt": prompt,
                "completion": fmt.completion(user, text, prompt) if fmt else text, "label": label, "source": source,
                "user": user, "response": text} for rid, text, label, source in replies]
        rows.extend(out[:max_per_problem] if max_per_problem else out)
    return rows


def dpo_pairs(groups: dict[str, list[Row]], teacher: dict[str, Row], prompt_of, *, max_per_problem: int | None,
              teacher_fallback: bool) -> list[Row]:
    rows = []
    for pid, samples in groups.items():
        wrong = [s for s in samples if not s["correct"]]
        right = [(s["response"], s["id"], "student") for s in samples if s["correct"]]
        if not right and teacher_fallback and pid in teacher:
            right = [(teacher[pid]["solution"], f"{pid}#teacher", "teacher")]
        if not wrong or not right:
            continue
        prompt = prompt_of(samples[0]["question"])
        pairs = []
        for k, w in enumerate(wrong):
            text, cid, source = right[k % len(right)]
            pairs.append({
                "id": f"{w['id']}|{cid}", "problem_id": pid,
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": text}],
                "rejected": [{"role": "assistant", "content": w["response"]}],
                "chosen_id": cid, "chosen_source": source, "rejected_id": w["id"],
            })
        rows.extend(pairs[:max_per_problem] if max_per_problem else pairs)
    return rows


async def run(ctx: StageContext) -> StageResult:
    cfg: Preferences = ctx.section
    judged = ctx.inputs[ctx.stage.inputs[0]]
    teacher = {r["id"]: r for r in ctx.inputs["filter"]}
    groups: dict[str, list[Row]] = defaultdict(list)
    for s in judged:
        groups[s["problem_id"]].append(s)
    ctx.set_total(len(groups))

    def prompt_of(question: str) -> str:
        return student_prompt(ctx, question)

    if cfg.kind == "kto":
        rows = kto_rows(groups, teacher, prompt_of, max_per_problem=cfg.max_per_problem, teacher_fallback=cfg.teacher_fallback,
                        drop_all_correct=cfg.drop_all_correct, fmt=ChatFormat(student_folder(ctx), ctx.stage.config.get("chat_template")))
        report = {"kind": "kto", "rows": len(rows), "desirable": sum(r["label"] for r in rows), "undesirable": sum(not r["label"] for r in rows),
                  "teacher_rows": sum(r["source"] == "teacher" for r in rows)}
    else:
        rows = dpo_pairs(groups, teacher, prompt_of, max_per_problem=cfg.max_per_problem, teacher_fallback=cfg.teacher_fallback)
        report = {"kind": "dpo", "pairs": len(rows), "teacher_chosen": sum(r["chosen_source"] == "teacher" for r in rows),
                  "problems_all_correct": sum(all(s["correct"] for s in g) for g in groups.values())}
    report["problems"] = len(groups)
    ctx.advance(len(groups))
    return StageResult(rows=rows, report=report)
