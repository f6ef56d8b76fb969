"""The run report: pass@1 per checkpoint with n and a 95% interval, a plot, stage timings."""

from __future__ import annotations

import json
from pathlib import Path

from orca_recipe.errors import UserError
from orca_recipe.store import atomic_write_text, read_manifest


def collect(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(eval rows, every stage's manifest) in plan order."""
    plan_file = run_dir / "plan.json"
    if not plan_file.is_file():
        raise UserError(f"{run_dir} is not a run directory (no plan.json)")
    stages = json.loads(plan_file.read_text())["stages"]
    evals, manifests = [], []
    for s in stages:
        m = read_manifest(run_dir / s["name"])
        if not m or not m.get("complete"):
            continue
        manifests.append(m)
        if s["kind"] == "eval":
            evals.append({"stage": s["name"], **m["report"]})
    return evals, manifests


def markdown(run_dir: Path) -> str:
    evals, manifests = collect(run_dir)
    lines = [f"# Report: {run_dir}", "", "## pass@1 (greedy)", "", "| stage | model | n | correct | pass@1 | 95% CI |", "|---|---|---:|---:|---:|---|"]
    for e in evals:
        lo, hi = e["ci95"]
        lines.append(f"| {e['stage']} | {e['model']} | {e['n']} | {e['correct']} | {e['pass_at_1']:.1%} | {lo:.1%} – {hi:.1%} |")
    if not evals:
        lines.append("| (no eval stage has run) | | | | | |")
    lines += ["", "## Stages", "", "| stage | rows | rejected | failed | LLM requests | cached | seconds | notes |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for m in manifests:
        u = m.get("usage") or {}
        rep = m.get("report") or {}
        notes = ", ".join(f"{k}={v}" for k, v in rep.items() if k in ("correct", "agreement", "desirable", "undesirable", "pairs", "teacher_rows", "teacher_chosen", "steps", "contaminated", "near_duplicates", "exact_duplicates"))
        lines.append(f"| {m['stage']} | {m['rows']} | {m['rejects']} | {m['failures']} | {u.get('requests', 0)} | {u.get('cache_hits', 0)} | {m['seconds']:.1f} | {notes} |")
    total = sum(m["seconds"] for m in manifests)
    lines += ["", f"Total stage time: {total:.0f} s.", ""]
    if (run_dir / "pass_at_1.png").is_file():
        lines.append(f"Plot: {run_dir / 'pass_at_1.png'}")
    return "\n".join(lines) + "\n"


def plot(run_dir: Path, evals: list[dict]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not evals:
        return None
    names = [e["model"] for e in evals]
    p = [100 * e["pass_at_1"] for e in evals]
    err = [[100 * (e["pass_at_1"] - e["ci95"][0]) for e in evals], [100 * (e["ci95"][1] - e["pass_at_1"]) for e in evals]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(names, p, yerr=err, fmt="o-", capsize=4)
    ax.set_ylabel("pass@1 (%)")
    ax.set_xlabel("checkpoint")
    ax.set_title(f"pass@1 by stage (n={evals[0]['n']}, 95% Wilson CI)")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    out = run_dir / "pass_at_1.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(run_dir: Path) -> Path:
    evals, _ = collect(run_dir)
    plot(run_dir, evals)
    path = run_dir / "report.md"
    atomic_write_text(path, markdown(run_dir))
    return path
