"""Real Axolotl on the embedded SmolLM2: schema checks, a few SFT steps, a few KTO steps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from _cli import REPO, run_cli
from orca_recipe.recipe.compile import compile_file
from orca_recipe.stages import preferences, train
from orca_recipe.stages.base import StageContext
from orca_recipe.store import write_jsonl
from orca_recipe.train.launch import is_model_folder

pytestmark = pytest.mark.axolotl


SHIPPED = ["recipes/tiny.yaml", "examples/tiny_kto.yaml", "recipes/orca_math.yaml", "examples/orca_math_dpo.yaml", "recipes/orca_math_7b_multi_gpu.yaml"]


def test_rendered_configs_pass_axolotl_schema():
    """Every shipped recipe's trainer configs, in one Axolotl process per capability set (an
    Axolotl import is ~12 s: one per recipe was a minute of CI)."""
    from orca_recipe.recipe.axolotl_check import plan_configs
    from orca_recipe.train.check import check_configs

    groups: dict[str, tuple[dict, dict | None, object]] = {}
    for recipe in SHIPPED:
        plan = compile_file(REPO / recipe)
        configs, caps = plan_configs(plan)
        assert configs, recipe
        group = groups.setdefault(json.dumps(caps, sort_keys=True), ({}, caps, plan.recipe.training.launcher))
        group[0].update({f"{recipe}:{name}": cfg for name, cfg in configs.items()})
    for configs, caps, launcher in groups.values():
        assert check_configs(configs, launcher, capabilities=caps) == {name: None for name in configs}


SCALE_VARIANTS = {
    "deepspeed_zero2": ["training.distributed.deepspeed=zero2"],
    "deepspeed_zero3_offload": ["training.launcher.kind=accelerate", "training.launcher.num_processes=2", "training.distributed.deepspeed=zero3_offload"],
    "fsdp2": ["training.launcher.kind=torchrun", "training.launcher.num_processes=2",
              "training.distributed.fsdp={transformer_layer_cls_to_wrap: LlamaDecoderLayer, offload_params: true, reshard_after_forward: true}"],
    "fsdp1_size_wrap": ["training.distributed.fsdp={version: 1, auto_wrap_policy: SIZE_BASED_WRAP, min_num_params: 100000}"],
    "lora": ["training.sft.axolotl.adapter=lora", "training.preference.axolotl.adapter=lora",
             "training.preference.axolotl.lora_target_modules=[q_proj, v_proj]"],
    "qlora_zero3": ["training.sft.axolotl.adapter=qlora", "training.distributed.deepspeed=zero3"],
    "dpo_lora_fsdp": ["preferences.kind=dpo", "training.preference.axolotl.adapter=lora", "training.distributed.fsdp={}"],
}


def test_scale_variants_pass_axolotl_schema(tmp_path):
    """DeepSpeed, FSDP, LoRA and QLoRA renderings, checked by Axolotl 0.19's own validator on a
    CPU (with the DeepSpeed file written where the stage writes it)."""
    from orca_recipe.recipe.schema import Launcher
    from orca_recipe.train.check import check_configs
    from orca_recipe.train.deepspeed import write_deepspeed_config

    configs = {}
    for name, sets in SCALE_VARIANTS.items():
        plan = compile_file(REPO / "recipes" / "tiny.yaml", sets, run_dir=tmp_path / name)
        for s in plan.stages:
            if s.trainer_config:
                if "deepspeed" in s.trainer_config:
                    write_deepspeed_config(plan.recipe.training.distributed.deepspeed, Path(s.trainer_config["deepspeed"]))
                configs[f"{name}:{s.name}"] = s.trainer_config
    assert len(configs) == 2 * len(SCALE_VARIANTS)
    assert check_configs(configs, Launcher()) == {name: None for name in configs}


def test_axolotl_schema_errors_name_the_recipe_key():
    proc = run_cli("validate", "recipes/tiny.yaml", "--check-axolotl", "--set", "training.sft.axolotl.micro_batch_size=lots")
    assert proc.returncode == 2 and "training.sft.axolotl" in proc.stderr and "micro_batch_size" in proc.stderr
    assert "Traceback" not in proc.stderr


def _ctx(plan, name, inputs, run_dir: Path) -> StageContext:
    return StageContext(stage=plan.stage(name), inputs=inputs, out_dir=run_dir / name)


def test_sft_then_kto_trains_on_the_sft_model(tmp_path, embedded_model_dir):
    """SFT saves a checkpoint every `checkpoint_every_steps` steps and removes them once its model
    is saved; KTO then trains from the SFT model. (A run killed mid-training and resumed from its
    last checkpoint is tests/test_tiny_e2e.py's, through the CLI: one kill there, not two, for CI
    time.)"""
    plan = compile_file(REPO / "recipes" / "tiny.yaml", ["training.sft.axolotl.max_steps=4", "training.checkpoint_every_steps=2",
                                                         "training.preference.axolotl.max_steps=2", "preferences.kind=kto"], run_dir=tmp_path)
    assert plan.stage("sft").trainer_config["save_steps"] == 2
    solved = [{"id": f"p{i}", "question": f"Tom has {i} apples and buys 2 more. How many apples does he have?",
               "solution": f"{i} + 2 = {i + 2}\n#### {i + 2}", "final_answer": str(i + 2)} for i in range(8)]
    output = tmp_path / "sft" / "output"
    sft = asyncio.run(train.run(_ctx(plan, "sft", {"filter": solved}, tmp_path)))
    assert sft.report["steps"] == 4 and sft.report["resumed_from"] is None and is_model_folder(output)
    assert "Training completed" in (tmp_path / "sft" / "train.log").read_text()
    assert sft.report["resume_checkpoints_removed_bytes"] > 0 and not list(output.glob("checkpoint-*"))

    judged = [{"id": f"p{i}#s{k}", "problem_id": f"p{i}", "question": solved[i]["question"],
               "response": f"#### {i + 2 + k}", "correct": k == 0} for i in range(4) for k in range(2)]
    prefs = asyncio.run(preferences.run(_ctx(plan, "preferences_2", {"judge_2": judged, "filter": solved}, tmp_path)))
    assert prefs.report["desirable"] == 4 and prefs.report["undesirable"] == 4
    write_jsonl(tmp_path / "preferences_2" / "data.jsonl", prefs.rows)
    kto = asyncio.run(train.run(_ctx(plan, "train_2", {"preferences_2": prefs.rows, "sft": []}, tmp_path)))
    assert kto.report["steps"] == 2 and is_model_folder(tmp_path / "train_2" / "output")


def test_lora_sft_trains_an_adapter_and_merges_it_for_serving(tmp_path, embedded_model_dir):
    """adapter: lora trains into sft/adapter and `axolotl merge-lora` leaves a plain model in
    sft/output, the folder practice and eval serve: config + safetensors, the base's tensor
    names (no lora_* left), and weights the training changed."""
    from safetensors.numpy import load_file

    plan = compile_file(
        REPO / "recipes" / "tiny.yaml",
        ["training.sft.axolotl.max_steps=2", "training.sft.axolotl.adapter=lora", "training.sft.axolotl.lora_r=8",
         "training.sft.axolotl.learning_rate=0.001", "training.sft.axolotl.sequence_len=128"],
        run_dir=tmp_path,
    )
    solved = [{"id": f"p{i}", "question": f"Tom has {i} apples and buys 2 more. How many apples does he have?",
               "solution": f"{i} + 2 = {i + 2}\n#### {i + 2}", "final_answer": str(i + 2)} for i in range(8)]
    sft = asyncio.run(train.run(_ctx(plan, "sft", {"filter": solved}, tmp_path)))
    adapter, merged = tmp_path / "sft" / "adapter", tmp_path / "sft" / "output"
    assert sft.report["steps"] == 2 and sft.report["adapter"] == str(adapter) and sft.report["checkpoint"] == str(merged)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert is_model_folder(merged) and (merged / "tokenizer.json").is_file() and not (adapter / "merged").exists()

    def tensors(folder: Path) -> dict:
        out: dict = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    base, new = tensors(embedded_model_dir), tensors(merged)
    assert set(new) == set(base)
    changed = [k for k in base if base[k].shape == new[k].shape and (base[k] != new[k]).any()]
    assert changed and all(k.endswith("proj.weight") for k in changed), changed[:5]


def test_the_shipped_axolotl_key_list_is_the_installed_axolotls():
    """orca_recipe/train/axolotl_keys.txt (read by validate) against Axolotl's own schema."""
    import subprocess

    from orca_recipe.recipe.schema import Launcher
    from orca_recipe.train.axolotl_keys import axolotl_keys
    from orca_recipe.train.launch import axolotl_bin, train_env

    python = axolotl_bin(Launcher()).parent / "python"
    out = subprocess.run([str(python), "-c", "from orca_recipe.train.axolotl_keys import schema_keys; print('\\n'.join(schema_keys()))"],
                         capture_output=True, text=True, timeout=300, env=train_env(Launcher()) | {"PYTHONPATH": str(REPO)}, check=True)
    assert set(out.stdout.split()) == axolotl_keys()


