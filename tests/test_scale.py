"""Generation and training at scale, checked without a GPU: the vLLM and launcher flags
rendered, the DeepSpeed/FSDP/LoRA keys Axolotl gets, and every error naming its key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _cli import REPO, run_cli
from orca_recipe.errors import UserError
from orca_recipe.llm.hardware import gpu_count
from orca_recipe.llm.local import VLLMServer
from orca_recipe.llm.pool import local_args
from orca_recipe.recipe.compile import compile_file
from orca_recipe.recipe.machine import check_machine, gpu_needs
from orca_recipe.train.deepspeed import PRESETS, write_deepspeed_config
from orca_recipe.train.launch import launcher_args

TINY = REPO / "recipes" / "tiny.yaml"
MULTI = REPO / "recipes" / "orca_math_7b_multi_gpu.yaml"


def error(sets: list[str], recipe: Path = TINY, gpus: int | None = None) -> str:
    """The message compiling (and, with `gpus`, checking the machine for) a recipe raises."""
    with pytest.raises(UserError) as exc:
        plan = compile_file(recipe, sets)
        if gpus is not None:
            check_machine(plan.recipe, plan.loaded, gpus)
    return str(exc.value)


# --------------------------------------------------------------------------- vLLM


def test_vllm_parallelism_is_rendered_into_the_server_flags(tmp_path):
    plan = compile_file(TINY, ["models.smol.local.tensor_parallel_size=2", "models.smol.local.pipeline_parallel_size=2",
                               "models.smol.local.data_parallel_size=3", "models.smol.local.distributed_executor_backend=ray"])
    local = plan.recipe.models["smol"].local
    args = local_args(local)
    assert args == ["--tensor-parallel-size", "2", "--pipeline-parallel-size", "2", "--data-parallel-size", "3",
                    "--distributed-executor-backend", "ray"]
    assert local.gpus == 12
    (tmp_path / "config.json").write_text("{}")
    cmd = VLLMServer(tmp_path, served_name="m", log_path=tmp_path / "log", cpu=False, python="python", extra_args=args).command(1)
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2" and cmd[cmd.index("--distributed-executor-backend") + 1] == "ray"
    assert local_args(compile_file(TINY).recipe.models["smol"].local) == []  # one CPU engine: no flags


@pytest.mark.parametrize("sets, needle", [
    (["models.smol.local.tensor_parallel_size=0"], "models.smol.local.tensor_parallel_size"),
    (["models.smol.local.pipeline_parallel_size=-1"], "models.smol.local.pipeline_parallel_size"),
    (["models.smol.local.data_parallel_size=two"], "models.smol.local.data_parallel_size"),
    (["models.smol.local.distributed_executor_backend=slurm"], "models.smol.local.distributed_executor_backend"),
])
def test_vllm_parallelism_is_range_checked(sets, needle):
    msg = error(sets)
    assert (f"{TINY}:" in msg or msg.startswith("--set ")) and needle in msg


def test_vllm_parallelism_needs_the_gpus_it_names():
    msg = error(["models.smol.local.tensor_parallel_size=2", "models.smol.local.data_parallel_size=2"], gpus=0)
    assert msg == ("--set models.smol.local.tensor_parallel_size: models.smol.local.tensor_parallel_size: vLLM serves 'smol' on 4 GPUs "
                   "(tensor_parallel_size 2 x data_parallel_size 2): needs 4 GPUs per node, this machine has no GPU (none found). "
                   "Run it on a GPU machine; `validate --gpus 4` checks it for one from here.")
    assert "this machine has 2 GPUs" in error(["models.smol.local.tensor_parallel_size=4"], gpus=2)
    plan = compile_file(TINY, ["models.smol.local.tensor_parallel_size=2", "models.smol.local.data_parallel_size=2"])
    check_machine(plan.recipe, plan.loaded, 4)  # enough: no error
    assert "ray executor" in error(["models.smol.local.distributed_executor_backend=ray"], gpus=0)
    check_machine(*_plan(["models.smol.local.distributed_executor_backend=mp"]), 0)  # mp alone runs on a CPU


def _plan(sets):
    plan = compile_file(TINY, sets)
    return plan.recipe, plan.loaded


def test_gpus_are_counted_from_the_driver_and_cuda_visible_devices(tmp_path):
    assert gpu_count(tmp_path, {}) == 0
    gpus = tmp_path / "proc" / "driver" / "nvidia" / "gpus"
    for bus in ("0000:00:04.0", "0000:00:05.0", "0000:00:06.0"):
        (gpus / bus).mkdir(parents=True)
    assert gpu_count(tmp_path, {}) == 3
    assert gpu_count(tmp_path, {"CUDA_VISIBLE_DEVICES": "1,2"}) == 2
    assert gpu_count(tmp_path, {"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert gpu_count(tmp_path, {"CUDA_VISIBLE_DEVICES": "0,-1,2"}) == 1
    dev = tmp_path / "container"
    (dev / "dev").mkdir(parents=True)
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (dev / "dev" / name).touch()
    assert gpu_count(dev, {}) == 2


# --------------------------------------------------------------------------- launcher


def test_launcher_flags_for_accelerate_and_torchrun():
    def args(*sets):
        return launcher_args(compile_file(TINY, list(sets)).recipe.training.launcher)

    assert args() == []
    assert args("training.launcher.kind=accelerate", "training.launcher.num_processes=4") == [
        "--num_processes", "4", "--num_machines", "1"]
    multi = ["training.launcher.num_processes=8", "training.launcher.num_nodes=2", "training.launcher.node_rank=1",
             "training.launcher.main_process_ip=10.0.0.1", "training.launcher.main_process_port=29500"]
    assert args("training.launcher.kind=accelerate", *multi) == [
        "--num_processes", "16", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
        "--main_process_port", "29500"]
    assert args("training.launcher.kind=torchrun", *multi, "training.launcher.extra_args=[--rdzv_backend, c10d]") == [
        "--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1", "--master_port", "29500",
        "--rdzv_backend", "c10d"]


@pytest.mark.parametrize("sets, needle", [
    (["training.launcher.num_processes=2"], "kind python runs one process"),
    (["training.launcher.kind=torchrun", "training.launcher.num_nodes=2"], "num_nodes > 1 needs main_process_ip"),
    (["training.launcher.kind=torchrun", "training.launcher.node_rank=1"], "node_rank 1 must be below num_nodes (1)"),
    (["training.launcher.kind=deepspeed"], "training.launcher.kind"),
    (["training.launcher.main_process_port=70000"], "training.launcher.main_process_port"),
    (["training.launcher.num_machines=2"], "num_machines"),  # accelerate's word; the key is num_nodes
])
def test_launcher_mistakes_name_the_key(sets, needle):
    msg = error(sets)
    assert (f"{TINY}:" in msg or msg.startswith("--set ")) and "training.launcher" in msg and needle in msg


def test_multi_process_training_needs_gpus():
    sets = ["training.launcher.kind=accelerate", "training.launcher.num_processes=2"]
    msg = error(sets, gpus=0)
    assert "training.launcher.num_processes: training runs 2 processes, one per GPU: needs 2 GPUs per node" in msg
    check_machine(*_plan(sets), 2)
    node_rank_0, node_rank_1 = (compile_file(TINY, [*sets, "training.launcher.num_nodes=2", "training.launcher.main_process_ip=h",
                                                    f"training.launcher.node_rank={r}"]) for r in (0, 1))
    assert node_rank_0.stage("sft").fingerprint == node_rank_1.stage("sft").fingerprint  # every node: one job


# --------------------------------------------------------------------------- DeepSpeed / FSDP


def test_deepspeed_preset_points_axolotl_at_a_file_in_the_stage_folder(tmp_path):
    plan = compile_file(TINY, ["training.distributed.deepspeed=zero3"], run_dir=tmp_path)
    assert plan.stage("sft").trainer_config["deepspeed"] == str(tmp_path / "sft" / "deepspeed.json")
    assert plan.stage("train_2").trainer_config["deepspeed"] == str(tmp_path / "train_2" / "deepspeed.json")
    written = json.loads(write_deepspeed_config("zero3", tmp_path / "sft" / "deepspeed.json").read_text())
    assert written["zero_optimization"]["stage"] == 3 and written["train_micro_batch_size_per_gpu"] == "auto"
    assert written["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # a servable model on save
    assert PRESETS["zero2"]["zero_optimization"]["stage"] == 2
    assert PRESETS["zero3_offload"]["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "distributed" not in compile_file(TINY).stage("sft").config  # unset: fingerprints as before
    assert compile_file(TINY).stage("sft").fingerprint != plan.stage("sft").fingerprint


def test_a_deepspeed_file_is_read_relative_to_the_recipe_and_copied(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.json").write_text('{"zero_optimization": {"stage": 1}}')
    fork = tmp_path / "fork.yaml"
    fork.write_text(f"extends: {TINY}\ntraining:\n  distributed:\n    deepspeed: ds/mine.json\n")
    plan = compile_file(fork, run_dir=tmp_path / "run")
    assert plan.recipe.training.distributed.deepspeed == str(tmp_path / "ds" / "mine.json")
    copied = write_deepspeed_config(plan.recipe.training.distributed.deepspeed, tmp_path / "run" / "sft" / "deepspeed.json")
    assert json.loads(copied.read_text()) == {"zero_optimization": {"stage": 1}}
    fork.write_text(f"extends: {TINY}\ntraining:\n  distributed:\n    deepspeed: ds/missing.json\n")
    assert "training.distributed.deepspeed: DeepSpeed config file not found" in error([], fork)


def test_fsdp_renders_axolotl_fsdp_version_and_config():
    cfg = compile_file(TINY, ["training.distributed.fsdp={transformer_layer_cls_to_wrap: LlamaDecoderLayer, offload_params: true}"]
                       ).stage("sft").trainer_config
    assert cfg["fsdp_version"] == 2 and "deepspeed" not in cfg
    assert cfg["fsdp_config"] == {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                                  "state_dict_type": "FULL_STATE_DICT", "offload_params": True}


@pytest.mark.parametrize("sets, needle", [
    (["training.distributed.deepspeed=zero3", "training.distributed.fsdp={}"], "set deepspeed or fsdp, not both"),
    (["training.distributed.deepspeed=zero4"], "expected one of zero2, zero3, zero3_offload or a DeepSpeed .json file"),
    (["training.distributed.fsdp={version: 3}"], "training.distributed.fsdp.version"),
    (["training.distributed.fsdp={auto_wrap_policy: SIZE_BASED_WRAP}"], "SIZE_BASED_WRAP needs min_num_params"),
    (["training.distributed.fsdp={offload: true}"], "training.distributed.fsdp.offload"),
])
def test_sharding_mistakes_name_the_key(sets, needle):
    msg = error(sets)
    assert (f"{TINY}:" in msg or msg.startswith("--set ")) and "training.distributed" in msg and needle in msg


def test_sharded_training_needs_gpus():
    assert "training.distributed.deepspeed: DeepSpeed zero2 shards training across GPUs: needs 1 GPU per node" in error(
        ["training.distributed.deepspeed=zero2"], gpus=0)
    assert "training.distributed.fsdp: FSDP2" in error(["training.distributed.fsdp={}"], gpus=0)


# --------------------------------------------------------------------------- LoRA / QLoRA


def test_lora_keys_reach_axolotl_with_defaults_and_train_into_adapter(tmp_path):
    plan = compile_file(TINY, ["training.sft.axolotl.adapter=lora", "training.sft.axolotl.lora_r=8",
                               "training.preference.axolotl.adapter=lora", "training.preference.axolotl.lora_target_modules=[q_proj, v_proj]"],
                        run_dir=tmp_path)
    sft, pref = plan.stage("sft").trainer_config, plan.stage("train_2").trainer_config
    assert (sft["adapter"], sft["lora_r"], sft["lora_alpha"], sft["lora_dropout"], sft["lora_target_linear"]) == ("lora", 8, 32, 0.05, True)
    assert pref["lora_target_modules"] == ["q_proj", "v_proj"] and "lora_target_linear" not in pref
    assert sft["output_dir"] == str(tmp_path / "sft" / "adapter")  # merged into sft/output after training
    assert pref["base_model"] == str(tmp_path / "sft" / "output")
    assert compile_file(TINY, ["training.sft.axolotl.adapter=qlora"]).stage("sft").trainer_config["load_in_4bit"] is True


@pytest.mark.parametrize("sets, needle", [
    (["training.sft.axolotl.adapter=lora", "training.sft.axolotl.lora_r=0"], "training.sft.axolotl.lora_r"),
    (["training.sft.axolotl.adapter=lora", "training.sft.axolotl.lora_alpha=-4"], "training.sft.axolotl.lora_alpha"),
    (["training.sft.axolotl.adapter=lora", "training.sft.axolotl.lora_dropout=1.0"], "training.sft.axolotl.lora_dropout"),
    (["training.sft.axolotl.adapter=dora"], "training.sft.axolotl.adapter"),
    (["training.preference.axolotl.lora_r=8"], "lora_r is set but no adapter"),
    (["training.sft.axolotl.adapter=qlora", "training.sft.axolotl.load_in_8bit=true"], "adapter qlora loads the base in 4-bit"),
    (["training.sft.axolotl.load_in_4bit=true"], "train only an adapter"),
])
def test_lora_mistakes_name_the_key(sets, needle):
    msg = error(sets)
    assert (f"{TINY}:" in msg or msg.startswith("--set ")) and needle in msg


def test_qlora_needs_a_gpu():
    assert "training.sft.axolotl.adapter: QLoRA / 8-bit loading quantizes the base with bitsandbytes, which needs a CUDA GPU" in error(
        ["training.sft.axolotl.adapter=qlora"], gpus=0)
    check_machine(*_plan(["training.sft.axolotl.adapter=lora"]), 0)  # LoRA trains on a CPU


# --------------------------------------------------------------------------- the shipped multi-GPU recipe


def test_multi_gpu_recipe_plans_anywhere_and_validates_only_where_its_gpus_are(tmp_path):
    plan = compile_file(MULTI, run_dir=tmp_path)
    assert [(".".join(n.key), n.gpus) for n in gpu_needs(plan.recipe)] == [
        ("models.student.local.tensor_parallel_size", 2), ("training.launcher.num_processes", 2), ("training.distributed.deepspeed", 2)]
    sft = plan.stage("sft").trainer_config
    assert (sft["adapter"], sft["deepspeed"], sft["output_dir"]) == ("lora", str(tmp_path / "sft" / "deepspeed.json"), str(tmp_path / "sft" / "adapter"))
    assert local_args(plan.recipe.models["student"].local)[:4] == ["--tensor-parallel-size", "2", "--distributed-executor-backend", "mp"]

    proc = run_cli("validate", MULTI, "--gpus", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    flat = " ".join(proc.stderr.split())
    assert flat.startswith("error: 3 GPU needs this machine cannot meet: ")  # every one at once, not one per try
    assert (f"{MULTI}:16:7: models.student.local.tensor_parallel_size: vLLM serves 'student' on 2 GPUs (tensor_parallel_size 2): "
            "needs 2 GPUs per node, this machine has no GPU (none found).") in flat
    assert flat.endswith("Run it on a GPU machine; `validate --gpus 2` checks it for one from here.")
    assert run_cli("validate", MULTI, "--gpus", "2").returncode == 0
    shown = run_cli("plan", MULTI, "--no-prompts", "--out", tmp_path / "plan")
    assert shown.returncode == 0 and "GPUs needed per node" in shown.stdout and "training.distributed.deepspeed: 2" in shown.stdout
