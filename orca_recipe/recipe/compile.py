"""Compile a Recipe into a Plan: the ordered stage runs, their fingerprints and call counts.

`compile_plan` is the Orca-Math pipeline read top to bottom: seeds, Ask-Me-Anything and
Suggester/Editor generation, the teacher's solutions, filters, SFT, then per iteration practice,
judge, preferences and preference training, with an evaluation after each model. Each stage's
fingerprint is the hash of what it runs (its config slice, the agents it calls by prompt,
sampling and model identity, its trainer config) and of its inputs' fingerprints.

Pure and fast: it reads the recipe's prompt and data files to fingerprint them, and
nothing else; no model, no network, no heavy imports. `validate` and `plan` are this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orca_recipe.content import content_id
from orca_recipe.errors import UserError
from orca_recipe.problems import Records, count_problems, held_out_questions
from orca_recipe.prompts import Prompt
from orca_recipe.recipe.checks import agent_roles, check_references
from orca_recipe.recipe.identity import chat_template_of, distributed_identity, fingerprint_of, launcher_identity, model_identity, portable, student_agent, student_model_path
from orca_recipe.recipe.load import Loaded, load_recipe
from orca_recipe.recipe.schema import Agent, Distributed, Launcher, Recipe
from orca_recipe.train.config import output_dir, preference_config, resume_keys, scale_keys, sft_config

DEFAULT_REPLY_TOKENS = 1024  # a reply's bound where the recipe sets none (the server's own default is the model's length)

__all__ = ["Plan", "StageRun", "agent_roles", "compile_file", "compile_plan", "portable"]


@dataclass(frozen=True)
class AgentCall:
    """An agent as a stage calls it: everything its requests are made of (and so fingerprinted)."""

    model: str  # the recipe's model key: the runner gives it an endpoint
    prompt: Prompt | None
    system: str | None
    sampling: dict[str, Any]  # the agent's sampling over its model's
    samples: int = 1  # completions one request asks for in this stage
    max_tokens: int = DEFAULT_REPLY_TOKENS  # the longest reply one completion may take here
    checkpoint: str | None = None  # the training stage whose model serves this agent here (the student's practice and eval)


@dataclass(frozen=True)
class TrainerSetup:
    """What a training stage reads beyond its rendered trainer config: how Axolotl is launched
    (not fingerprinted beyond the process count: it cannot change the model) and the DeepSpeed
    file to write beside it."""

    launcher: Launcher
    distributed: Distributed


@dataclass(frozen=True)
class StageRun:
    """One unit of work and everything it runs with: a stage sees this, its input datasets and
    its LLM endpoints, never the recipe. `config` (the hashed part), `agent_calls` and
    `trainer_config` are in the fingerprint; `section`, `student` and `data` are the typed,
    located forms of what `config` identifies by content. `calls` counts LLM generations."""

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
    section: Any = field(default=None, compare=False)  # the recipe section it runs (pydantic), e.g. recipe.evolve
    agent_calls: dict[str, AgentCall] = field(default_factory=dict, compare=False)
    student: Any = field(default=None, compare=False)  # the student model's `local:` block (training and preference rows)
    data: dict[str, Any] = field(default_factory=dict, compare=False)  # other data files it reads, by role (filter: decontamination)

    def agent(self, name: str) -> AgentCall:
        return self.agent_calls[name]

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


def compile_plan(recipe: Recipe, loaded: Loaded, run_dir: str | Path | None = None) -> Plan:
    """The pipeline, in the paper's order (see the module docstring)."""
    prompts = check_references(recipe, loaded)
    run_dir = (Path(run_dir) if run_dir else Path("runs") / recipe.name).resolve()
    b = _Builder(recipe, prompts, base=loaded.files[0].parent if loaded.files else Path.cwd(), run_dir=run_dir)

    seed_rows = _seeds(b)
    if recipe.ask_me_anything:
        _ask_me_anything(b)
    if recipe.evolve:
        _evolve(b)
    n_solved = _solve(b)
    evaluation = _evaluation(b)  # its data file is read (and so checked) before anything hashes it
    _filter(b, n_solved)
    _eval(b, evaluation, None, "base")
    if recipe.training is not None:
        _warn_missing_models(b)
        _sft(b, n_solved)
        last_only = recipe.eval is not None and recipe.eval.checkpoints == "last"
        if not last_only or recipe.iterations == 1:
            _eval(b, evaluation, "sft", "sft")
        model_stage = "sft"
        n_problems = _limited(n_solved, recipe.practice.problems if recipe.practice else None)
        for it in range(2, recipe.iterations + 1):
            model_stage = _iteration(b, it, model_stage, n_problems)
            if not last_only or it == recipe.iterations:
                _eval(b, evaluation, model_stage, str(it))
    return Plan(recipe=recipe, loaded=loaded, run_dir=run_dir, stages=b.stages, prompts=prompts, seed_rows=seed_rows, warnings=b.warnings)


