"""The run report: pass@1 per checkpoint with n and a 95% interval, paired comparisons, a plot, stage timings."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from orca_recipe.stats import holm, mcnemar_exact, mcnemar_one_sided, paired_difference, wilson
from orca_recipe.store import atomic_write_text, read_jsonl, read_manifest, read_plan_stages


def stale_stages(run_dir: Path) -> list[str]:
    """Stages whose finished output is for another fingerprint than the run's plan: left out of
    every figure (pairing an old checkpoint with a new one would be a wrong comparison)."""
    stages = read_plan_stages(run_dir)
    out = []
    for s in stages:
        m = read_manifest(run_dir / s["name"])
        if m and m.get("complete") and m.get("fingerprint") != s.get("fingerprint"):
            out.append(s["name"])
    return out


def collect(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(eval rows, every stage's manifest) in plan order: only stages finished for the plan's
    fingerprint (`stale_stages` names the others)."""
    stages = read_plan_stages(run_dir)
    evals, manifests = [], []
    for s in stages:
        m = read_manifest(run_dir / s["name"])
        if not m or not m.get("complete") or m.get("fingerprint") != s.get("fingerprint"):
            continue
        manifests.append(m)
        if s["kind"] == "eval":
            evals.append({"stage": s["name"], **m["report"]})
    return evals, manifests


def _outcomes(run_dir: Path, stage: str) -> dict | None:
    """Ids seen, ids right and truncated rows (None when rows carry no finish_reason) of one eval stage."""
    path = run_dir / stage / "data.jsonl"
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    has_finish = any("finish_reason" in r for r in rows)
    cut = {str(r["id"]) for r in rows if r.get("finish_reason") == "length"}
    return {
        "seen": {str(r["id"]) for r in rows},
        "right": {str(r["id"]) for r in rows if r.get("correct") is True},
        "cut": cut,
        "truncated": len(cut) if has_finish else None,
    }


def checkpoints(run_dir: Path, evals: list[dict] | None = None) -> list[dict]:
    """pass@1 per eval stage with its Wilson interval and, when recorded, how many answers hit max_tokens."""
    evals = collect(run_dir)[0] if evals is None else evals
    out = []
    for e in evals:
        o = _outcomes(run_dir, e["stage"])
        lo, hi = wilson(e["correct"], e["n"])
        out.append({"stage": e["stage"], "model": e["model"], "n": e["n"], "correct": e["correct"], "pass_at_1": e["pass_at_1"],
                    "ci95": [lo, hi], "truncated": o["truncated"] if o else None})
    return out


def planned(evals: list[dict]) -> list[tuple[str, str]]:
    """The comparisons a run is for, fixed before any result is seen: base -> SFT, SFT -> each
    later iteration, base -> the last checkpoint. Every other pair is exploratory."""
    by_model = {e["model"]: e["stage"] for e in evals}
    names = [e["stage"] for e in evals]
    base, sft = by_model.get("base"), by_model.get("sft")
    out: list[tuple[str, str]] = []
    if base and sft:
        out.append((base, sft))
    if sft:
        out += [(sft, b) for b in names[names.index(sft) + 1:]]
    if base and names[-1] != base and (base, names[-1]) not in out:
        out.append((base, names[-1]))
    return out


def pair_order(names: list[str], base: str | None) -> list[tuple[str, str, str]]:
    """(a, b, relation) for every two stages, earlier first: consecutive ones, then base vs each, then the rest."""
    pairs = [(a, b, "consecutive") for a, b in zip(names, names[1:])]
    if base is not None:
        pairs += [(base, b, "base") for b in names[names.index(base) + 1:]]
    pairs += [(a, b, "other") for a, b in combinations(names, 2)]
    seen, out = set(), []
    for a, b, rel in pairs:
        if (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b, rel))
    return out


def compare(ea: dict, eb: dict, oa: dict, ob: dict) -> dict:
    """One pair on the same problems: an id missing from a stage's rows (a failed request) counts as wrong there.

    `untruncated` repeats the test on the problems neither side's reply was cut off on, so a
    gain that is only "answers within the token budget" shows as none there."""
    n = ea["n"]
    both, only_a, only_b = len(oa["right"] & ob["right"]), len(oa["right"] - ob["right"]), len(ob["right"] - oa["right"])
    diff, lo, hi = paired_difference(only_a, only_b, n)
    cut = oa["cut"] | ob["cut"]
    ua, ub = len(oa["right"] - ob["right"] - cut), len(ob["right"] - oa["right"] - cut)
    return {"a": ea["stage"], "b": eb["stage"], "model_a": ea["model"], "model_b": eb["model"], "n": n,
            "pass_at_1_a": (both + only_a) / n if n else 0.0, "pass_at_1_b": (both + only_b) / n if n else 0.0,
            "both": both, "only_a": only_a, "only_b": only_b, "neither": n - both - only_a - only_b,
            "diff": diff, "ci95": [lo, hi], "mcnemar_p": mcnemar_exact(only_a, only_b), "one_sided_p": mcnemar_one_sided(only_a, only_b),
            "untruncated": {"n": n - len(cut), "only_a": ua, "only_b": ub, "one_sided_p": mcnemar_one_sided(ua, ub)}}


