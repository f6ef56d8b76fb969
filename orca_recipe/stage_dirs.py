"""A stage's folder in a run directory: claimed for one fingerprint, set aside (not deleted)
when the fingerprint changes, brought back when a setting is switched back, and its state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from orca_recipe.bounded import maybe_json
from orca_recipe.project import SUPERSEDED
from orca_recipe.recipe.compile import StageRun
from orca_recipe.store import atomic_write_text, read_manifest, read_plan_stages


def claim(out_dir: Path, stage: StageRun, input_data: dict[str, str]) -> None:
    """Mark the folder as this fingerprint's on these inputs; a folder left by another
    fingerprint or other inputs is cleared first, so a changed stage never resumes from
    stale files (an old Axolotl checkpoint-N)."""
    marker = out_dir / "stage.json"
    mine = {"stage": stage.name, "fingerprint": stage.fingerprint, "input_data": input_data}
    if marker.exists() or marker.is_symlink():
        previous = maybe_json(marker, "run file")
        previous = previous if isinstance(previous, dict) else {}  # torn, or not ours: another fingerprint's
        if previous.get("fingerprint") != stage.fingerprint:
            set_aside(out_dir)  # kept: switching the setting back costs nothing
        elif previous.get("input_data", input_data) != input_data:
            shutil.rmtree(out_dir)  # same spec on new inputs: its old rows are of no use
    elif (out_dir / "manifest.json").is_file():  # complete, but for another fingerprint
        set_aside(out_dir)
    atomic_write_text(marker, json.dumps(mine))


def fingerprint_of_folder(folder: Path) -> str | None:
    for name in ("stage.json", "manifest.json"):
        found = maybe_json(folder / name, "run file")
        fp = found.get("fingerprint") if isinstance(found, dict) else None
        if isinstance(fp, str) and fp.isalnum():
            return fp
    return None


def set_aside(out_dir: Path) -> Path | None:
    """Move a stage folder made for another fingerprint to RUN_DIR/.superseded/STAGE-FP (a
    trained model is not thrown away because a setting changed); None if it has no fingerprint."""
    fp = fingerprint_of_folder(out_dir)
    if fp is None:
        shutil.rmtree(out_dir)
        return None
    target = out_dir.parent / SUPERSEDED / f"{out_dir.name}-{fp}"
    target.parent.mkdir(exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    out_dir.rename(target)
    return target


def restore_superseded(run_dir: Path, stage: StageRun) -> bool:
    """Bring back the output this fingerprint made before (a setting switched back), setting
    the current folder aside; True when something came back."""
    kept = run_dir / SUPERSEDED / f"{stage.name}-{stage.fingerprint}"
    current = run_dir / stage.name
    if not kept.is_dir() or fingerprint_of_folder(current) == stage.fingerprint:
        return False
    if current.exists():
        set_aside(current)
    kept.rename(current)
    return True


def superseded(run_dir: Path) -> list[tuple[Path, int]]:
    """(folder, bytes) of every superseded stage output of a run directory."""
    root = run_dir / SUPERSEDED
    if not root.is_dir():
        return []
    return [(d, sum(f.stat().st_size for f in d.rglob("*") if f.is_file())) for d in sorted(root.iterdir()) if d.is_dir()]


def run_status(run_dir: Path) -> list[dict[str, Any]]:
    """One row per planned stage: state (done, stale, partial, not run) and its manifest figures."""
    planned = read_plan_stages(run_dir)
    rows = []
    for s in planned:
        stage_dir = run_dir / s["name"]
        m = read_manifest(stage_dir)
        if m and m.get("complete"):
            state = "done" if m.get("fingerprint") == s["fingerprint"] else "stale"
        elif stage_dir.exists():
            state = "partial"
        else:
            state = "not run"
        rows.append({"stage": s["name"], "state": state, "planned_calls": s.get("calls", 0), "manifest": m or {}})
    return rows


def status_cells(manifest: dict[str, Any]) -> list[str]:
    """rows, rejected, failed, requests, cached, tokens, cost and seconds of a stage's manifest
    as table cells; a field of the wrong type (a hand-edited manifest) is an empty cell."""

    def num(d: dict[str, Any], key: str) -> float | None:
        v = d.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def cell(v: float | None, fmt: str | None = None) -> str:
        return "" if v is None else fmt.format(v) if fmt else str(v)

    u = manifest.get("usage") if isinstance(manifest.get("usage"), dict) else {}
    tokens = (num(u, "prompt_tokens") or 0) + (num(u, "completion_tokens") or 0)
    cost = "" if not u else ("?" if num(u, "cost") is None else f"{num(u, 'cost'):.4f}")
    return [cell(num(manifest, "rows")), cell(num(manifest, "rejects")), cell(num(manifest, "failures")), cell(num(u, "requests")),
            cell(num(u, "cache_hits")), f"{tokens:,.0f}" if u else "", cost, cell(num(manifest, "seconds"), "{:.1f}")]


def status_table(run_dir: Path, narrow: bool) -> Any:
    """`orca-recipe status`: one row per planned stage, its state coloured (short heads when narrow)."""
    from rich.table import Table

    heads = ("stage", "state", "rows", "rej", "fail", "req", "hit", "tokens", "$", "s") if narrow else \
        ("stage", "state", "rows", "rejected", "failed", "requests", "cached", "tokens", "cost $", "seconds")
    table = Table(title=str(run_dir), title_justify="left", padding=(0, 0) if narrow else (0, 1))
    for h in heads:
        table.add_column(h, no_wrap=h in ("stage", "state"), justify="left" if h in ("stage", "state") else "right")
    style = {"done": "green", "stale": "yellow", "partial": "red", "not run": "dim"}
    for r in run_status(run_dir):
        table.add_row(r["stage"], f"[{style[r['state']]}]{r['state']}[/]", *status_cells(r["manifest"]))
    return table

