"""Every class of bad input: exit 2, one message with file:line and the key, no traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path


from _cli import REPO, run_cli

PROMPTS = REPO / "prompts"


def good_recipe(prompts: Path = PROMPTS) -> str:
    data = REPO / "data" / "gsm8k" / "train.jsonl"
    return textwrap.dedent(
        f"""\
        name: t
        models:
          m:
            model: openai/x
            api_base: http://127.0.0.1:9/v1
        agents:
          solver:
            model: m
            prompt: {prompts}/solver.j2
        seeds:
          path: {data}
          limit: 4
        solve:
          agent: solver
          inputs: [seeds]
        """
    )


def write(tmp: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def assert_user_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    msg = proc.stderr
    assert msg.startswith("error:"), msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def test_good_recipe_is_valid(tmp_path):
    proc = run_cli("validate", write(tmp_path, good_recipe()))
    assert proc.returncode == 0, proc.stderr


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, good_recipe().replace("  limit: 4", "  limit: [4"))
    assert_user_error(run_cli("validate", p), f"{p}:", "YAML syntax error")


def test_tab_indentation(tmp_path):
    p = write(tmp_path, good_recipe().replace("  limit: 4", "\tlimit: 4"))
    assert_user_error(run_cli("validate", p), f"{p}:12:", "tab")


def test_empty_file(tmp_path):
    p = write(tmp_path, "# nothing here\n")
    assert_user_error(run_cli("validate", p), str(p), "empty")


def test_top_level_must_be_mapping(tmp_path):
    p = write(tmp_path, "- a\n- b\n")
    assert_user_error(run_cli("validate", p), f"{p}:1:1", "mapping")


def test_missing_file(tmp_path):
    assert_user_error(run_cli("validate", tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_unknown_key_did_you_mean(tmp_path):
    p = write(tmp_path, good_recipe().replace("  limit: 4", "  limitt: 4"))
    assert_user_error(run_cli("validate", p), f"{p}:12:3", "seeds.limitt", "did you mean 'limit'")


def test_unknown_nested_key_in_dict_of_models(tmp_path):
    p = write(tmp_path, good_recipe().replace("    api_base:", "    api_bsae:"))
    assert_user_error(run_cli("validate", p), f"{p}:5:5", "models.m.api_bsae", "did you mean 'api_base'")


def test_wrong_type(tmp_path):
    p = write(tmp_path, good_recipe().replace("  limit: 4", "  limit: lots"))
    assert_user_error(run_cli("validate", p), f"{p}:12:3", "seeds.limit", "integer")


def test_negative_count(tmp_path):
    p = write(tmp_path, good_recipe() + "  samples: -2\n")
    assert_user_error(run_cli("validate", p), f"{p}:16:3", "solve.samples", "greater than 0")


def test_training_counts_and_rates_are_range_checked_before_a_run(tmp_path):
    """Axolotl's keys pass through verbatim, but a count, size, rate or fraction out of range
    is a recipe error with its line, not a failed training run an hour later."""
    student = "  s:\n    local: {embedded: smollm2-135m-instruct}\n"
    base = good_recipe().replace("models:\n", "models:\n" + student) + "training:\n  student: s\n"
    cases = [("sft", "num_epochs", "0", "greater than 0"), ("sft", "micro_batch_size", "-4", "greater than 0"),
             ("preference", "gradient_accumulation_steps", "0", "greater than 0"), ("sft", "learning_rate", "-1.0e-4", "greater than 0"),
             ("sft", "warmup_ratio", "1.5", "less than 1"), ("preference", "lora_dropout", "-0.1", "greater than or equal to 0"),
             ("sft", "sequence_len", "many", "valid integer")]
    for part, key, value, why in cases:
        p = write(tmp_path, base + f"  {part}:\n    axolotl:\n      bf16: false\n      {key}: {value}\n")
        line = base.count("\n") + 4
        assert_user_error(run_cli("validate", p), f"{p}:{line}:", f"training.{part}.axolotl.{key}", why)
    p = write(tmp_path, base + "  sft:\n    axolotl: {num_epochs: 2, lr_scheduler: cosine, adam_beta2: 0.95}\n")
    assert run_cli("validate", p).returncode == 0  # any other key Axolotl knows passes through
    p = write(tmp_path, base + "  sft:\n    axolotl: {num_epochs: 2, some_new_axolotl_key: [1, 2]}\n")
    assert_user_error(run_cli("validate", p), "training.sft.axolotl", "unknown Axolotl key 'some_new_axolotl_key'")  # a typo is not


def test_missing_required_key(tmp_path):
    p = write(tmp_path, good_recipe().replace("  agent: solver\n", ""))
    assert_user_error(run_cli("validate", p), "solve.agent", "required")


def test_duplicate_key(tmp_path):
    p = write(tmp_path, good_recipe() + "name: again\n")
    assert_user_error(run_cli("validate", p), f"{p}:16:1", "duplicate key 'name'")


def test_unknown_agent_reference(tmp_path):
    p = write(tmp_path, good_recipe().replace("  agent: solver", "  agent: solvr"))
    assert_user_error(run_cli("validate", p), f"{p}:14:3", "solve.agent", "unknown agent 'solvr'")


def test_unknown_model_reference(tmp_path):
    p = write(tmp_path, good_recipe().replace("    model: m\n", "    model: mm\n"))
    assert_user_error(run_cli("validate", p), "agents.solver.model", "unknown model 'mm'")


def test_missing_prompt_file(tmp_path):
    p = write(tmp_path, good_recipe().replace("solver.j2", "solverr.j2"))
    assert_user_error(run_cli("validate", p), f"{p}:9:", "agents.solver.prompt", "prompt file not found")


def test_jinja_syntax_error(tmp_path):
    (tmp_path / "solver.j2").write_text("Solve {{ problem }\n")
    p = write(tmp_path, good_recipe(tmp_path))
    assert_user_error(run_cli("validate", p), f"{p}:9:", "agents.solver.prompt", "Jinja syntax error", "solver.j2:1")


def test_undefined_template_variable(tmp_path):
    (tmp_path / "solver.j2").write_text("Solve {{ problem }} using {{ hint }}\n")
    p = write(tmp_path, good_recipe(tmp_path))
    assert_user_error(run_cli("validate", p), "agents.solver.prompt", "hint", "as 'solver' it gets: problem")


def test_missing_extends(tmp_path):
    p = write(tmp_path, "extends: base.yaml\nname: c\n")
    assert_user_error(run_cli("validate", p), f"{p}:1:1", "extends", "base recipe 'base.yaml' not found")


def test_cyclic_extends(tmp_path):
    write(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    assert_user_error(run_cli("validate", tmp_path / "a.yaml"), "extends", "cycle")


def test_bad_set_override(tmp_path):
    p = write(tmp_path, good_recipe())
    assert_user_error(run_cli("validate", p, "--set", "seeds.limit"), "--set", "KEY=VALUE")
    assert_user_error(run_cli("validate", p, "--set", "seeds.limit=-1"), "--set seeds.limit", "greater than 0")


def test_judge_mode_needs_agent(tmp_path):
    p = write(tmp_path, good_recipe() + "judge:\n  mode: llm\niterations: 2\n")
    assert_user_error(run_cli("validate", p), "judge.mode", "needs judge.agent")


def test_sandbox_blocks_escape(tmp_path):
    (tmp_path / "solver.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }} {{ problem }}")
    p = write(tmp_path, good_recipe(tmp_path))
    # Parsing passes; rendering (plan's example prompt) is stopped by the sandbox.
    proc = run_cli("plan", p, "--out", tmp_path / "out")
    assert_user_error(proc, "sandbox")


def test_several_greedy_teacher_samples_are_an_error(tmp_path):
    p = write(tmp_path, good_recipe().replace("  inputs: [seeds]", "  inputs: [seeds]\n  samples: 4"))
    assert_user_error(run_cli("validate", p), f"{p}:", "solve.samples", "temperature > 0")
    warm = good_recipe().replace("    prompt: ", "    sampling: {temperature: 0.7}\n    prompt: ").replace("  inputs: [seeds]", "  inputs: [seeds]\n  samples: 4")
    assert run_cli("validate", write(tmp_path, warm, "warm.yaml")).returncode == 0


def test_gold_solutions_need_worked_solutions_from_the_seeds(tmp_path):
    plain = good_recipe().replace("  limit: 4", "  limit: 4\n  answer_format: plain").replace("  inputs: [seeds]", "  inputs: [seeds]\n  gold_solutions: true")
    assert_user_error(run_cli("validate", write(tmp_path, plain)), "solve.gold_solutions", "gsm8k")


def test_random_yaml_is_a_clean_error_or_a_recipe(tmp_path):
    """Random YAML documents (scalars, lists, nested maps with the recipe's own key names and
    wrong-typed values, anchors, broken syntax): `compile` gives a Plan or one UserError."""
    import random

    from orca_recipe.errors import UserError
    from orca_recipe.recipe.compile import compile_file

    rng = random.Random(0)
    keys = ["name", "models", "agents", "seeds", "solve", "training", "practice", "eval", "iterations", "extends",
            "model", "prompt", "path", "limit", "samples", "axolotl", "num_epochs", "local", "embedded", "judge", "x"]
    values = ["null", "~", "0", "-1", "1.5", "true", "''", "[]", "{}", "[1, [2]]", "&a {b: 1}", "*a", "!!binary aGk=",
              "'../nowhere.j2'", "{model: m, prompt: p.j2}", "\"\\x00\"", "1e999", ":", "- -", "{", "]", "@", "%"]

    def doc(depth: int = 0) -> str:
        if depth > 2 or rng.random() < 0.3:
            return rng.choice(values)
        pad = "  " * (depth + 1)
        return "\n" + "".join(f"{pad}{rng.choice(keys)}: {doc(depth + 1)}\n" for _ in range(rng.randint(1, 4))).rstrip("\n")

    base = good_recipe()
    for i in range(300):
        if rng.random() < 0.5:
            text = "".join(f"{rng.choice(keys)}: {doc()}\n" for _ in range(rng.randint(0, 5)))
        else:  # a good recipe with one key replaced by junk
            lines = base.splitlines()
            j = rng.randrange(len(lines))
            key = lines[j].split(":")[0]
            lines[j] = f"{key}: {rng.choice(values)}"
            text = "\n".join(lines) + "\n"
        p = write(tmp_path, text, f"r{i}.yaml")
        try:
            compile_file(p)
        except UserError as e:
            assert str(e).strip(), text