def _skip_reason(ea: dict, eb: dict, oa: dict | None, ob: dict | None) -> str | None:
    """Why two eval stages cannot be paired, or None: they must have scored the same problem set."""
    if oa is None or ob is None:
        return f"no data.jsonl in {ea['stage'] if oa is None else eb['stage']}"
    if ea["n"] != eb["n"]:
        return f"n differs ({ea['n']} vs {eb['n']}): not the same eval set"
    if len(oa["seen"] | ob["seen"]) > ea["n"]:
        return f"more distinct problem ids than n={ea['n']}: not the same eval set"
    return None


def paired(run_dir: Path, evals: list[dict] | None = None) -> dict:
    """{"pairs": [...], "skipped": [...]}: every two eval stages compared problem by problem.

    Paired, because a checkpoint's own Wilson interval includes problem-to-problem variation
    that both checkpoints share; only the problems one solves and the other misses tell
    them apart (McNemar exact p, Tango interval for the difference). The planned pairs are
    tested one-sided (B better than A) and Holm-adjusted as one family; the exploratory
    rest two-sided and Holm-adjusted as another, so reading many pairs does not manufacture
    a p < 0.05.
    """
    evals = collect(run_dir)[0] if evals is None else evals
    by_name = {e["stage"]: e for e in evals}
    outcomes = {e["stage"]: _outcomes(run_dir, e["stage"]) for e in evals}
    base = next((e["stage"] for e in evals if e["model"] == "base"), evals[0]["stage"] if evals else None)
    plan = planned(evals)
    pairs, skipped = [], []
    for a, b, rel in pair_order(list(by_name), base):
        reason = _skip_reason(by_name[a], by_name[b], outcomes[a], outcomes[b])
        if reason:
            skipped.append({"a": a, "b": b, "reason": reason})
        else:
            pairs.append({**compare(by_name[a], by_name[b], outcomes[a], outcomes[b]), "relation": rel, "planned": (a, b) in plan})
    for is_planned, raw in ((True, "one_sided_p"), (False, "mcnemar_p")):
        family = [q for q in pairs if q["planned"] is is_planned]
        for q, adj in zip(family, holm([q[raw] for q in family])):
            q["p_holm"] = adj
        untruncated = [q for q in family if is_planned]
        for q, adj in zip(untruncated, holm([q["untruncated"]["one_sided_p"] for q in untruncated])):
            q["untruncated"]["p_holm"] = adj
    pairs.sort(key=lambda q: not q["planned"])
    return {"pairs": pairs, "skipped": skipped}


def _stage_row(m: dict) -> dict:
    u = m.get("usage") or {}
    return {"stage": m["stage"], "kind": m.get("kind"), "rows": m.get("rows"), "rejects": m.get("rejects"), "failures": m.get("failures"),
            "seconds": m.get("seconds"), "requests": u.get("requests", 0), "cache_hits": u.get("cache_hits", 0)}


def as_json(run_dir: Path) -> dict:
    """The report as data (for `orca-recipe report --format json | jq`): the same numbers as report.md."""
    evals, manifests = collect(run_dir)
    pairs = paired(run_dir, evals)
    return {"run_dir": str(run_dir), "checkpoints": checkpoints(run_dir, evals), "pairs": pairs["pairs"], "skipped_pairs": pairs["skipped"],
            "stale": stale_stages(run_dir),
            "stages": [_stage_row(m) for m in manifests], "total_seconds": sum(m.get("seconds") or 0 for m in manifests)}


# report figures shown beside a stage
NOTE_KEYS = ("correct", "agreement", "desirable", "undesirable",
             "pairs", "teacher_rows", "teacher_chosen", "steps", "contaminated", "near_duplicates", "exact_duplicates")


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.1 else f"{p:.2f}"