def compile_file(path: str | Path, overrides: list[str] | None = None, run_dir: str | Path | None = None) -> Plan:
    recipe, loaded = load_recipe(path, overrides)
    return compile_plan(recipe, loaded, run_dir)


# --------------------------------------------------------------------------- the plan being built


class _Builder:
    """The stages so far, their fingerprints and planned rows."""

    def __init__(self, recipe: Recipe, prompts: dict[str, Prompt], base: Path, run_dir: Path):
        self.recipe, self.prompts, self.base, self.run_dir = recipe, prompts, base, run_dir
        self.stages: list[StageRun] = []
        self.fp: dict[str, str] = {}
        self.rows: dict[str, int | None] = {}
        self.warnings: list[str] = []

    def add(self, name: str, kind: str, inputs: tuple[str, ...], config: dict[str, Any], agents: tuple[str, ...] = (),
            renders: str | None = None, served_by: str | None = None, **kw: Any) -> StageRun:
        """`agents`: the agents the stage calls; `renders`: one whose turns it writes into
        training rows without calling it (the student's, in `config` as its prompt identity);
        `served_by`: the training stage whose model the student's agents run on here."""
        identity = {"kind": kind, "config": config, "agents": {a: self.agent_identity(a) for a in agents}, "inputs": [self.fp[i] for i in inputs]}
        self.fp[name] = fingerprint_of(portable(identity, self.base))
        calls = {a: self.agent_call(a, kind, served_by) for a in (*agents, *([renders] if renders else []))}
        stage = StageRun(name=name, kind=kind, inputs=inputs, config=config, fingerprint=self.fp[name], agents=agents, agent_calls=calls, **kw)
        self.rows[name] = stage.rows
        self.stages.append(stage)
        return stage

    def agent_identity(self, name: str) -> dict[str, Any]:
        """What an agent's replies depend on: its template, system prompt, sampling and model."""
        a: Agent = self.recipe.agents[name]
        return {
            "prompt": self.prompts[name].source if name in self.prompts else None,
            "system": a.system,
            "sampling": a.sampling.model_dump(exclude_none=True),
            "model": model_identity(self.recipe.models[a.model]),
        }

    def agent_call(self, name: str, kind: str, served_by: str | None) -> AgentCall:
        """`name` as a stage of `kind` calls it: its requests' shape is the stage's (practice
        asks for its samples per problem, eval and practice cap replies at their max_tokens),
        and a student agent runs on the checkpoint `served_by` trained."""
        r, a = self.recipe, self.recipe.agents[name]
        student = r.training is not None and a.model == r.training.student
        sampling = r.sampling_for(name)
        samples, max_tokens = 1, sampling.max_tokens or DEFAULT_REPLY_TOKENS
        if kind == "practice" and r.practice:
            samples, max_tokens = r.practice.samples_per_problem, r.practice.max_tokens
        elif kind == "eval" and r.eval:
            max_tokens = r.eval.max_tokens
        elif kind == "solve":
            samples = r.solve.samples
        return AgentCall(model=a.model, prompt=self.prompts.get(name), system=a.system, sampling=sampling.model_dump(exclude_none=True),
                         samples=samples, max_tokens=max_tokens, checkpoint=served_by if student else None)

    def prompt_identity(self, name: str | None) -> dict[str, Any]:
        """A training stage's student turn: which agent, its template and system prompt."""
        if not name:
            return {"student_agent": None}
        return {"student_agent": name, "student_prompt": self.prompts[name].source, "student_system": self.recipe.agents[name].system}


def _limited(n: int | None, limit: int | None) -> int | None:
    if n is None:
        return limit
    return n if limit is None else min(n, limit)


def _held_out(recipe: Recipe) -> dict[str, Any]:
    """The held-out split by content, not location (seeds skip it; filters check against it)."""
    return {"holdout_data": content_id(recipe.seeds.holdout)} if recipe.seeds.holdout else {}


# --------------------------------------------------------------------------- generation


