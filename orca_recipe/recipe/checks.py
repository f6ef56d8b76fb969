"""Cross-key checks pydantic cannot do alone (an agent names a model that exists, a stage reads
a stage that is configured, ...), each failing with the recipe key and its file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NoReturn

from orca_recipe.chat_template import KNOWN as KNOWN_TEMPLATES
from orca_recipe.chat_template import folder_has_template, template_text
from orca_recipe.errors import UserError
from orca_recipe.prompts import Prompt, check_template, load_prompt
from orca_recipe.recipe.load import Loaded
from orca_recipe.recipe.schema import DEEPSPEED_PRESETS, Recipe

Key = tuple[str | int, ...]
Fail = Callable[[Key, str], NoReturn]


def agent_roles(recipe: Recipe) -> dict[tuple[str, ...], tuple[str, str]]:
    """(key path of an agent reference) -> (agent name, role)."""
    refs: dict[tuple[str, ...], tuple[str, str]] = {}
    if recipe.ask_me_anything:
        refs[("ask_me_anything", "agent")] = (recipe.ask_me_anything.agent, "ask_me_anything")
    if recipe.evolve:
        refs[("evolve", "suggester")] = (recipe.evolve.suggester, "suggester")
        refs[("evolve", "editor")] = (recipe.evolve.editor, "editor")
        if recipe.evolve.verifier:
            refs[("evolve", "verifier")] = (recipe.evolve.verifier, "verifier")
    refs[("solve", "agent")] = (recipe.solve.agent, "solver")
    if recipe.judge.agent and recipe.judge.mode != "exact" and recipe.iterations > 1:
        refs[("judge", "agent")] = (recipe.judge.agent, "judge")
    if recipe.practice and recipe.iterations > 1:
        refs[("practice", "agent")] = (recipe.practice.agent, "student")
    if recipe.eval:
        refs[("eval", "agent")] = (recipe.eval.agent, "student")
    return refs


def check_references(recipe: Recipe, loaded: Loaded) -> dict[str, Prompt]:
    """Every cross-key check, in the order a reader meets the keys; returns the loaded prompt of
    every agent a stage uses (agent name -> template)."""

    def fail(key: Key, msg: str) -> NoReturn:
        raise UserError(msg, where=loaded.where(key), key=".".join(str(k) for k in key))

    _check_models(recipe, loaded, fail)
    refs = agent_roles(recipe)
    for key, (agent_name, _role) in refs.items():
        if agent_name not in recipe.agents:
            fail(key, f"unknown agent '{agent_name}'; agents: {', '.join(recipe.agents)}")
    _check_stages(recipe, fail)
    _check_training(recipe, refs, fail)
    return _load_prompts(recipe, loaded, refs)


def _check_models(recipe: Recipe, loaded: Loaded, fail: Fail) -> None:
    for name, agent in recipe.agents.items():
        if agent.model not in recipe.models:
            fail(("agents", name, "model"), f"unknown model '{agent.model}'; models: {', '.join(recipe.models)}")
    for name, m in recipe.models.items():
        local = m.local
        if local is None:
            continue
        if local.chat_template is not None:
            tkey = ("models", name, "local", "chat_template")
            template_text(local.chat_template, key=".".join(tkey), where=loaded.where(tkey))
        elif local.path and Path(local.path).is_dir() and not folder_has_template(Path(local.path)):
            fail(("models", name, "local", "path"),
                 f"the model folder {local.path} has no chat template (its tokenizer_config.json has no 'chat_template', and there is no "
                 f"chat_template.jinja): vLLM would refuse every chat request. A base model needs one: set "
                 f"models.{name}.local.chat_template to {' or '.join(repr(k) for k in KNOWN_TEMPLATES)} or a Jinja file")


def _check_stages(recipe: Recipe, fail: Fail) -> None:
    if recipe.iterations > 1 and recipe.judge.mode != "exact" and not recipe.judge.agent:
        fail(("judge", "mode"), f"judge mode '{recipe.judge.mode}' needs judge.agent")
    for i, inp in enumerate(recipe.solve.inputs):
        if inp != "seeds" and getattr(recipe, inp) is None:
            fail(("solve", "inputs", i), f"solve reads '{inp}', but that stage is not configured")
    if recipe.solve.samples > 1 and not recipe.sampling_for(recipe.solve.agent).temperature:
        fail(("solve", "samples"), f"{recipe.solve.samples} samples per problem need a sampling temperature > 0 for agent "
                                   f"'{recipe.solve.agent}' (greedy samples are all the same; vLLM refuses n > 1 at temperature 0)")
    if recipe.practice and recipe.iterations > 1 and recipe.practice.samples_per_problem > 1 and recipe.practice.temperature == 0:
        fail(("practice", "temperature"), f"{recipe.practice.samples_per_problem} samples per problem need a temperature > 0 "
                                          "(greedy samples are all the same)")
    if recipe.solve.gold_solutions:
        if "seeds" not in recipe.solve.inputs:
            fail(("solve", "gold_solutions"), "gold_solutions takes the seeds' worked solutions, but solve.inputs has no 'seeds'")
        if recipe.seeds.answer_format != "gsm8k" or not recipe.seeds.answer_field:
            fail(("solve", "gold_solutions"), "gold_solutions needs seeds with worked solutions: seeds.answer_format gsm8k "
                                              "(a solution ending in '#### N') and an answer_field")
    if recipe.evolve and recipe.evolve.input == "ask_me_anything" and recipe.ask_me_anything is None:
        fail(("evolve", "input"), "evolve reads ask_me_anything, but that stage is not configured")


def _check_training(recipe: Recipe, refs: dict[tuple[str, ...], tuple[str, str]], fail: Fail) -> None:
    if recipe.iterations > 1:
        if recipe.training is None:
            fail(("iterations",), "iterations > 1 needs a 'training' section")
        if recipe.practice is None:
            fail(("iterations",), "iterations > 1 needs a 'practice' section")
    if recipe.training is None:
        return
    student = recipe.training.student
    if student not in recipe.models:
        fail(("training", "student"), f"unknown model '{student}'; models: {', '.join(recipe.models)}")
    if recipe.models[student].local is None:
        fail(("training", "student"), f"the student '{student}' must be a local model folder (`local:`) to be trained")
    ds = recipe.training.distributed.deepspeed
    if ds is not None and ds not in DEEPSPEED_PRESETS and not Path(ds).is_file():
        fail(("training", "distributed", "deepspeed"), f"DeepSpeed config file not found: {ds}")
    for key in (("practice", "agent"), ("eval", "agent")):
        if key in refs and recipe.agents[refs[key][0]].model != student:
            fail(key, f"agent '{refs[key][0]}' must run on the student model '{student}': {key[0]} samples the trained checkpoints")


def _load_prompts(recipe: Recipe, loaded: Loaded, refs: dict[tuple[str, ...], tuple[str, str]]) -> dict[str, Prompt]:
    """Each used agent's template, loaded and checked against every role it plays."""
    roles_by_agent: dict[str, set[str]] = {}
    for agent_name, role in refs.values():
        roles_by_agent.setdefault(agent_name, set()).add(role)
    prompts: dict[str, Prompt] = {}
    for agent_name, roles in roles_by_agent.items():
        agent = recipe.agents[agent_name]
        key = ("agents", agent_name, "prompt" if agent.prompt else "template")
        where = loaded.where(key)
        prompt = load_prompt(agent.prompt, agent.template, key=".".join(key), where=where)
        check_template(prompt, roles, key=".".join(key), where=where)
        prompts[agent_name] = prompt
    return prompts