def paired_lines(pairs: dict) -> list[str]:
    """The "Paired comparisons" section of report.md: tables that read at 80 columns."""
    lines = ["## Paired comparisons", "",
             "Same problems, checkpoint B vs A: only A / only B count the problems one side solved and the other missed; "
             "B − A is the difference in pass@1 in percentage points with a 95% Tango score interval. "
             "**Planned** pairs (base → SFT, SFT → each iteration, base → last; fixed before any result) are tested one-sided "
             "(B better than A, exact McNemar) and Holm-adjusted as one family; the other pairs are exploratory: two-sided, "
             "Holm-adjusted as another family. Read a change as real only when its Holm p < 0.05.", ""]
    header = ["| A → B | n | only A / B | B − A | 95% CI | p | Holm p |", "|---|---:|---:|---:|---|---:|---:|"]
    planned = [q for q in pairs["pairs"] if q["planned"]]
    exploratory = [q for q in pairs["pairs"] if not q["planned"]]
    for title, group in (("Planned (one-sided)", planned), ("Exploratory (two-sided)", exploratory)):
        if not group:
            continue
        lines += [f"### {title}", "", *header]
        for q in group:
            lo, hi = q["ci95"]
            raw = q["one_sided_p"] if q["planned"] else q["mcnemar_p"]
            lines.append(f"| {q['a']} → {q['b']} | {q['n']} | {q['only_a']} / {q['only_b']} | "
                         f"{_pp(q['diff'])} | {_pp(lo)} – {_pp(hi)} | {_p(raw)} | {_p(q['p_holm'])} |")
        lines.append("")
    if planned:
        lines += ["### Planned, on the problems neither reply was cut off", "",
                  "The same one-sided test and Holm family, leaving out every problem where A or B hit max_tokens: "
                  "a gain that is only the answer format shows here as none.", "",
                  "| A → B | n | only A / B | Holm p |", "|---|---:|---:|---:|"]
        lines += [f"| {q['a']} → {q['b']} | {q['untruncated']['n']} | {q['untruncated']['only_a']} / {q['untruncated']['only_b']} | "
                  f"{_p(q['untruncated']['p_holm'])} |" for q in planned]
        lines.append("")
    if not pairs["pairs"]:
        lines += ["(fewer than two comparable eval stages)", ""]
    lines += [f"- {s['a']} vs {s['b']} not compared: {s['reason']}" for s in pairs["skipped"]]
    return lines + [""]


