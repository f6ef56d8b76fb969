"""Dedup (exact and near) and decontamination against the eval set.

Near duplicates: datasketch's MinHash over word 3-grams with its LSH index finds candidates,
exact Jaccard confirms them, so 200K problems take seconds, not an O(n^2) afternoon. Decontamination drops
any problem sharing a word n-gram (13 by default) with an eval question.
"""

from __future__ import annotations

import re
from typing import Any

from orca_recipe.problems import load_problems
from orca_recipe.recipe.schema import Filters
from orca_recipe.stages.base import Row, StageContext, StageResult

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(ws: list[str], n: int) -> set[str]:
    if len(ws) < n:
        return {" ".join(ws)} if ws else set()
    return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


NUM_PERM = 128  # MinHash permutations (datasketch): signature size, and LSH's bands x rows
CANDIDATE_SLACK = 0.1  # LSH looks for candidates this far below the threshold; exact Jaccard decides


def near_duplicates(texts: list[str], threshold: float) -> dict[int, int]:
    """index -> index of the earlier text it nearly duplicates (Jaccard of word 3-grams >= threshold).

    datasketch's MinHash (seeded universal hashing, min-wise independent) and MinHashLSH find
    candidates, tuned to miss few pairs (false negatives weighted 4:1 over false positives,
    at a threshold CANDIDATE_SLACK below the one asked for); the exact Jaccard of the two
    shingle sets confirms each, so every pair reported is a true near duplicate.
    """
    from datasketch import MinHash, MinHashLSH

    shingles = [ngrams(words(t), 3) for t in texts]
    lsh = MinHashLSH(threshold=max(0.05, threshold - CANDIDATE_SLACK), num_perm=NUM_PERM, weights=(0.2, 0.8))
    dup: dict[int, int] = {}
    for i, sh in enumerate(shingles):
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([s.encode() for s in sh])
        for j in sorted(lsh.query(m)):
            if j in dup:
                continue
            union = len(sh | shingles[j])
            if union and len(sh & shingles[j]) / union >= threshold:
                dup[i] = j
                break
        lsh.insert(i, m)
    return dup


def contamination_questions(data: dict[str, Any]) -> list[str]:
    """The questions no generated problem may share an n-gram with: the decontamination file's
    (the eval set unless the recipe names another) and the held-out dev split's."""
    questions: list[str] = []
    if data.get("decontaminate"):
        questions += [r["question"] for r in load_problems(data["decontaminate"], "auto", data.get("question_field") or "question", None, "plain",
                                                           limit=None, shuffle=False, seed=0, prefix="eval", key="filters.decontaminate.path").rows]
    if data.get("holdout"):
        questions += [r["question"] for r in load_problems(data["holdout"], "auto", "question", None, "plain", limit=None, shuffle=False,
                                                           seed=0, prefix="holdout", key="seeds.holdout").rows]
    return questions


async def run(ctx: StageContext) -> StageResult:
    cfg: Filters = ctx.section
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
        eval_questions = contamination_questions(ctx.stage.data)
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
