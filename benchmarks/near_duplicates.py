"""Near-duplicate detection, measured: recall and precision against exact Jaccard on a labelled
set of word problems, for the hand-written MinHash the filter used before (64 XOR-mask
"permutations", 16 bands x 4 rows) and for datasketch's MinHash + MinHashLSH it uses now.

The set: GSM8K train questions plus near-duplicate variants of some of them (a number changed,
a word swapped, dropped or added, a sentence reordered), as generated problems collide. The
truth for each text is exact: does an earlier text have word-3-gram Jaccard >= the threshold?
Both detectors confirm candidates with exact Jaccard, so precision is 1 by construction; what
differs is how many true pairs their hashing finds (recall).

Run: .venv/bin/python benchmarks/near_duplicates.py [--n 3000] [--variants 1500] [--threshold 0.9]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orca_recipe.llm.hardware import cpu_info  # noqa: E402
from orca_recipe.stages.filter import near_duplicates, ngrams, words  # noqa: E402

# --- before: the filter's hand-written MinHash, as it was (commit 8ee2a3d) ---------------------
_BANDS, _ROWS = 16, 4
_MASKS = [int.from_bytes(hashlib.blake2b(f"mask{i}".encode(), digest_size=8).digest(), "little") for i in range(_BANDS * _ROWS)]


def _minhash(shingles: set[str]) -> list[int]:
    hashes = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in shingles]
    if not hashes:
        return [0] * (_BANDS * _ROWS)
    return [min(h ^ m for h in hashes) for m in _MASKS]


def before(texts: list[str], threshold: float) -> dict[int, int]:
    shingles = [ngrams(words(t), 3) for t in texts]
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
    dup: dict[int, int] = {}
    for i, sh in enumerate(shingles):
        sig = _minhash(sh)
        candidates: set[int] = set()
        for b in range(_BANDS):
            key = (b, tuple(sig[b * _ROWS: (b + 1) * _ROWS]))
            candidates.update(buckets[key])
            buckets[key].append(i)
        for j in sorted(candidates):
            if j in dup:
                continue
            inter = len(sh & shingles[j])
            union = len(sh | shingles[j]) or 1
            if inter / union >= threshold:
                dup[i] = j
                break
    return dup


# --- the labelled set ----------------------------------------------------------------------------
def variant(text: str, rng: random.Random) -> str:
    ws = text.split()
    for _ in range(rng.randint(1, 2)):
        k = rng.randrange(len(ws))
        edit = rng.choice(["number", "swap", "drop", "add"])
        if edit == "number":
            ws[k] = str(rng.randint(2, 99)) if any(c.isdigit() for c in ws[k]) else ws[k] + "s"
        elif edit == "swap" and k + 1 < len(ws):
            ws[k], ws[k + 1] = ws[k + 1], ws[k]
        elif edit == "drop" and len(ws) > 10:
            ws.pop(k)
        else:
            ws.insert(k, rng.choice(["then", "also", "each", "more", "the"]))
    return " ".join(ws)


def labelled(n: int, variants: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rows = [json.loads(line)["question"] for line in (REPO / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()]
    base = rng.sample(rows, n)
    texts = base + [variant(rng.choice(base), rng) for _ in range(variants)]
    rng.shuffle(texts)
    return texts


def truth(texts: list[str], threshold: float) -> set[int]:
    """Indices with an earlier kept text at Jaccard >= threshold (the filter's rule: a duplicate
    of a duplicate is compared with the texts kept), by exact comparison of all pairs whose
    sizes allow it (|A| / |B| >= t is necessary for J >= t)."""
    sh = [ngrams(words(t), 3) for t in texts]
    out = set()
    for i in range(len(texts)):
        for j in range(i):
            if j in out:
                continue
            a, b = sh[i], sh[j]
            if not a or not b or min(len(a), len(b)) < threshold * max(len(a), len(b)):
                continue
            if len(a & b) / len(a | b) >= threshold:
                out.add(i)
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--variants", type=int, default=1500)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--seeds", type=int, default=3, help="labelled sets drawn (each a different sample and variants)")
    args = ap.parse_args()
    print(f"CPU: {cpu_info().describe()}")
    for name, fn in (("before (hand-written, 64 XOR masks)", before), ("after (datasketch MinHash + LSH)", near_duplicates)):
        found_true = true_total = reported = 0
        seconds = 0.0
        for seed in range(args.seeds):
            texts = labelled(args.n, args.variants, seed)
            real = truth(texts, args.threshold)
            t = time.perf_counter()
            got = fn(texts, args.threshold)
            seconds += time.perf_counter() - t
            reported += len(got)
            found_true += len(set(got) & real)
            true_total += len(real)
        recall = found_true / true_total if true_total else 1.0
        precision = found_true / reported if reported else 1.0
        print(f"{name}: recall {recall:.4f} ({found_true}/{true_total}), precision {precision:.4f}, "
              f"{seconds / args.seeds:.2f} s per set of {args.n + args.variants} texts")


if __name__ == "__main__":
    main()
