"""Engine settings are functions of the machine: checked on canned /proc/cpuinfo texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orca_recipe.llm import hardware
from orca_recipe.llm.hardware import choose_dtype, cpu_thread_env, kv_cache_gib, parse_cpuinfo
from orca_recipe.llm.local import VLLMServer

EPYC_ZEN3 = """\
processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
flags		: fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2
processor	: 1
model name	: AMD EPYC 7B13
flags		: fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2
"""
SAPPHIRE_RAPIDS = """\
processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""
COOPER_LAKE_NO_AMX = """\
model name	: Intel(R) Xeon(R) CPU
flags		: avx2 fma avx512f avx512_bf16
"""
SKYLAKE_AVX512_ONLY = """\
model name	: Intel(R) Xeon(R) Gold 6154
flags		: avx2 fma avx512f avx512bw avx512vl
"""
AARCH64 = """\
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16
"""


@pytest.mark.parametrize(
    "text, expected",
    [(EPYC_ZEN3, "float32"), (SKYLAKE_AVX512_ONLY, "float32"), (SAPPHIRE_RAPIDS, "bfloat16"),
     (COOPER_LAKE_NO_AMX, "bfloat16"), (AARCH64, "float32"), ("", "float32")],
)
def test_auto_dtype_is_bf16_only_where_the_cpu_has_it(text, expected):
    assert choose_dtype("auto", gpu=False, cpu=parse_cpuinfo(text, cores=2)) == expected


def test_an_explicit_dtype_wins_and_a_gpu_lets_vllm_choose():
    zen3 = parse_cpuinfo(EPYC_ZEN3, cores=2)
    assert choose_dtype("bfloat16", gpu=False, cpu=zen3) == "bfloat16"
    assert choose_dtype("float32", gpu=False, cpu=parse_cpuinfo(SAPPHIRE_RAPIDS, cores=2)) == "float32"
    assert choose_dtype("auto", gpu=True, cpu=zen3) == "auto"


def test_cpu_description_names_model_cores_and_flags():
    info = parse_cpuinfo(EPYC_ZEN3, cores=2)
    assert info.model == "AMD EPYC 7B13" and not info.has_bf16
    assert info.describe() == "AMD EPYC 7B13 · 2 cores · flags: avx2 fma"
    assert "avx512_bf16 amx_bf16 amx_tile" in parse_cpuinfo(SAPPHIRE_RAPIDS, cores=2).describe()


def test_small_machines_give_every_core_to_compute():
    assert cpu_thread_env(parse_cpuinfo(EPYC_ZEN3, cores=2)) == {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"}
    assert cpu_thread_env(parse_cpuinfo(SAPPHIRE_RAPIDS, cores=32)) == {}  # vLLM's own binding


def smol_config(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576, "head_dim": 64,
        "max_position_embeddings": 8192}))
    return tmp_path


def test_kv_cache_is_sized_for_the_model_not_a_fixed_4_gib(tmp_path):
    model = smol_config(tmp_path)
    assert hardware.kv_bytes_per_token(json.loads((model / "config.json").read_text()), "float32") == 2 * 30 * 3 * 64 * 4
    fp32 = kv_cache_gib(model, "float32", 128, 8192)
    assert 3.0 <= fp32 <= 3.5  # 128 sequences x 512 tokens x 46 KB, +10%
    assert kv_cache_gib(model, "bfloat16", 128, 8192) == pytest.approx(fp32 / 2, abs=0.25)
    assert kv_cache_gib(model, "float32", 1, 256) == 0.25  # the floor
    assert kv_cache_gib(tmp_path / "nowhere", "float32", 64, 8192) == 4.0  # unknown model: vLLM's old default


def test_the_server_command_carries_one_dtype_and_the_sizing(tmp_path, monkeypatch):
    model = smol_config(tmp_path)
    monkeypatch.setattr(hardware, "cpu_info", lambda: parse_cpuinfo(EPYC_ZEN3, cores=2))
    cmd = VLLMServer(model, served_name="m", log_path=tmp_path / "log", cpu=True, python="python").command(1)
    assert cmd.count("--dtype") == 1 and cmd[cmd.index("--dtype") + 1] == "float32"
    assert cmd[cmd.index("--max-num-seqs") + 1] == str(hardware.CPU_MAX_NUM_SEQS)
    assert 3 << 30 <= int(cmd[cmd.index("--kv-cache-memory-bytes") + 1]) <= 3.5 * 2**30
    explicit = VLLMServer(model, served_name="m", log_path=tmp_path / "log", cpu=True, python="python", dtype="bfloat16").command(1)
    assert explicit.count("--dtype") == 1 and explicit[explicit.index("--dtype") + 1] == "bfloat16"
    for var in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(var, raising=False)
    env = VLLMServer(model, served_name="m", log_path=tmp_path / "log", cpu=True, python="python").child_env()
    assert env["OMP_NUM_THREADS"] == "2" and env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a user's own setting wins
    assert VLLMServer(model, served_name="m", log_path=tmp_path / "log", cpu=True, python="python").child_env()["OMP_NUM_THREADS"] == "1"


def test_a_local_request_may_take_as_long_as_the_work_in_flight():
    """On a slow CPU a request still being generated is waited for, not abandoned and re-sent:
    its timeout is everything the stage can have in flight at 10 tok/s, plus a minute."""
    from orca_recipe.llm.pool import GPU_FLOOR_TOK_S, LOCAL_FLOOR_TOK_S, LOCAL_TIMEOUT_CAP_S, local_timeout
    from orca_recipe.recipe.compile import compile_file

    def reply_shape(plan, stage: str, agent: str) -> tuple[int, int]:
        call = plan.stage(stage).agent_calls[agent]  # compiled with the stage, not decided at run time
        return call.samples, call.max_tokens

    def timeout(plan, stage: str, agent: str, model: str, gpu: bool = False) -> float:
        return local_timeout(plan.recipe.models[model].concurrency, *reply_shape(plan, stage, agent), gpu=gpu)

    root = Path(__file__).resolve().parents[1]
    plan = compile_file(root / "recipes" / "tiny.yaml")
    r = plan.recipe
    assert reply_shape(plan, "practice_2", "student") == (r.practice.samples_per_problem, r.practice.max_tokens)
    assert reply_shape(plan, "eval_base", "student") == (1, r.eval.max_tokens)
    assert reply_shape(plan, "solve", "solver") == (r.solve.samples, r.models["smol"].sampling.max_tokens)
    expected = 60 + r.models["smol"].concurrency * r.practice.samples_per_problem * r.practice.max_tokens / LOCAL_FLOOR_TOK_S
    assert timeout(plan, "practice_2", "student", "smol") == min(LOCAL_TIMEOUT_CAP_S, expected) > r.models["smol"].timeout_s
    assert timeout(plan, "eval_base", "student", "smol") == 60 + r.models["smol"].concurrency * r.eval.max_tokens / LOCAL_FLOOR_TOK_S
    # the paper recipe's practice (256 in flight x 4 samples x 1,024 tokens) waited ~29 h per request before the cap
    paper = compile_file(root / "recipes" / "orca_math.yaml")
    pr = paper.recipe
    on_gpu = timeout(paper, "practice_2", "student", "student", gpu=True)
    assert on_gpu == 60 + pr.models["student"].concurrency * 4 * pr.practice.max_tokens / GPU_FLOOR_TOK_S < LOCAL_TIMEOUT_CAP_S
    assert timeout(paper, "practice_2", "student", "student") == LOCAL_TIMEOUT_CAP_S == 7200
