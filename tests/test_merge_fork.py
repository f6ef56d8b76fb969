"""extends/--set merge semantics, fork, show and diff, on real files through the CLI."""

from __future__ import annotations

import os
import textwrap

import yaml

from _cli import REPO, run_cli
from orca_recipe.recipe.load import deep_merge, load_recipe


def test_deep_merge_rules():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"k": 1}}
    child = {"a": {"y": [3]}, "c": None, "d": 4}
    assert deep_merge(base, child) == {"a": {"x": 1, "y": [3]}, "b": 1, "c": None, "d": 4}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"k": 1}}  # inputs untouched


def test_extends_merges_and_resolves_paths_against_the_declaring_file(tmp_path):
    sub = tmp_path / "forks"
    sub.mkdir()
    child = sub / "child.yaml"
    child.write_text(
        textwrap.dedent(
            f"""\
            extends: {REPO}/recipes/tiny.yaml
            name: child
            evolve:
              rounds: 3
            solve:
              inputs: [seeds]
            """
        )
    )
    recipe, loaded = load_recipe(child)
    assert recipe.name == "child"
    assert recipe.evolve.rounds == 3 and recipe.evolve.suggestions_per_round == 2  # merged, not replaced
    assert recipe.solve.inputs == ["seeds"]  # lists replaced whole
    # prompt paths come from tiny.yaml and stay relative to recipes/, not to forks/
    assert recipe.agents["solver"].prompt == str(REPO / "prompts" / "solver.j2")
    assert loaded.where(("evolve", "rounds")).startswith(f"{child}:4:")
    assert loaded.where(("agents", "solver")).startswith(str(REPO / "recipes" / "tiny.yaml"))


def test_set_overrides_are_yaml_typed(tmp_path):
    recipe, loaded = load_recipe(REPO / "recipes" / "tiny.yaml", ["evolve.rounds=5", "practice.temperature=0.5", "judge.mode=llm", "seeds.shuffle=false"])
    assert recipe.evolve.rounds == 5 and recipe.practice.temperature == 0.5
    assert recipe.judge.mode == "llm" and recipe.seeds.shuffle is False
    assert loaded.where(("evolve", "rounds")) == "--set evolve.rounds"


def test_set_mapping_merges_into_existing_mapping():
    recipe, _ = load_recipe(REPO / "recipes" / "tiny.yaml", ["evolve={rounds: 1}"])
    assert recipe.evolve.rounds == 1 and recipe.evolve.suggester == "suggester"


def test_fork_writes_minimal_child_that_validates(tmp_path):
    new = tmp_path / "variants" / "dpo.yaml"
    proc = run_cli("fork", "recipes/orca_math.yaml", new, "--set", "preferences.kind=dpo", "--set", "practice.samples_per_problem=8")
    assert proc.returncode == 0, proc.stderr
    text = new.read_text()
    assert text.startswith("# yaml-language-server: $schema=")
    data = yaml.safe_load(text)
    extends = data.pop("extends")
    assert not extends.startswith("/")  # relative, so the pair can move together
    assert (new.parent / extends).resolve() == REPO / "recipes" / "orca_math.yaml"
    assert data == {
        "name": "dpo",
        "preferences": {"kind": "dpo"},
        "practice": {"samples_per_problem": 8},
    }
    assert run_cli("validate", new, "--gpus", "8").returncode == 0  # orca_math asks for 8 GPUs
    # diff shows exactly the overrides (and the name)
    d = run_cli("diff", "recipes/orca_math.yaml", new)
    assert d.returncode == 0
    keys = [line.split("│")[1].strip() for line in d.stdout.splitlines() if line.startswith("│")]
    assert keys == ["name", "practice.samples_per_problem", "preferences.kind"]


def test_fork_refuses_invalid_overrides_and_writes_nothing(tmp_path):
    new = tmp_path / "bad.yaml"
    proc = run_cli("fork", "recipes/tiny.yaml", new, "--set", "evolve.rounds=-1")
    assert proc.returncode == 2 and "evolve.rounds" in proc.stderr and "Traceback" not in proc.stderr
    assert not new.exists() and not list(tmp_path.iterdir())


def test_fork_refuses_to_overwrite(tmp_path):
    new = tmp_path / "x.yaml"
    new.write_text("keep me")
    proc = run_cli("fork", "recipes/tiny.yaml", new)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert new.read_text() == "keep me"


def test_show_prints_merged_recipe_with_defaults():
    proc = run_cli("show", "examples/orca_math_verifier.yaml")
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert data["name"] == "orca_math_verifier"
    assert data["evolve"]["verifier"] == "verifier" and data["evolve"]["rounds"] == 2
    assert data["agents"]["verifier"]["prompt"] == str(REPO / "prompts" / "verifier.j2")
    assert data["practice"]["top_p"] == 0.95 and "extends" not in data


def test_a_shown_recipe_validates_wherever_it_is_saved(tmp_path):
    """`show > flat.yaml` from any folder, and `show -o FILE`, give recipes that validate as they are."""
    piped = run_cli("show", REPO / "examples" / "orca_math_verifier.yaml", cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "flat.yaml").write_text(piped.stdout)
    for flags in ([], ["--no-defaults"]):
        written = tmp_path / "elsewhere" / f"flat{len(flags)}.yaml"
        proc = run_cli("show", "examples/orca_math_verifier.yaml", "-o", written, *flags)
        assert proc.returncode == 0, proc.stderr
        assert not os.path.isabs(yaml.safe_load(written.read_text())["agents"]["verifier"]["prompt"])
    full, minimal = (yaml.safe_load((tmp_path / "elsewhere" / f"flat{i}.yaml").read_text()) for i in (0, 1))
    assert "timeout_s" in full["models"]["teacher"] and "timeout_s" not in minimal["models"]["teacher"]   # --no-defaults: what the files set
    for f in (tmp_path / "deep" / "er" / "flat.yaml", tmp_path / "elsewhere" / "flat0.yaml", tmp_path / "elsewhere" / "flat1.yaml"):
        check = run_cli("validate", f, "--gpus", "8", cwd=tmp_path / "deep")
        assert check.returncode == 0, (f, check.stderr)
    assert run_cli("show", "recipes/tiny.yaml", "-o", tmp_path).returncode == 2


def test_diff_identical_recipes():
    proc = run_cli("diff", "recipes/tiny.yaml", "recipes/tiny.yaml")
    assert proc.returncode == 0 and "no differences" in proc.stdout
