"""Preference data from judged practice: KTO rows or DPO pairs (Orca-Math §4).

KTO: each judged sample is a row, correct = desirable. DPO: each incorrect sample is paired
with a correct one — a correct student sample if the problem has any, else the teacher's
solution (as the paper does when the student never gets it right).
"""

from __future__ import annotations

from collections import defaultdict

from orca_recipe.stages.base import Row, StageContext, StageResult


def student_messages(ctx: StageContext, question: str) -> list[dict[str, str]]:
    """The exact turns the student sees (system prompt included), so training matches practice
    and eval; the agent is the one the compiler put into this stage's fingerprint."""
    agent = ctx.stage.config.get("student_agent")
    return ctx.messages(agent, problem=question) if agent else [{"role": "user", "content": question}]


def student_prompt(ctx: StageContext, question: str) -> str:
    """The user turn of `student_messages`."""
    return student_messages(ctx, question)[-1]["content"]


class ChatFormat:
    """The student's own chat template, so KTO trains on the very text SFT, serving and eval
    use (system prompt and end-of-turn tokens included)."""

    def __init__(self, model_dir: str, template: str | None = None):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if template is not None:  # the recipe's chat_template, as vLLM and Axolotl use it
            self.tokenizer.chat_template = template

    def prompt(self, user: str) -> str:
        return str(self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True))

    def completion(self, user: str, reply: str, head: str | None = None) -> str:
        """The assistant turn as the template writes it after `head` = `prompt(user)` (its
        end-of-turn tokens included); pass `head` when it is already rendered."""
        head = self.prompt(user) if head is None else head
        full = str(self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": reply}], tokenize=False))
        if not full.startswith(head):
            raise ValueError("the chat template renders a conversation's start differently from its generation prompt")
        return full[len(head):]


def student_folder(ctx: StageContext) -> str:
    """The base student's model folder (its tokenizer is every checkpoint's)."""
    local = ctx.recipe.models[ctx.recipe.training.student].local  # preferences imply training with a local student
    if local.embedded:
        from orca_recipe.llm.embedded import ensure_embedded_model

        return str(ensure_embedded_model(local.embedded))
    return local.path


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
    cfg = ctx.recipe.preferences
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
