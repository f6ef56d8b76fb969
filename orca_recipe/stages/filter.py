"""Dedup (exact and near) and decontamination against the eval set.

Near duplicates: MinHash over word 3-grams with LSH banding finds candidates, exact Jaccard
confirms them, so 200K problems take seconds, not an O(n^2) afternoon. Decontamination drops
any problem sharing a word n-gram (13 by default) with an eval question.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

from orca_recipe.stages.base import Row, StageContext, StageResult

_WORD = re.compile(r"[a-z0-9]+")
_BANDS, _ROWS = 16, 4  # 64 hashes; pairs at Jaccard 0.9 collide in some band with p > 0.99


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(ws: list[str], n: int) -> set[str]:
    if len(ws) < n:
        return {" ".join(ws)} if ws else set()
    return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def _minhash(shingles: set[str]) -> list[int]:
    hashes = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in shingles]
    if not hashes:
        return [0] * (_BANDS * _ROWS)
    # 64 cheap permutations: xor with fixed masks, then min
    return [min(h ^ m for h in hashes) for m in _MASKS]


_MASKS = [int.from_bytes(hashlib.blake2b(f"mask{i}".encode(), digest_size=8).digest(), "little") for i in range(_BANDS * _ROWS)]


def near_duplicates(texts: list[str], threshold: float) -> dict[int, int]:
    """index -> index of the earlier text it nearly duplicates (Jaccard of word 3-grams)."""
    shingles = [ngrams(words(t), 3) for t in texts]
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
    dup: dict[int, int] = {}
    for i, sh in enumerate(shingles):
        sig = _minhash(sh)
        candidates: set[int] = set()
        for b in range(_BANDS):
            key = (b, tuple(sig[b * _ROWS : (b + 1) * _ROWS]))
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


async def run(ctx: StageContext) -> StageResult:
    cfg = ctx.recipe.filters
    rows = list(ctx.inputs["solve"])
    ctx.set_total(len(rows))
    rejects: list[Row] = []
    report: dict[str, int | str | None] = {"input": len(rows)}

    if cfg.dedup and cfg.dedup.exact:
        seen: dict[str, str] = {}
        kept = []
        for r in rows:
            key = " ".join(words(r["question"]))
            if key in seen:
                rejects.append(r | {"reason": "exact_duplicate", "duplicate_of": seen[key]})
            else:
                seen[key] = r["id"]
                kept.append(r)
        report["exact_duplicates"] = len(rows) - len(kept)
        rows = kept
    if cfg.dedup and cfg.dedup.near_threshold is not None:
        dup = near_duplicates([r["question"] for r in rows], cfg.dedup.near_threshold)
        rejects.extend(rows[i] | {"reason": "near_duplicate", "duplicate_of": rows[j]["id"]} for i, j in sorted(dup.items()))
        report["near_duplicates"] = len(dup)
        rows = [r for i, r in enumerate(rows) if i not in dup]
    if cfg.decontaminate is not None:
        eval_questions = ctx.extra.get("eval_questions") or []
        n = cfg.decontaminate.ngram
        eval_grams: set[str] = set()
        for q in eval_questions:
            eval_grams |= ngrams(words(q), n)
        kept = []
        for r in rows:
            hit = ngrams(words(r["question"]), n) & eval_grams
            if hit:
                rejects.append(r | {"reason": f"contaminated: shares a {n}-gram with the eval set", "ngram": sorted(hit)[0]})
            else:
                kept.append(r)
        report["contaminated"] = len(rows) - len(kept)
        report["eval_questions"] = len(eval_questions)
        rows = kept
    report["kept"] = len(rows)
    ctx.advance(report["input"])  # type: ignore[arg-type]
    return StageResult(rows=rows, rejects=rejects, report=report)
