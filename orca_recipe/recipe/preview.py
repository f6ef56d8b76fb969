"""What `plan` shows without spending a token: example prompts and token/cost estimates."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from orca_recipe.errors import UserError
from orca_recipe.prices import batch_price, known_price
from orca_recipe.problems import Records
from orca_recipe.recipe.compile import Plan, agent_roles
from orca_recipe.recipe.schema import Recipe


def first_row(path: str, fmt: str, question_field: str, answer_field: str | None, key: str) -> dict[str, str] | None:
    """The first row with a question, in any format the stages read (through the same bounded
    reader), as {question, answer}; None when the file is missing or unreadable: `plan` shows
    the user's own data, and leaves the errors to `validate` and `run`."""
    try:
        for _line, rec in Records(path, fmt, key=key).scan():
            if isinstance(rec, dict) and isinstance(rec.get(question_field), str) and rec[question_field].strip():
                answer = rec.get(answer_field) if answer_field else None
                return {"question": rec[question_field], "answer": "" if answer is None else str(answer)}
    except UserError:
        return None
    return None


def example_row(recipe: Recipe) -> tuple[dict[str, str], str]:
    """The first seed row, or the eval set's first row when the seeds are not there yet."""
    s = recipe.seeds
    row = first_row(s.path, s.format, s.question_field, s.answer_field, "seeds.path")
    if row is not None:
        return row, f"first seed row of {display_path(s.path)}"
    if recipe.eval is not None:
        row = first_row(recipe.eval.path, "auto", recipe.eval.question_field, recipe.eval.answer_field, "eval.path")
        if row is not None:
            return row, f"first eval row of {display_path(recipe.eval.path)} (no usable seed row)"
    return {"question": "<a seed problem>", "answer": "<its answer>"}, "placeholder (no data found)"


def role_variables(recipe: Recipe, role: str, row: dict[str, str]) -> dict[str, Any]:
    q, a = row["question"], row["answer"]
    final = a.rsplit("####", 1)[-1].strip() if "####" in a else a
    ev, ama = recipe.evolve, recipe.ask_me_anything
    by_role: dict[str, dict[str, Any]] = {
        "ask_me_anything": {"problem": q, "answer": a, "n": ama.questions_per_seed if ama else 3},
        "suggester": {"problem": q, "n": ev.suggestions_per_round if ev else 3, "round": 1},
        "editor": {"problem": q, "suggestions": "1. <first suggestion from the suggester>\n2. <second suggestion>", "round": 1},
        "verifier": {"problem": q},
        "solver": {"problem": q},
        "judge": {"problem": q, "reference": a, "reference_answer": final, "response": "<the student's solution>", "response_answer": "<the student's final answer>"},
        "student": {"problem": q},
    }
    return by_role[role]


def example_prompts(plan: Plan) -> tuple[dict[str, tuple[str, str]], str]:
    """agent name -> (role, rendered prompt), and where the example row came from."""
    row, source = example_row(plan.recipe)
    out: dict[str, tuple[str, str]] = {}
    for _key, (agent, role) in agent_roles(plan.recipe).items():
        if agent not in out:
            out[agent] = (role, plan.prompts[agent].render(**role_variables(plan.recipe, role, row)))
    return out, source


def price_per_token(recipe: Recipe, model_key: str) -> tuple[float, float] | None:
    """(input, output) USD per token: the recipe's declared price, else litellm's, else None;
    at the batch rate when the model sends its requests as batch jobs (`batch: true`)."""
    m = recipe.models[model_key]
    regular = None
    if m.price is not None:
        regular = m.price.input_per_mtok / 1e6, m.price.output_per_mtok / 1e6
    elif m.model is not None:
        regular = known_price(m.model)
    if getattr(m, "batch", False):
        return batch_price(m.model if m.price is None else None, regular)
    return regular


@dataclass
class Estimate:
    input_tokens: int
    output_tokens: int
    cost: float | None  # None: some model has no known price


def estimate(plan: Plan, examples: dict[str, tuple[str, str]]) -> dict[str, Estimate]:
    """Upper-bound tokens per stage: calls x (example prompt chars / 4 + max_tokens)."""
    recipe = plan.recipe
    out: dict[str, Estimate] = {}
    for stage in plan.stages:
        if not stage.calls or not stage.agents:
            continue
        per_agent = stage.calls / len(stage.agents)
        tin = tout = 0.0
        cost: float | None = 0.0
        for agent in stage.agents:
            prompt_tokens = len(examples[agent][1]) / 4 if agent in examples else 256
            max_tokens = stage.config.get("max_tokens") or recipe.sampling_for(agent).max_tokens or 512
            i, o = per_agent * prompt_tokens, per_agent * max_tokens
            tin, tout = tin + i, tout + o
            price = price_per_token(recipe, recipe.agents[agent].model)
            if recipe.models[recipe.agents[agent].model].local is not None:
                price = (0.0, 0.0)
            cost = None if (cost is None or price is None) else cost + i * price[0] + o * price[1]
        out[stage.name] = Estimate(int(tin), int(tout), cost)
    return out


def display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("../../..") else path


def calls_per_model(plan: Plan) -> dict[str, int]:
    """LLM calls per model key (a stage's calls shared evenly between its agents)."""
    out: dict[str, int] = {}
    for stage in plan.stages:
        if stage.calls and stage.agents:
            for agent in stage.agents:
                key = plan.recipe.agents[agent].model
                out[key] = out.get(key, 0) + stage.calls // len(stage.agents)
    return out