def _seeds(b: _Builder) -> int | None:
    seeds = b.recipe.seeds
    file_rows = count_problems(seeds.path, seeds.format, seeds.question_field, seeds.answer_field, seeds.answer_format,
                               seeds.max_solution_steps, key="seeds.path", held_out=held_out_questions(seeds.holdout, key="seeds.holdout"),
                               warnings=b.warnings)
    if not Path(seeds.path).exists():
        b.warnings.append(f"seeds.path {seeds.path} does not exist yet; `run` will need it")
    seed_rows = _limited(file_rows, seeds.limit)
    b.add("seeds", "seeds", (), seeds.model_dump(exclude={"path", "holdout"}) | {"data": content_id(seeds.path)} | _held_out(b.recipe), rows=seed_rows,
          section=seeds)
    return seed_rows


def _ask_me_anything(b: _Builder) -> None:
    ama = b.recipe.ask_me_anything
    assert ama is not None
    n = _limited(b.rows["seeds"], ama.limit)
    b.add("ask_me_anything", "ask_me_anything", ("seeds",), ama.model_dump(), (ama.agent,),
          calls=n or 0, rows=None if n is None else n * ama.questions_per_seed, section=ama)


def _evolve(b: _Builder) -> None:
    ev = b.recipe.evolve
    assert ev is not None
    n = _limited(b.rows[ev.input], ev.limit)
    agents = (ev.suggester, ev.editor) + ((ev.verifier,) if ev.verifier else ())
    b.add("evolve", "evolve", (ev.input,), ev.model_dump(), agents,
          calls=0 if n is None else n * len(agents) * ev.rounds, calls_bound=bool(ev.verifier),
          rows=None if n is None else n * (ev.rounds if ev.keep_all_rounds else 1), section=ev)


def _solve(b: _Builder) -> int | None:
    """The teacher's solutions (seeds with a worked solution need no call); returns the rows."""
    solve = b.recipe.solve
    solve_in = [b.rows[i] for i in solve.inputs]
    n_solve = None if any(r is None for r in solve_in) else sum(solve_in)  # type: ignore[arg-type]
    n_asked = (n_solve or 0) - ((b.rows["seeds"] or 0) if solve.gold_solutions and "seeds" in solve.inputs else 0)
    b.add("solve", "solve", tuple(solve.inputs), solve.model_dump(), (solve.agent,), calls=n_asked * solve.samples, rows=n_solve, section=solve)
    return n_solve


def _filter(b: _Builder, n_solved: int | None) -> None:
    recipe = b.recipe
    cfg = recipe.filters.model_dump()
    data: dict[str, Any] = {}
    if recipe.filters.decontaminate is not None:
        contam = recipe.filters.decontaminate.path or (recipe.eval.path if recipe.eval else None)
        if contam and recipe.filters.decontaminate.path and Path(contam).exists():
            len(Records(contam, "auto", key="filters.decontaminate.path"))  # read (checked) before it is hashed
        question_field = recipe.eval.question_field if recipe.eval else "question"
        cfg["decontaminate"].pop("path")  # identified by content below
        cfg["decontaminate_data"] = content_id(contam) if contam else None
        if question_field != "question":  # the field its questions are read from (the default: fingerprints unchanged)
            cfg["decontaminate_question_field"] = question_field
        cfg |= _held_out(recipe)  # generated problems are checked against the held-out split too
        data = {"decontaminate": contam, "question_field": question_field, "holdout": recipe.seeds.holdout}
    b.add("filter", "filter", ("solve",), cfg, rows=n_solved, section=recipe.filters, data=data)


# --------------------------------------------------------------------------- evaluation


def _evaluation(b: _Builder) -> tuple[dict[str, Any], int | None] | None:
    """The eval stages' shared config (data by content) and problem count, or None without eval."""
    evs = b.recipe.eval
    if evs is None:
        return None
    n = _limited(count_problems(evs.path, "auto", evs.question_field, evs.answer_field, evs.answer_format, evs.max_solution_steps,
                                key="eval.path", need_gold=True, warnings=b.warnings), evs.limit)
    if not Path(evs.path).exists():
        b.warnings.append(f"eval.path {evs.path} does not exist yet; `run` will need it")
    # `checkpoints` decides which eval stages exist, not what one does: not in their fingerprint
    return evs.model_dump(exclude={"path", "checkpoints"}) | {"data": content_id(evs.path)}, n


def _eval(b: _Builder, evaluation: tuple[dict[str, Any], int | None] | None, model_stage: str | None, label: str) -> None:
    if evaluation is None:
        return
    cfg, n = evaluation
    b.add(f"eval_{label}", "eval", (model_stage,) if model_stage else (), cfg | {"model_from": model_stage}, (b.recipe.eval.agent,),  # type: ignore[union-attr]
          served_by=model_stage, calls=n or 0, rows=n, section=b.recipe.eval)


