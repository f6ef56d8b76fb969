"""The fingerprint is what a stage reads: change a key (or a prompt file) a stage reads and its
fingerprint changes, with everything downstream; change one it does not read and nothing
changes. Checked by mutating the shipped recipe key by key and compiling."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from orca_recipe.recipe.compile import compile_file

REPO = Path(__file__).resolve().parents[1]
GEN = {"seeds", "ask_me_anything", "evolve", "solve", "filter"}
STUDENT = {"eval_base", "sft", "eval_sft", "practice_2", "judge_2", "preferences_2", "train_2", "eval_2"}
ALL = GEN | STUDENT


def downstream(plan, names: set[str]) -> set[str]:
    out = set(names)
    for s in plan.stages:
        if out & set(s.inputs):
            out.add(s.name)
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("proj")
    for part in ("recipes", "prompts", "data"):
        shutil.copytree(REPO / part, root / part)
    return root / "recipes" / "tiny.yaml"


def fingerprints(recipe: Path, sets: list[str]) -> dict[str, str]:
    return {s.name: s.fingerprint for s in compile_file(recipe, sets, run_dir=recipe.parent.parent / "runs" / "x").stages}


# key=value -> the stages that read it (their downstream follows); empty: read by none
CASES = {
    "seeds.limit=700": {"seeds"},
    "ask_me_anything.questions_per_seed=3": {"ask_me_anything"},
    "evolve.rounds=3": {"evolve"},
    "solve.max_answer_chars=1500": {"solve"},
    "filters.dedup.near_threshold=0.8": {"filter"},
    "eval.max_tokens=200": {"eval_base", "eval_sft", "eval_2"},
    "eval.truncated=scored": {"eval_base", "eval_sft", "eval_2"},
    "training.sft.axolotl.learning_rate=2.0e-4": {"sft"},
    "practice.temperature=0.8": {"practice_2"},
    "practice.problems=48": {"practice_2"},
    "judge.mode=exact": {"judge_2"},
    "preferences.kind=kto": {"preferences_2", "train_2"},
    "preferences.max_per_problem=2": {"preferences_2"},
    "preferences.drop_all_correct=false": set(),  # read by KTO only; tiny.yaml trains DPO
    "training.preference.axolotl.learning_rate=2.0e-5": {"train_2"},
    "agents.solver.sampling.temperature=0.9": {"solve"},
    "agents.student.sampling.max_tokens=300": {"eval_base", "eval_sft", "eval_2", "practice_2"},
    # what cannot change an output changes no fingerprint (and so deletes no trained model)
    "training.launcher.venv=/somewhere/else": set(),
    "training.launcher.extra_args=[--foo]": set(),
    "training.checkpoint_every_steps=7": set(),
    "models.smol.concurrency=3": set(),
    "models.smol.timeout_s=999": set(),
    "models.smol.max_retries=1": set(),
    "models.smol.local.startup_timeout_s=1200": set(),
    "description=another": set(),
    "budget_usd=12": set(),
}


@pytest.mark.parametrize("override", list(CASES))
def test_a_key_changes_exactly_its_readers_and_their_downstream(project, override):
    base = fingerprints(project, [])
    after = fingerprints(project, [override])
    plan = compile_file(project, [override], run_dir=project.parent.parent / "runs" / "x")
    changed = {n for n in base if base[n] != after.get(n)}
    assert changed == downstream(plan, CASES[override]), override


@pytest.mark.parametrize("prompt, readers", [
    ("student.j2", {"eval_base", "sft", "practice_2", "preferences_2"}),  # SFT trains under the prompt it is scored with
    ("solver.j2", {"solve"}),
    ("ask_me_anything.j2", {"ask_me_anything"}),
    ("suggester.j2", {"evolve"}),
    ("judge.j2", {"judge_2"}),
])
def test_editing_a_prompt_file_reruns_its_readers_and_nothing_before(project, prompt, readers):
    base = fingerprints(project, [])
    path = project.parent.parent / "prompts" / prompt
    original = path.read_text()
    try:
        path.write_text(original + "\nBe careful.\n")
        after = fingerprints(project, [])
    finally:
        path.write_text(original)
    plan = compile_file(project, [], run_dir=project.parent.parent / "runs" / "x")
    changed = {n for n in base if base[n] != after[n]}
    assert changed == downstream(plan, readers)
    assert not changed & (GEN - readers - downstream(plan, readers))


def test_a_fork_that_changes_only_the_preference_kind_shares_everything_before(project):
    base = fingerprints(project, [])
    fork = project.parent / "tiny_kto_fork.yaml"
    fork.write_text(yaml.safe_dump({"extends": "tiny.yaml", "preferences": {"kind": "kto"}}))
    after = fingerprints(fork, [])
    same = {n for n in base if base[n] == after.get(n)}
    assert same == ALL - {"preferences_2", "train_2", "eval_2"}


# ---------------------------------------------------------------------------- every key a stage runs with
# A stage runs its StageRun (section, agent calls, student, data, trainer config) and nothing else,
# so every leaf of what it runs with, mutated, must change its fingerprint, except what is here,
# with why: these cannot change what the stage writes.
NOT_IN_FINGERPRINT = {
    "launcher.kind": "how Axolotl is started, not what it trains",
    "launcher.node_rank": "each node of one run has the same fingerprint",
    "launcher.main_process_ip": "addressing", "launcher.main_process_port": "addressing",
    "launcher.extra_args": "launcher flags", "launcher.venv": "where Axolotl is installed",
    "preferences.drop_all_correct": "read by KTO only (tiny.yaml trains DPO)",
    "eval.checkpoints": "decides which eval stages exist, not what one of them does",
}


def _variants(value, annotation, agents, files):
    """Candidate values other than `value`, most plausible first: another choice of a Literal,
    another agent, another data file, a nearby number, the flipped bool."""
    import typing

    choices = [a for t in [annotation, *typing.get_args(annotation)] if typing.get_origin(t) is typing.Literal for a in typing.get_args(t)]
    if choices and not isinstance(value, list):
        return choices
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [round(value * 0.5, 6), round(min(1.0, value * 1.2), 6)]
    if isinstance(value, str):
        return [*agents, *files, "answer", "question", "zero2"]
    if isinstance(value, list):
        return [value[:-1]] if len(value) > 1 else [value + value, ["--x"]]
    if value is None:
        return [3, 0.5, True, "zero2", *files, *agents, {}]
    return []


def _leaves(model, prefix=""):
    from pydantic import BaseModel

    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, f"{prefix}{name}.")
        elif not isinstance(value, dict):
            yield f"{prefix}{name}", value, info.annotation


SECTION_KEY = {"seeds": "seeds", "ask_me_anything": "ask_me_anything", "evolve": "evolve", "solve": "solve", "filter": "filters",
               "eval": "eval", "practice": "practice", "judge": "judge", "preferences": "preferences"}


def test_every_key_a_stage_runs_with_is_in_its_fingerprint(project):
    """Mutate each leaf of each stage's section (tiny.yaml) to the first of a few candidates the
    schema accepts: the stage's fingerprint changes, unless NOT_IN_FINGERPRINT says why it must
    not (and then it must not). The leaves no candidate could change are pinned, so a new key
    is met."""
    import dataclasses

    from orca_recipe.errors import UserError
    from orca_recipe.recipe.compile import TrainerSetup

    plan = compile_file(project, [], run_dir=project.parent.parent / "runs" / "x")
    base = {s.name: s.fingerprint for s in plan.stages}
    agents, files = list(plan.recipe.agents), sorted(str(p) for p in (project.parent.parent / "data" / "gsm8k").glob("*.jsonl"))
    checked, wrong, untried = set(), set(), set()
    for stage in plan.stages:
        if stage.section is None:
            continue
        if isinstance(stage.section, TrainerSetup):
            roots = {f"training.{f.name}": getattr(stage.section, f.name) for f in dataclasses.fields(stage.section)}
        else:
            roots = {SECTION_KEY[stage.kind]: stage.section}
        for root, section in roots.items():
            for leaf, value, annotation in _leaves(section):
                key = f"{root}.{leaf}"
                short = key.removeprefix("training.")
                for candidate in [v for v in _variants(value, annotation, agents, files) if v != value]:
                    try:
                        after = fingerprints(project, [f"{key}={yaml.safe_dump(candidate, default_flow_style=True).strip().removesuffix('...').strip()}"])
                    except (UserError, ValueError):
                        continue
                    if stage.name not in after:
                        continue  # the value removes this stage (eval.checkpoints=last drops eval_sft): another stage asks it
                    checked.add(key)
                    if (after[stage.name] == base[stage.name]) != (short in NOT_IN_FINGERPRINT):
                        wrong.add((stage.name, key, repr(candidate)))
                    break
                else:
                    untried.add(key)
    assert not wrong, sorted(wrong)  # a key it runs with left out of its fingerprint, or one it does not read put in
    assert len(checked) >= 55, sorted(checked)
    # no candidate passed validation: a multi-process launcher needs kind accelerate/torchrun, the
    # answer settings must parse the shipped files' answers, the solver must sample at temperature > 0
    untried -= checked  # a key one stage could not try (the value removed it) another stage did
    assert untried == {"eval.answer_field", "eval.answer_format", "seeds.answer_field", "seeds.answer_format", "solve.agent",
                       "training.launcher.node_rank", "training.launcher.num_nodes", "training.launcher.num_processes"}, sorted(untried)
