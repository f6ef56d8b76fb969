#!/usr/bin/env python3
"""Output-token throughput of an OpenAI-compatible server under concurrent load.

Standard library only. Written for a llama.cpp server (llama-server or an embedded
one) so that the same fixed workload can be sent to vLLM:

  the first N rows of data/gsm8k/train.jsonl, each one chat request
  [{"role": "user", "content": PROMPT + question}] to /v1/chat/completions with
  max_tokens=M, temperature=0, ignore_eos=true (every request then yields exactly
  M tokens where the server honours it; the script counts the real completion
  tokens from each reply's "usage" field either way).

For each concurrency C the client keeps C requests in flight (a thread pool of C
workers over urllib) and reports: output tok/s = total completion tokens / wall
seconds from the first send to the last reply. Two warm-up requests (rows N and
N+1, so they share no prompt with the timed rows) are sent first.

Example:
  python benchmarks/llamacpp_server.py --base-url http://127.0.0.1:8080 \
      --concurrency 1 8 16 32 --n 64 --max-tokens 128
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROMPT = ('Solve this math word problem step by step. On the last line write the '
          'final answer after "####".\n\n')
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "data", "gsm8k", "train.jsonl")


def cpu_info() -> tuple[str, dict[str, bool], int]:
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = val.strip()
                elif key == "flags" and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return model, {w: w in flags for w in wanted}, os.cpu_count() or 0


def load_questions(path: str, count: int) -> list[str]:
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["question"])
            if len(out) >= count:
                break
    if len(out) < count:
        sys.exit(f"{path} has only {len(out)} rows, {count} needed")
    return out


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def model_name(base: str, given: str | None) -> str:
    if given:
        return given
    try:
        data = get_json(base + "/v1/models")
        return data["data"][0]["id"]
    except Exception:
        return "default"


class Client:
    def __init__(self, base: str, model: str, max_tokens: int, ignore_eos: bool,
                 timeout: float):
        self.url = base + "/v1/chat/completions"
        self.model = model
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos
        self.timeout = timeout

    def one(self, question: str) -> tuple[int, float, str]:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": PROMPT + question}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        req = urllib.request.Request(
            self.url, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            data = json.loads(r.read())
        dt = time.perf_counter() - t0
        tokens = int(data["usage"]["completion_tokens"])
        text = data["choices"][0]["message"].get("content") or ""
        return tokens, dt, text


def run_level(client: Client, questions: list[str], conc: int) -> dict:
    errors: list[str] = []
    lock = threading.Lock()

    def task(q):
        try:
            return client.one(q)
        except Exception as e:  # noqa: BLE001 - report, don't die
            with lock:
                errors.append(repr(e)[:200])
            return None

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=conc) as pool:
        results = list(pool.map(task, questions))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r is not None]
    toks = [r[0] for r in ok]
    lats = [r[1] for r in ok]
    return {
        "concurrency": conc,
        "requests": len(questions),
        "ok": len(ok),
        "errors": errors,
        "completion_tokens": sum(toks),
        "min_tokens": min(toks) if toks else 0,
        "max_tokens": max(toks) if toks else 0,
        "wall_s": wall,
        "output_tok_s": sum(toks) / wall if wall > 0 else 0.0,
        "mean_latency_s": statistics.mean(lats) if lats else 0.0,
        "per_stream_tok_s": statistics.mean(t / lat for t, lat in zip(toks, lats) if lat > 0)
        if lats else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8080",
                    help="server root, without /v1")
    ap.add_argument("--concurrency", nargs="+", default=["1", "8", "16", "32"],
                    help="levels, space- or comma-separated (default 1 8 16 32)")
    ap.add_argument("--n", type=int, default=64, help="requests per level (rows)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--model", default=None, help="model id (default: first of /v1/models)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="gsm8k train.jsonl")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-ignore-eos", action="store_true",
                    help="do not send ignore_eos (servers that reject it)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per request, seconds")
    ap.add_argument("--label", default="", help="free text printed on each result line")
    ap.add_argument("--json", default=None, help="also append result objects to this file")
    a = ap.parse_args()

    levels = [int(x) for item in a.concurrency for x in str(item).split(",") if x]
    base = a.base_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]

    model, flags, ncpu = cpu_info()
    print(f"cpu: {model} | {ncpu} logical CPUs | "
          + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items()))
    print(f"python {platform.python_version()} | server {base} | n={a.n} "
          f"max_tokens={a.max_tokens} ignore_eos={not a.no_ignore_eos}")

    questions = load_questions(a.data, a.n + a.warmup)
    timed, warm = questions[:a.n], questions[a.n:a.n + a.warmup]
    name = model_name(base, a.model)
    client = Client(base, name, a.max_tokens, not a.no_ignore_eos, a.timeout)

    for q in warm:
        toks, dt, _ = client.one(q)
        print(f"warmup: {toks} tokens in {dt:.2f} s")

    for conc in levels:
        r = run_level(client, timed, conc)
        r["label"] = a.label
        r["model"] = name
        tag = f"[{a.label}] " if a.label else ""
        print(f"{tag}C={conc:<3d} requests={r['ok']}/{r['requests']} "
              f"completion_tokens={r['completion_tokens']} "
              f"(per request {r['min_tokens']}-{r['max_tokens']}) "
              f"wall={r['wall_s']:.2f}s output_tok/s={r['output_tok_s']:.1f} "
              f"mean_latency={r['mean_latency_s']:.2f}s "
              f"per_stream_tok/s={r['per_stream_tok_s']:.1f}", flush=True)
        for e in r["errors"][:3]:
            print(f"  error: {e}")
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