def markdown(run_dir: Path) -> str:
    evals, manifests = collect(run_dir)
    lines = [f"# Report: {run_dir}", "", "## pass@1 (greedy)", "",
             "| stage | model | n | correct | pass@1 | 95% CI | cut off |", "|---|---|---:|---:|---:|---|---:|"]
    for e in checkpoints(run_dir, evals):
        lo, hi = e["ci95"]
        cut = "–" if e["truncated"] is None else e["truncated"]
        lines.append(f"| {e['stage']} | {e['model']} | {e['n']} | {e['correct']} | {e['pass_at_1']:.1%} | {lo:.1%} – {hi:.1%} | {cut} |")
    if not evals:
        lines.append("| (no eval stage has run) | | | | | | |")
    lines += ["", "cut off: replies that reached the eval's max_tokens.", ""] + paired_lines(paired(run_dir, evals))
    stale = stale_stages(run_dir)
    if stale:
        lines += [f"Left out as stale (finished for another fingerprint than this run's plan; run the recipe again): {', '.join(stale)}", ""]
    lines += ["## Stages", "", "| stage | rows | rejected | failed | calls | cached | seconds |", "|---|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for m in manifests:
        u = m.get("usage") or {}
        rep = m.get("report") or {}
        lines.append(f"| {m['stage']} | {m['rows']} | {m['rejects']} | {m['failures']} | {u.get('requests', 0)} | {u.get('cache_hits', 0)} | {m['seconds']:.1f} |")
        shown = ", ".join(f"{k}={v}" for k, v in rep.items() if k in NOTE_KEYS)
        if shown:
            notes.append(f"- {m['stage']}: {shown}")
    total = sum(m["seconds"] for m in manifests)
    lines += ["", "calls: LLM requests sent; cached: answered from the request cache.", "", *notes, "", f"Total stage time: {total:.0f} s.", ""]
    if (run_dir / "pass_at_1.png").is_file():
        lines.append(f"Plot: {run_dir / 'pass_at_1.png'}")
    return "\n".join(lines) + "\n"


def funnel(manifests: list[dict]) -> list[dict]:
    """Per stage: rows in (the rows of its input stages that hold data; a stage fed only by files or a
    model counts what it accounted for), kept, rejected, failed. Judge and preferences stages
    look problems up in the filtered set but take their rows from the stage before them."""
    rows = {m["stage"]: m.get("rows") or 0 for m in manifests}
    kinds = {m["stage"]: m.get("kind") for m in manifests}
    out = []
    for m in manifests:
        kept, rejected, failed = m.get("rows") or 0, m.get("rejects") or 0, m.get("failures") or 0
        fed = [i for i in (m.get("inputs") or {}) if i in rows and kinds[i] not in ("sft", "train_preference")]
        if m.get("kind") in ("judge", "preferences") and len(fed) > 1:
            fed = [i for i in fed if kinds[i] != "filter"]  # there the filtered problems are only looked up
        out.append({"stage": m["stage"], "in": sum(rows[i] for i in fed) if fed else kept + rejected + failed,
                    "kept": kept, "rejected": rejected, "failed": failed})
    return out


def plot(run_dir: Path, evals: list[dict], manifests: list[dict] | None = None) -> Path | None:
    """pass_at_1.png: pass@1 with 95% Wilson intervals per checkpoint (left) and the per-stage
    funnel of rows in, kept, rejected and failed (right); None without matplotlib or stages."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    manifests = manifests or []
    if not evals and not manifests:
        return None
    fig, (ax, fx) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 1.3]})
    if evals:
        labels = [e["stage"] if e["model"] in e["stage"] else f"{e['stage']}\n({e['model']})" for e in evals]
        p = [100 * e["pass_at_1"] for e in evals]
        cis = [wilson(e["correct"], e["n"]) for e in evals]
        lo, hi = [100 * c[0] for c in cis], [100 * c[1] for c in cis]
        ax.errorbar(range(len(evals)), p, yerr=[[a - b for a, b in zip(p, lo)], [b - a for a, b in zip(p, hi)]], fmt="o-", capsize=5, color="tab:blue")
        for x, (e, y) in enumerate(zip(evals, p)):
            ax.annotate(f"{y:.1f}% ({e['correct']}/{e['n']})", (x, y), textcoords="offset points", xytext=(8, 0), fontsize=8, va="center")
        ax.set_xticks(range(len(evals)), labels, fontsize=8)
        ax.set_xlim(-0.5, len(evals) - 0.3)
        ax.set_ylim(bottom=0, top=max(hi) * 1.15 + 1)
        ns = sorted({e["n"] for e in evals})
        ax.set_title(f"pass@1 per checkpoint (n={'/'.join(map(str, ns))}, 95% Wilson CI)", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no eval stage has run", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("pass@1 per checkpoint", fontsize=10)
    ax.set_ylabel("pass@1 (%)")
    ax.grid(axis="y", alpha=0.3)

    rows = funnel(manifests)
    y = list(range(len(rows)))[::-1]
    kept = [r["kept"] for r in rows]
    rej = [r["rejected"] for r in rows]
    fail = [r["failed"] for r in rows]
    fx.barh(y, [r["in"] for r in rows], height=0.8, color="none", edgecolor="grey", linestyle="--", label="in (input stages' rows)")
    fx.barh(y, kept, height=0.5, color="tab:green", label="kept")
    fx.barh(y, rej, left=kept, height=0.5, color="tab:orange", label="rejected")
    fx.barh(y, fail, left=[a + b for a, b in zip(kept, rej)], height=0.5, color="tab:red", label="failed")
    for yy, r in zip(y, rows):
        extra = "".join(f", {r[k]} {k}" for k in ("rejected", "failed") if r[k])
        fx.text(max(r["in"], r["kept"] + r["rejected"] + r["failed"]), yy, f" {r['kept']}/{r['in']}{extra}", va="center", fontsize=7)
    fx.set_yticks(y, [r["stage"] for r in rows], fontsize=8)
    fx.set_xlabel("rows")
    fx.set_xlim(right=max([r["in"] for r in rows] + [r["kept"] + r["rejected"] + r["failed"] for r in rows] + [1]) * 1.3)
    fx.set_title("rows per stage: in, kept, rejected, failed", fontsize=10)
    fx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, frameon=False)
    fig.tight_layout()
    out = run_dir / "pass_at_1.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(run_dir: Path) -> Path:
    from orca_recipe.report_html import write_html

    evals, manifests = collect(run_dir)
    plot(run_dir, evals, manifests)
    write_html(run_dir, as_json(run_dir))  # report.html: the same figures and a searchable sample of every stage's rows
    path = run_dir / "report.md"
    atomic_write_text(path, markdown(run_dir))
    return path
