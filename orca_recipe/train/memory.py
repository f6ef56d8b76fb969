"""What each GPU must hold: a training stage (weights, gradients, optimizer state, activations)
and a vLLM server (weights, the KV cache of one full-length sequence).

The model states follow DeepSpeed's own accounting for mixed-precision Adam (ZeRO paper,
Rajbhandari et al. 2020, §3.1; `estimate_zero3_model_states_mem_needs` in
`deepspeed.runtime.zero.stage3`): 2 bytes of 16-bit weights, 2 of gradients and 12 of fp32
master weights, momentum and variance per parameter -- 16 bytes -- of which ZeRO-1 shards the
12, ZeRO-2 the 12 + 2 and ZeRO-3 / FSDP full sharding all 16 over the GPUs. DeepSpeed itself
is not importable where `plan` runs (no GPU build, no import of heavy packages), so the same
arithmetic is done here. Activations follow Korthikanti et al. 2022 (arXiv 2205.05198, §4):
34·s·b·h bytes per layer in 16-bit with a fused (flash / sdpa) attention kernel; with gradient
checkpointing only each layer's 2·s·b·h input is kept, plus one layer recomputed; the fp32
logits add 4·s·b·V. An estimate, not a measurement: it is meant to tell 20 GB from 100 GB.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1 << 30

# Published configs of the base models recipes name, for planning before the folder is there.
KNOWN_ARCHITECTURES: dict[str, dict[str, int]] = {
    "mistral-7b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "vocab_size": 32000},
    "llama-3-8b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "vocab_size": 128256},
    "qwen2.5-7b": {"hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944, "num_attention_heads": 28,
                   "num_key_value_heads": 4, "vocab_size": 152064},
}


@dataclass(frozen=True)
class Arch:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @property
    def params(self) -> int:
        h, kv = self.hidden, self.hidden * self.kv_heads // self.heads
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * per_layer + h

    def kv_bytes(self, tokens: int, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * (self.hidden // self.heads) * dtype_bytes * tokens


def architecture(model_dir: str | None) -> Arch | None:
    """The folder's config.json, else a known public architecture its name matches, else None."""
    if not model_dir:
        return None
    cfg: dict[str, Any] | None = None
    path = Path(model_dir) / "config.json"
    if path.is_file() and path.stat().st_size < 1 << 20:
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            cfg = None
    if not isinstance(cfg, dict):
        name = re.sub(r"[^a-z0-9.]+", "-", Path(model_dir).name.lower())
        cfg = next((v for k, v in KNOWN_ARCHITECTURES.items() if name.startswith(k)), None)
    if cfg is None:
        return None
    try:
        heads = int(cfg["num_attention_heads"])
        return Arch(int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["intermediate_size"]), heads,
                    int(cfg.get("num_key_value_heads") or heads), int(cfg["vocab_size"]), bool(cfg.get("tie_word_embeddings", False)))
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Estimate:
    """Bytes per GPU, by part."""

    parts: dict[str, float]
    how: str

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = " + ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items() if v)
        return f"{self.total / GIB:.1f} GiB per GPU ({shown}; {self.how})"


def training_estimate(arch: Arch, cfg: dict[str, Any], gpus: int, sharding: str | None) -> Estimate:
    """One GPU's share of a training stage from its rendered Axolotl config. `sharding`: None
    (plain data parallel), 'zero1', 'zero2', 'zero3' or 'fsdp' (full shard)."""
    p = arch.params
    adapter = cfg.get("adapter")
    n = max(1, gpus)
    if adapter in ("lora", "qlora"):
        weight_bytes = 0.5 if adapter == "qlora" or cfg.get("load_in_4bit") else 2.0
        trainable = p * 0.01  # a rank-8..64 adapter on the projections: ~1% of the weights
        parts = {"weights": weight_bytes * p / (n if sharding in ("zero3", "fsdp") else 1), "gradients": 2 * trainable,
                 "optimizer": 12 * trainable}
    else:
        weights, grads, opt = 2.0 * p, 2.0 * p, 12.0 * p
        if sharding in ("zero1", "zero2", "zero3", "fsdp"):
            opt /= n
        if sharding in ("zero2", "zero3", "fsdp"):
            grads /= n
        if sharding in ("zero3", "fsdp"):
            weights /= n
        if cfg.get("bf16") is False and cfg.get("fp16") is not True:  # float32 training: 4-byte weights and gradients
            weights, grads = weights * 2, grads * 2
        parts = {"weights": weights, "gradients": grads, "optimizer": opt}
    if cfg.get("rl") in ("dpo", "kto") and not adapter:  # a frozen reference copy (an adapter's base serves as its own)
        parts["reference model"] = 2.0 * p / (n if sharding in ("zero3", "fsdp") else 1)
    s, b, h = int(cfg.get("sequence_len") or 2048), int(cfg.get("micro_batch_size") or 1), arch.hidden
    if cfg.get("rl") == "dpo":
        b *= 2  # chosen and rejected in one forward pass
    layer = 34 * s * b * h
    checkpointing = bool(cfg.get("gradient_checkpointing"))
    acts = (arch.layers * 2 * s * b * h + layer) if checkpointing else arch.layers * layer
    parts["activations"] = acts + 4 * s * b * arch.vocab
    how = (f"{p / 1e9:.1f}B params, {sharding or 'no sharding'} over {n} GPU{'s' if n != 1 else ''}, micro batch {b} x {s} tokens, "
           f"gradient checkpointing {'on' if checkpointing else 'off'}" + (f", {adapter}" if adapter else ""))
    return Estimate(parts, how)


def serving_estimate(arch: Arch, tensor_parallel: int, max_model_len: int | None) -> Estimate:
    """One GPU's share of a vLLM server: 16-bit weights split over tensor parallelism, and the
    KV cache of one full-length sequence (vLLM refuses to start with less)."""
    tp = max(1, tensor_parallel)
    length = max_model_len or 4096
    return Estimate({"weights": 2.0 * arch.params / tp, "kv cache (1 sequence)": arch.kv_bytes(length) / tp},
                    f"{arch.params / 1e9:.1f}B params, tensor parallel {tp}, {length} tokens")
