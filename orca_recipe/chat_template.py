"""The chat template a local model is served, trained and evaluated with.

A base model (the paper's Mistral-7B-v0.1) ships no chat template: vLLM then answers every
chat request with 400 and Axolotl's `tokenizer_default` raises, so such a student is refused
at `validate` unless the recipe names one (`models.NAME.local.chat_template`: a name below or
a Jinja file). The one text reaches vLLM (`--chat-template`), Axolotl (`chat_template_jinja`)
and the preference writer alike, and is part of the model's identity in every fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path

from orca_recipe.bounded import read_text
from orca_recipe.errors import UserError

# ChatML (the SmolLM2 / Qwen format), for a base model whose tokenizer has no template.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Mistral's instruction format ([INST] ... [/INST] answer</s>): made of tokens Mistral-7B-v0.1's
# own vocabulary has (bos/eos), so a base model learns it in SFT without new embeddings.
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
KNOWN: dict[str, str] = {"chatml": CHATML, "mistral": MISTRAL}


def template_text(value: str, *, key: str, where: str | None = None) -> str:
    """The Jinja source a recipe's `chat_template` names: a known name, else a file."""
    if value in KNOWN:
        return KNOWN[value]
    p = Path(value)
    if not p.exists() and not p.is_symlink():
        raise UserError(f"chat template not found: {value} (a file, or one of: {', '.join(KNOWN)})", where=where, key=key)
    text = read_text(p, "chat template", key=key, where=where)  # regular files only, at most 1 MiB
    if "messages" not in text:
        raise UserError(f"chat template {value} never reads `messages`: it would send every model the same text", where=where, key=key)
    from jinja2 import Environment, TemplateSyntaxError

    try:
        Environment().parse(text)
    except TemplateSyntaxError as e:
        raise UserError(f"chat template {value}:{e.lineno}: {e.message}", where=where, key=key) from None
    except RecursionError:
        raise UserError(f"chat template {value} is nested too deeply for Jinja to read", where=where, key=key) from None
    return text


def folder_has_template(folder: Path) -> bool:
    """Whether a Hugging Face model folder's tokenizer carries a chat template."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    cfg = folder / "tokenizer_config.json"
    if not cfg.is_file() or cfg.stat().st_size > 64 << 20:
        return False
    try:
        return bool(json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False