# --------------------------------------------------------------------------- training


def _warn_missing_models(b: _Builder) -> None:
    for name, m in b.recipe.models.items():
        if m.local is not None and m.local.path and not Path(m.local.path).exists():
            b.warnings.append(f"models.{name}.local.path {m.local.path} does not exist yet; `run` will need it")


def _chat_keys(recipe: Recipe) -> dict[str, Any]:
    """Axolotl keys that train under the recipe's chat template, when it names one."""
    template = chat_template_of(recipe.models[recipe.training.student])  # type: ignore[union-attr]
    return {"chat_template": "jinja", "chat_template_jinja": template} if template else {}


def _sft(b: _Builder, n_solved: int | None) -> None:
    recipe, tr = b.recipe, b.recipe.training
    assert tr is not None
    sft_dir = b.run_dir / "sft"
    opts = tr.sft.axolotl.options()
    trainer_config = sft_config(
        student_model_path(recipe) or "", str(sft_dir / "train.jsonl"), str(output_dir(sft_dir, opts)), str(sft_dir / "prepared"), opts,
        scale_keys(sft_dir, opts, tr.distributed) | _chat_keys(recipe) | resume_keys(tr.checkpoint_every_steps, opts),
    )
    spec = {"axolotl": opts, "launcher": launcher_identity(tr), **distributed_identity(tr), "base": model_identity(recipe.models[tr.student]),
            **b.prompt_identity(student_agent(recipe))}
    b.add("sft", "sft", ("filter",), spec, renders=student_agent(recipe), iteration=1, trainer_config=trainer_config, rows=n_solved,
          section=TrainerSetup(tr.launcher, tr.distributed),
          student=recipe.models[tr.student].local)


def _iteration(b: _Builder, it: int, model_stage: str, n_problems: int | None) -> str:
    """Practice -> judge -> preferences -> preference training from `model_stage`; returns the
    new model's stage."""
    recipe, tr, pr, judge, prefs = b.recipe, b.recipe.training, b.recipe.practice, b.recipe.judge, b.recipe.preferences
    assert tr is not None and pr is not None
    samples = None if n_problems is None else n_problems * pr.samples_per_problem
    b.add(f"practice_{it}", "practice", ("filter", model_stage), pr.model_dump() | {"iteration": it}, (pr.agent,),
          served_by=model_stage, iteration=it, calls=samples or 0, rows=samples, section=pr)
    b.add(f"judge_{it}", "judge", (f"practice_{it}", "filter"), judge.model_dump(), (judge.agent,) if judge.agent and judge.mode != "exact" else (),
          iteration=it, calls=0 if judge.mode == "exact" else (samples or 0), calls_bound=judge.mode == "exact_then_llm", rows=samples, section=judge)
    # the fields the chosen kind reads: DPO pairs every group with a wrong sample, so it never reads drop_all_correct, and
    # writes chat messages (the trainer applies the template), so it never reads the student's chat template
    template = chat_template_of(recipe.models[tr.student]) if prefs.kind == "kto" else None
    b.add(f"preferences_{it}", "preferences", (f"judge_{it}", "filter"),
          prefs.model_dump(exclude={"drop_all_correct"} if prefs.kind == "dpo" else None) | b.prompt_identity(pr.agent)
          | ({"chat_template": template} if template else {}), renders=pr.agent, iteration=it, rows=samples, section=prefs,
          student=recipe.models[tr.student].local)
    st_dir = b.run_dir / f"train_{it}"
    opts = tr.preference.axolotl.options()
    trainer_config = preference_config(
        prefs.kind, str(b.run_dir / model_stage / "output"), str(b.run_dir / f"preferences_{it}" / "data.jsonl"),
        str(output_dir(st_dir, opts)), str(st_dir / "prepared"), opts,
        scale_keys(st_dir, opts, tr.distributed) | _chat_keys(recipe) | resume_keys(tr.checkpoint_every_steps, opts),
    )
    b.add(f"train_{it}", "train_preference", (f"preferences_{it}", model_stage),
          {"axolotl": opts, "kind": prefs.kind, "launcher": launcher_identity(tr), **distributed_identity(tr)},
          iteration=it, trainer_config=trainer_config, section=TrainerSetup(tr.launcher, tr.distributed), student=recipe.models[tr.student].local)
    return f"train_{it}"
