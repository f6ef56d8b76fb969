"""report.html: one self-contained page (no network, no CDN) to look at a run: pass@1 per
checkpoint with its interval, the planned paired comparisons, the funnel, and per stage a
searchable sample of its rows -- seeds, their Ask-Me-Anything and evolved descendants (lineage
as links), kept solutions, practice samples with the judge's verdict, preference rows,
rejects and failures with their reasons."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from orca_recipe.store import atomic_write_text, read_jsonl

SAMPLE = 40  # rows shown per stage and table
LINK_FIELDS = ("seed_id", "parent_id", "problem_id", "chosen_id", "rejected_id", "duplicate_of")
SHOWN = ("id", "question", "solution", "response", "response_answer", "correct", "verdict", "label", "source", "reason",
         "answer", "gold", "final_answer", "finish_reason", "origin", "round", *LINK_FIELDS)

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em;color:#222}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:collapse;width:100%;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}th{background:#f4f4f4}
td.n{text-align:right}.bar{background:#4a8;height:10px;display:inline-block}.rej{background:#e90}.fail{background:#d33}
tr:target{background:#ffd}pre{white-space:pre-wrap;margin:0;max-height:12em;overflow:auto}#q{width:100%;padding:6px;font-size:1em}
nav a{margin-right:1em}
"""
_SCRIPT = """
document.getElementById('q').addEventListener('input',function(e){var q=e.target.value.toLowerCase();
document.querySelectorAll('table.rows tr[data-text]').forEach(function(r){r.style.display=r.dataset.text.indexOf(q)>=0?'':'none';});});
"""


def _esc(v: Any) -> str:
    return html.escape(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str))


def _cell(key: str, v: Any, anchors: set[str]) -> str:
    if key in LINK_FIELDS and isinstance(v, str) and v in anchors:
        return f'<a href="#{_esc(v)}">{_esc(v)}</a>'
    if isinstance(v, str) and ("\n" in v or len(v) > 80):
        return f"<pre>{_esc(v)}</pre>"
    return _esc(v)


def _rows_table(stage: str, part: str, rows: list[dict], anchors: set[str]) -> str:
    if not rows:
        return ""
    keys = [k for k in SHOWN if any(k in r for r in rows)]
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    body = []
    for r in rows[:SAMPLE]:
        rid = str(r.get("id", ""))
        anchor = f' id="{_esc(rid)}"' if part == "data" and rid else ""
        text = _esc(" ".join(str(r.get(k, "")) for k in keys).lower())
        body.append(f'<tr{anchor} data-text="{text}">' + "".join(f"<td>{_cell(k, r.get(k, ''), anchors)}</td>" for k in keys) + "</tr>")
    more = f"<p>{len(rows) - SAMPLE} more in <code>{stage}/{part}.jsonl</code></p>" if len(rows) > SAMPLE else ""
    return f"<h3>{_esc(stage)} · {part} ({len(rows)})</h3><table class=rows><tr>{head}</tr>{''.join(body)}</table>{more}"


