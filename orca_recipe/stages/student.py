"""The student's side of training data, shared by SFT and preference rows: the exact turns it
sees in practice and eval, rendered with its own chat template."""

from __future__ import annotations

from orca_recipe.stages.base import StageContext


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
    local = ctx.stage.student  # the compiler gives it to every stage that trains or writes training rows
    if local.embedded:
        from orca_recipe.llm.embedded import ensure_embedded_model

        return str(ensure_embedded_model(local.embedded))
    return local.path