def test_bf16_on_a_cpu_gets_the_use_cpu_plugin_and_every_run_reports_progress_from_the_trainer(tmp_path):
    """bf16 without a GPU: transformers refuses it unless the trainer has `use_cpu`, which only a
    plugin can give (Axolotl's schema has no such key); progress comes from the trainer's state."""
    import json

    from orca_recipe.train.config import CPU_PLUGIN, PLUGIN_DIR, PROGRESS_PLUGIN, with_plugin, without_gpu
    from orca_recipe.train.launch import read_progress

    assert without_gpu({"bf16": False}) == {} and without_gpu({"bf16": "auto"}) == {}
    assert without_gpu({"bf16": True}) == {"plugins": [CPU_PLUGIN]}
    assert without_gpu({"bf16": True, "plugins": ["mine.P", CPU_PLUGIN]}) == {"plugins": ["mine.P", CPU_PLUGIN]}
    assert with_plugin({"plugins": ["mine.P"]}, PROGRESS_PLUGIN) == {"plugins": ["mine.P", PROGRESS_PLUGIN]}
    for name in (CPU_PLUGIN, PROGRESS_PLUGIN):
        assert (PLUGIN_DIR / f"{name.split('.')[0]}.py").is_file()
    f = tmp_path / "progress.json"
    assert read_progress(f) is None
    for text in ("", "{", "[]", '{"step": "x", "max_steps": 4}', '{"step": 1, "max_steps": 0}', "9" * 5000):
        f.write_text(text)
        assert read_progress(f) is None, text
    f.write_text(json.dumps({"step": 3, "max_steps": 8, "loss": 1.2}))
    assert read_progress(f) == (3, 8)
