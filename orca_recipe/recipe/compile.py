"""Compile a Recipe into a Plan: the ordered stage runs, their fingerprints and call counts.

Pure and fast: it reads the recipe's prompt and data files to fingerprint them, and
nothing else; no model, no network, no heavy imports. `validate` and `plan` are this.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orca_recipe.chat_template import KNOWN as KNOWN_TEMPLATES
from orca_recipe.chat_template import folder_has_template, template_text
from orca_recipe.content import content_id
from orca_recipe.errors import UserError
from orca_recipe.home import embedded_model_dir
from orca_recipe.problems import Records, count_problems, held_out_questions
from orca_recipe.prompts import Prompt, check_template, load_prompt
from orca_recipe.recipe.load import Loaded, load_recipe
from orca_recipe.recipe.schema import DEEPSPEED_PRESETS, Agent, ModelEndpoint, Recipe
from orca_recipe.train.config import output_dir, preference_config, resume_keys, scale_keys, sft_config


@dataclass(frozen=True)
class StageRun:
    """One unit of work. `calls` counts LLM generations (each cached separately)."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    config: dict[str, Any]
    fingerprint: str
    calls: int = 0
    calls_bound: bool = False  # True: `calls` is an upper bound (e.g. exact_then_llm)
    rows: int | None = None  # planned rows out, an upper bound
    iteration: int | None = None
    agents: tuple[str, ...] = ()
    trainer_config: dict[str, Any] | None = None

    @property
    def dir_name(self) -> str:
        return self.name


@dataclass
class Plan:
    recipe: Recipe
    loaded: Loaded
    run_dir: Path
    stages: list[StageRun]
    prompts: dict[str, Prompt]  # agent name -> template
    seed_rows: int | None
    warnings: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StageRun:
        for s in self.stages:
            if s.name == name:
                return s
        raise UserError(f"no stage named '{name}'; stages: {', '.join(s.name for s in self.stages)}")

    @property
    def total_calls(self) -> int:
        return sum(s.calls for s in self.stages)