def render(report: dict, run_dir: Path) -> str:
    """The page for `report.as_json(run_dir)`."""
    stages = report["stages"]
    tables: dict[str, dict[str, list[dict]]] = {}
    for s in stages:
        folder = run_dir / s["stage"]
        tables[s["stage"]] = {part: read_jsonl(folder / f"{part}.jsonl") if (folder / f"{part}.jsonl").is_file() else []
                              for part in ("data", "rejects", "failures")}
    anchors = {str(r.get("id")) for t in tables.values() for r in t["data"][:SAMPLE] if r.get("id") is not None}
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>orca-recipe report: {_esc(run_dir.name)}</title>",
           f"<style>{_STYLE}</style></head><body><h1>orca-recipe run <code>{_esc(run_dir.name)}</code></h1>",
           "<nav>" + "".join(f'<a href="#stage-{_esc(s["stage"])}">{_esc(s["stage"])}</a>' for s in stages) + "</nav>"]
    out.append("<h2>pass@1 (greedy)</h2><table><tr><th>stage</th><th>model</th><th>n</th><th>correct</th><th>pass@1</th>"
               "<th>95% Wilson CI</th><th>truncated</th></tr>")
    for c in report["checkpoints"]:
        lo, hi = c["ci95"]
        bar = f'<span class=bar style="width:{max(1, int(300 * c["pass_at_1"]))}px"></span>'
        out.append(f"<tr><td>{_esc(c['stage'])}</td><td>{_esc(c['model'])}</td><td class=n>{c['n']}</td><td class=n>{c['correct']}</td>"
                   f"<td>{bar} {c['pass_at_1']:.1%}</td><td>{lo:.1%} – {hi:.1%}</td><td class=n>{_esc(c.get('truncated'))}</td></tr>")
    out.append("</table>")
    if report["pairs"]:
        out.append("<h2>Paired comparisons</h2><p>Planned pairs one-sided (B better than A), Holm-adjusted as one family; "
                   "the rest exploratory (two-sided, Holm-adjusted apart).</p><table><tr><th>A → B</th><th>kind</th><th>n</th>"
                   "<th>only A / only B</th><th>B − A</th><th>95% CI</th><th>Holm p</th><th>untruncated</th></tr>")
        for q in report["pairs"]:
            lo, hi = q["ci95"]
            u = q["untruncated"]
            unt = f"n={u['n']}, {u['only_a']} / {u['only_b']}, p={u['p_holm']:.4f}" if q["planned"] else ""
            out.append(f"<tr><td>{_esc(q['a'])} → {_esc(q['b'])}</td><td>{'planned' if q['planned'] else 'exploratory'}</td>"
                       f"<td class=n>{q['n']}</td><td>{q['only_a']} / {q['only_b']}</td><td>{100 * q['diff']:+.1f} pp</td>"
                       f"<td>{100 * lo:+.1f} … {100 * hi:+.1f}</td><td>{q['p_holm']:.4f}</td><td>{unt}</td></tr>")
        out.append("</table>")
    most = max([s["rows"] or 0 for s in stages] + [(s.get("rejects") or 0) + (s.get("failures") or 0) for s in stages] + [1])
    out.append("<h2>Funnel</h2><table><tr><th>stage</th><th>rows</th><th>rejected</th><th>failed</th><th>requests</th><th>cached</th>"
               "<th>seconds</th><th></th></tr>")
    for s in stages:
        w = [int(400 * (s.get(k) or 0) / most) for k in ("rows", "rejects", "failures")]
        bars = f'<span class=bar style="width:{w[0]}px"></span><span class="bar rej" style="width:{w[1]}px"></span>' \
               f'<span class="bar fail" style="width:{w[2]}px"></span>'
        out.append(f'<tr><td><a href="#stage-{_esc(s["stage"])}">{_esc(s["stage"])}</a></td><td class=n>{s["rows"]}</td>'
                   f'<td class=n>{s.get("rejects")}</td><td class=n>{s.get("failures")}</td><td class=n>{s["requests"]}</td>'
                   f'<td class=n>{s["cache_hits"]}</td><td class=n>{(s.get("seconds") or 0):.1f}</td><td>{bars}</td></tr>')
    out.append("</table><h2>Rows</h2><input id=q placeholder='search every table below (question, answer, reason, id ...)'>")
    for s in stages:
        out.append(f'<section id="stage-{_esc(s["stage"])}"><h2>{_esc(s["stage"])} <small>({_esc(s.get("kind"))})</small></h2>')
        for part in ("data", "rejects", "failures"):
            out.append(_rows_table(s["stage"], part, tables[s["stage"]][part], anchors))
        out.append("</section>")
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out)


def write_html(run_dir: Path, report: dict[str, Any]) -> Path:
    """report.html in `run_dir` from `report` (orca_recipe.report.as_json of the same run)."""
    path = run_dir / "report.html"
    atomic_write_text(path, render(report, run_dir))
    return path