# --------------------------------------------------------------------------- fingerprints


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def portable(obj: Any, base: Path) -> Any:
    """`obj` with every absolute path written relative to `base` (the recipe's folder), so a
    project folder copied or moved elsewhere keeps its fingerprints."""
    if isinstance(obj, dict):
        return {k: portable(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, base) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and os.path.isabs(obj):
        return os.path.relpath(obj, base)
    return obj


def chat_template_of(m: ModelEndpoint) -> str | None:
    """The chat template a recipe names for a local model (its text), or None: the tokenizer's own."""
    if m.local is None or m.local.chat_template is None:
        return None
    return template_text(m.local.chat_template, key="chat_template")


def _model_identity(m: ModelEndpoint) -> dict[str, Any]:
    """What decides a model's outputs (not its rate limits, concurrency or price)."""
    if m.local is not None:
        source = {"embedded": m.local.embedded} if m.local.embedded else {"weights": content_id(m.local.path)}
        template = {"chat_template": chat_template_of(m)} if m.local.chat_template else {}  # none set: fingerprints unchanged
        return source | template | {"dtype": m.local.dtype, "sampling": m.sampling.model_dump(exclude_none=True)}
    return {"model": m.model, "api_base": m.api_base, "sampling": m.sampling.model_dump(exclude_none=True)}


def _launcher_identity(tr: Any) -> dict[str, Any]:
    """What of the launcher can change a trained model: how many processes share the global
    batch. Not how they are started (`kind`, `extra_args`, `venv`) nor per-node addressing:
    changing those must not throw a trained model away, and every node has one fingerprint."""
    return tr.launcher.model_dump(include={"num_processes", "num_nodes"})


def student_agent(recipe: Recipe) -> str | None:
    """The agent whose prompt SFT trains under: the one evaluation scores with (else practice's),
    so the student is trained on the very user turn it is measured on."""
    if recipe.eval is not None:
        return recipe.eval.agent
    return recipe.practice.agent if recipe.practice and recipe.iterations > 1 else None


def _distributed_identity(tr: Any) -> dict[str, Any]:
    """{"distributed": the sharding settings, a DeepSpeed file by its content}, or {} when unset
    (so a recipe without it keeps its fingerprints)."""
    ident = tr.distributed.model_dump(exclude_none=True)
    ds = tr.distributed.deepspeed
    if ds is not None and ds not in DEEPSPEED_PRESETS:
        ident["deepspeed"] = content_id(ds)
    return {"distributed": ident} if ident else {}


# --------------------------------------------------------------------------- checks


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
    """Cross-key checks pydantic cannot do alone; returns the loaded prompts of used agents."""

    def fail(key: tuple[str | int, ...], msg: str) -> None:
        raise UserError(msg, where=loaded.where(key), key=".".join(str(k) for k in key))

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

    refs = agent_roles(recipe)
    for key, (agent_name, _role) in refs.items():
        if agent_name not in recipe.agents:
            fail(key, f"unknown agent '{agent_name}'; agents: {', '.join(recipe.agents)}")

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

    if recipe.iterations > 1:
        if recipe.training is None:
            fail(("iterations",), "iterations > 1 needs a 'training' section")
        if recipe.practice is None:
            fail(("iterations",), "iterations > 1 needs a 'practice' section")
    if recipe.training is not None:
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

    roles_by_agent: dict[str, set[str]] = {}
    ref_key: dict[str, tuple[str, ...]] = {}
    for key, (agent_name, role) in refs.items():
        roles_by_agent.setdefault(agent_name, set()).add(role)
        ref_key.setdefault(agent_name, key)

    prompts: dict[str, Prompt] = {}
    for agent_name, roles in roles_by_agent.items():
        agent = recipe.agents[agent_name]
        key = ("agents", agent_name, "prompt" if agent.prompt else "template")
        where = loaded.where(key)
        prompt = load_prompt(agent.prompt, agent.template, key=".".join(key), where=where)
        check_template(prompt, roles, key=".".join(key), where=where)
        prompts[agent_name] = prompt
    return prompts


# --------------------------------------------------------------------------- counting


def _limited(n: int | None, limit: int | None) -> int | None:
    if n is None:
        return limit
    return n if limit is None else min(n, limit)


def student_model_path(recipe: Recipe) -> str | None:
    if recipe.training is None:
        return None
    local = recipe.models[recipe.training.student].local
    assert local is not None
    if local.path:
        return local.path
    return str(embedded_model_dir(local.embedded))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- compile


def compile_plan(recipe: Recipe, loaded: Loaded, run_dir: str | Path | None = None) -> Plan:
    prompts = check_references(recipe, loaded)
    run_dir = (Path(run_dir) if run_dir else Path("runs") / recipe.name).resolve()
    base = loaded.files[0].parent if loaded.files else Path.cwd()
    warnings: list[str] = []

    def prompt_identity(name: str | None) -> dict[str, Any]:
        """A training stage's student turn: which agent, its template and system prompt."""
        if not name:
            return {"student_agent": None}
        return {"student_agent": name, "student_prompt": prompts[name].source, "student_system": recipe.agents[name].system}

    def agent_identity(name: str | None) -> Any:
        if not name:
            return None
        a: Agent = recipe.agents[name]
        return {
            "prompt": prompts[name].source if name in prompts else None,
            "system": a.system,
            "sampling": a.sampling.model_dump(exclude_none=True),
            "model": _model_identity(recipe.models[a.model]),
        }

    stages: list[StageRun] = []
    fp: dict[str, str] = {}
    rows: dict[str, int | None] = {}

    def add(name: str, kind: str, inputs: tuple[str, ...], config: dict[str, Any], agents: tuple[str, ...] = (), **kw: Any) -> StageRun:
        identity = {
            "kind": kind,
            "config": config,
            "agents": {a: agent_identity(a) for a in agents},
            "inputs": [fp[i] for i in inputs],
        }
        fp[name] = _hash(portable(identity, base))
        stage = StageRun(name=name, kind=kind, inputs=inputs, config=config, fingerprint=fp[name], agents=agents, **kw)
        rows[name] = stage.rows
        stages.append(stage)
        return stage

    # Seeds ------------------------------------------------------------------
    seeds = recipe.seeds
    file_rows = count_problems(seeds.path, seeds.format, seeds.question_field, seeds.answer_field, seeds.answer_format,
                               seeds.max_solution_steps, key="seeds.path", held_out=held_out_questions(seeds.holdout, key="seeds.holdout"),
                               warnings=warnings)
    if not Path(seeds.path).exists():
        warnings.append(f"seeds.path {seeds.path} does not exist yet; `run` will need it")
    seed_rows = _limited(file_rows, seeds.limit)
    holdout = {"holdout_data": content_id(seeds.holdout)} if seeds.holdout else {}  # content, not location
    seed_cfg = seeds.model_dump(exclude={"path", "holdout"}) | {"data": content_id(seeds.path)} | holdout
    add("seeds", "seeds", (), seed_cfg, rows=seed_rows)

    # Generation ---------------------------------------------------------------
    if recipe.ask_me_anything:
        ama = recipe.ask_me_anything
        n = _limited(rows["seeds"], ama.limit)
        add(
            "ask_me_anything", "ask_me_anything", ("seeds",), ama.model_dump(), (ama.agent,),
            calls=n or 0, rows=None if n is None else n * ama.questions_per_seed,
        )
    if recipe.evolve:
        ev = recipe.evolve
        n = _limited(rows[ev.input], ev.limit)
        per_round = 3 if ev.verifier else 2
        agents = (ev.suggester, ev.editor) + ((ev.verifier,) if ev.verifier else ())
        add(
            "evolve", "evolve", (ev.input,), ev.model_dump(), agents,
            calls=0 if n is None else n * per_round * ev.rounds,
            calls_bound=bool(ev.verifier),
            rows=None if n is None else n * (ev.rounds if ev.keep_all_rounds else 1),
        )
    solve = recipe.solve
    solve_in = [rows[i] for i in solve.inputs]
    n_solve = None if any(r is None for r in solve_in) else sum(solve_in)  # type: ignore[arg-type]
    n_asked = (n_solve or 0) - ((rows["seeds"] or 0) if solve.gold_solutions and "seeds" in solve.inputs else 0)
    add("solve", "solve", tuple(solve.inputs), solve.model_dump(), (solve.agent,), calls=n_asked * solve.samples, rows=n_solve)

    ev_cfg = None
    n_eval = None
    if recipe.eval:
        evs = recipe.eval  # read (and so checked) before it is hashed: a hostile file fails fast, unhashed
        n_eval = _limited(count_problems(evs.path, "auto", evs.question_field, evs.answer_field, evs.answer_format, evs.max_solution_steps,
                                         key="eval.path", need_gold=True, warnings=warnings), evs.limit)
        ev_cfg = recipe.eval.model_dump(exclude={"path"}) | {"data": content_id(recipe.eval.path)}
        if not Path(recipe.eval.path).exists():
            warnings.append(f"eval.path {recipe.eval.path} does not exist yet; `run` will need it")

    filt_cfg = recipe.filters.model_dump()
    if recipe.filters.decontaminate is not None:
        contam = recipe.filters.decontaminate.path or (recipe.eval.path if recipe.eval else None)
        if contam and recipe.filters.decontaminate.path and Path(contam).exists():
            len(Records(contam, "auto", key="filters.decontaminate.path"))  # read (checked) before it is hashed
        filt_cfg["decontaminate"].pop("path")  # identified by content below
        filt_cfg["decontaminate_data"] = content_id(contam) if contam else None
        filt_cfg |= holdout  # generated problems are checked against the held-out split too
    add("filter", "filter", ("solve",), filt_cfg, rows=n_solve)

    # Training and iterations --------------------------------------------------
    def add_eval(model_stage: str | None, label: str) -> None:
        if ev_cfg is None:
            return
        inputs = (model_stage,) if model_stage else ()
        add(f"eval_{label}", "eval", inputs, ev_cfg | {"model_from": model_stage}, (recipe.eval.agent,), calls=n_eval or 0, rows=n_eval)  # type: ignore[union-attr]

    if recipe.training is not None:
        tr = recipe.training
        base_model = student_model_path(recipe)
        student_template = chat_template_of(recipe.models[tr.student])
        chat_keys = {"chat_template": "jinja", "chat_template_jinja": student_template} if student_template else {}
        for name, m in recipe.models.items():
            if m.local is not None and m.local.path and not Path(m.local.path).exists():
                warnings.append(f"models.{name}.local.path {m.local.path} does not exist yet; `run` will need it")
        add_eval(None, "base")
        sft_dir = run_dir / "sft"
        sft_opts = tr.sft.axolotl.options()
        sft_yaml = sft_config(
            base_model or "", str(sft_dir / "train.jsonl"), str(output_dir(sft_dir, sft_opts)), str(sft_dir / "prepared"), sft_opts,
            scale_keys(sft_dir, sft_opts, tr.distributed) | chat_keys | resume_keys(tr.checkpoint_every_steps, sft_opts),
        )
        add(
            "sft", "sft", ("filter",),
            {"axolotl": sft_opts, "launcher": _launcher_identity(tr), **_distributed_identity(tr),
             "base": _model_identity(recipe.models[tr.student]), **prompt_identity(student_agent(recipe))},
            iteration=1, trainer_config=sft_yaml, rows=n_solve,
        )
        last_eval = recipe.eval is not None and recipe.eval.checkpoints == "last"
        if not last_eval or recipe.iterations == 1:
            add_eval("sft", "sft")
        model_stage = "sft"
        n_problems = _limited(n_solve, recipe.practice.problems if recipe.practice else None)
        for it in range(2, recipe.iterations + 1):
            pr = recipe.practice
            assert pr is not None
            samples = None if n_problems is None else n_problems * pr.samples_per_problem
            add(
                f"practice_{it}", "practice", ("filter", model_stage), pr.model_dump() | {"iteration": it}, (pr.agent,),
                iteration=it, calls=samples or 0, rows=samples,
            )
            judge = recipe.judge
            judge_agents = (judge.agent,) if judge.agent and judge.mode != "exact" else ()
            add(
                f"judge_{it}", "judge", (f"practice_{it}", "filter"), judge.model_dump(), judge_agents,
                iteration=it, calls=0 if judge.mode == "exact" else (samples or 0), calls_bound=judge.mode == "exact_then_llm", rows=samples,
            )
            prefs = recipe.preferences
            # the fields the chosen kind reads: DPO pairs every group with a wrong sample, so it never reads drop_all_correct
            prefs_spec = prefs.model_dump(exclude={"drop_all_correct"} if prefs.kind == "dpo" else None)
            add(f"preferences_{it}", "preferences", (f"judge_{it}", "filter"), prefs_spec | prompt_identity(pr.agent)
                | ({"chat_template": student_template} if student_template else {}),
                iteration=it, rows=samples)
            st_dir = run_dir / f"train_{it}"
            pref_opts = tr.preference.axolotl.options()
            pref_yaml = preference_config(
                prefs.kind, str(run_dir / model_stage / "output"), str(run_dir / f"preferences_{it}" / "data.jsonl"),
                str(output_dir(st_dir, pref_opts)), str(st_dir / "prepared"), pref_opts, scale_keys(st_dir, pref_opts, tr.distributed) | chat_keys
                | resume_keys(tr.checkpoint_every_steps, pref_opts),
            )
            add(
                f"train_{it}", "train_preference", (f"preferences_{it}", model_stage),
                {"axolotl": pref_opts, "kind": prefs.kind, "launcher": _launcher_identity(tr), **_distributed_identity(tr)},
                iteration=it, trainer_config=pref_yaml,
            )
            model_stage = f"train_{it}"
            if not last_eval or it == recipe.iterations:
                add_eval(model_stage, str(it))
    elif recipe.eval:
        add_eval(None, "base")

    return Plan(recipe=recipe, loaded=loaded, run_dir=run_dir, stages=stages, prompts=prompts, seed_rows=seed_rows, warnings=warnings)


def compile_file(path: str | Path, overrides: list[str] | None = None, run_dir: str | Path | None = None) -> Plan:
    recipe, loaded = load_recipe(path, overrides)
    return compile_plan(recipe, loaded, run_dir)


def relpath(path: str) -> str:
    """A path as a user would type it from here."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return path
