"""Paired statistics for the run report: known values, brute-force cross-checks, properties, and the report itself."""

from __future__ import annotations

import itertools
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import pytest
from _cli import run_cli

from orca_recipe.report import as_json, markdown, paired, planned
from orca_recipe.stats import holm, mcnemar_exact, mcnemar_one_sided, paired_difference, wilson

Z = 1.96


# ---------- McNemar exact ----------

def brute_mcnemar(b: int, c: int) -> float:
    """Enumerate every sequence of b + c fair coin flips: P(a tail at least as extreme as observed), both sides."""
    m, k = b + c, min(b, c)
    if m == 0:
        return 1.0
    low = sum(1 for flips in itertools.product((0, 1), repeat=m) if sum(flips) <= k)
    return float(min(Fraction(1), Fraction(2 * low, 2**m)))


def test_mcnemar_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375)  # 2 * 11 / 1024
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625) and mcnemar_exact(0, 6) == pytest.approx(0.03125)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert 0 < mcnemar_exact(900, 1100) < 1e-4 and mcnemar_exact(1000, 1000) == 1.0  # exact integers: no overflow at large n


def test_mcnemar_matches_enumeration():
    for b in range(13):
        for c in range(13 - b):
            assert mcnemar_exact(b, c) == pytest.approx(brute_mcnemar(b, c), abs=1e-15), (b, c)


# ---------- Tango interval for the paired difference ----------

def _constrained_mle(d: float, b: int, c: int, n: int) -> float:
    """P(right only under A) maximising the multinomial likelihood given pB - pA = d, by ternary search."""
    def loglik(q: float) -> float:
        cells = ((b, q), (c, q + d), (n - b - c, 1 - 2 * q - d))
        return sum(k * math.log(p) for k, p in cells if k)
    lo, hi = max(0.0, -d), (1 - d) / 2
    for _ in range(60):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if loglik(m1) < loglik(m2):
            lo = m1
        else:
            hi = m2
    return (lo + hi) / 2


def brute_tango(b: int, c: int, n: int, step: float = 1e-3) -> tuple[float, float]:
    """The score interval by definition: every d on a grid whose score statistic is within ±z."""
    inside = []
    for i in range(1, int(2 / step)):
        d = -1 + i * step
        q = _constrained_mle(d, b, c, n)
        var = n * (2 * q + d * (1 - d))
        if var > 0 and abs((c - b - n * d) / math.sqrt(var)) < Z:
            inside.append(d)
    return min(inside), max(inside)


def test_tango_published_example():
    # Fagerland, Lydersen & Laake 2014 (Stat Med), Table II (Bentur et al. 2009): n12=1, n21=7, N=21;
    # Table V gives the Tango interval for p1+ - p+1 as -0.2857 (-0.517 to -0.026).
    diff, lo, hi = paired_difference(7, 1, 21)
    assert (round(diff, 4), round(lo, 3), round(hi, 3)) == (-0.2857, -0.517, -0.026)


@pytest.mark.parametrize("b,c,n", [(7, 1, 21), (3, 10, 40), (0, 4, 40), (2, 12, 44), (1, 0, 10), (5, 5, 30)])
def test_tango_matches_brute_force(b, c, n):
    _, lo, hi = paired_difference(b, c, n)
    blo, bhi = brute_tango(b, c, n)
    assert lo == pytest.approx(blo, abs=1.5e-3) and hi == pytest.approx(bhi, abs=1.5e-3)


def test_tango_no_discordant_pairs_widens_like_wilson():
    diff, lo, hi = paired_difference(0, 0, 40)
    assert diff == 0.0 and hi == pytest.approx(Z * Z / (40 + Z * Z)) and lo == pytest.approx(-hi)


def test_tango_edges():
    assert paired_difference(0, 40, 40)[0] == 1.0 and paired_difference(0, 40, 40)[2] == 1.0
    assert paired_difference(40, 0, 40)[0] == -1.0 and paired_difference(40, 0, 40)[1] == -1.0
    assert paired_difference(0, 0, 0) == (0.0, -1.0, 1.0)
    with pytest.raises(ValueError):
        paired_difference(3, 4, 5)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def _cases():
    yield from ((b, c, n) for n in range(1, 26) for b in range(n + 1) for c in range(n + 1 - b))
    rng = random.Random(0)
    for n in (40, 100, 1319, 5000):
        for _ in range(60):
            b = rng.randint(0, n)
            yield b, rng.randint(0, n - b), n


def test_tango_properties():
    for b, c, n in _cases():
        diff, lo, hi = paired_difference(b, c, n)
        assert diff == pytest.approx((c - b) / n)
        assert -1.0 <= lo <= diff <= hi <= 1.0, (b, c, n)
        assert hi - lo > 0, (b, c, n)
        mdiff, mlo, mhi = paired_difference(c, b, n)
        assert (mdiff, mlo, mhi) == pytest.approx((-diff, -hi, -lo), abs=1e-9), (b, c, n)
        if b == c:
            assert lo < 0 < hi


def test_tango_agrees_with_mcnemar_far_from_the_boundary():
    # Tango's score test at d = 0 is McNemar's; clear cases must get the same verdict from both.
    for b, c, n in [(2, 12, 40), (1, 9, 40), (5, 5, 40), (10, 11, 100), (0, 20, 200)]:
        _, lo, hi = paired_difference(b, c, n)
        p = mcnemar_exact(b, c)
        assert (lo > 0 or hi < 0) == (p < 0.05), (b, c, n)


def test_wilson_has_one_copy():
    from orca_recipe.stages import eval as eval_stage

    assert eval_stage.wilson is wilson
    assert wilson(0, 0) == (0.0, 0.0) and wilson(40, 40)[1] == 1.0


# ---------- the report ----------

IDS = [f"eval-{i}" for i in range(40)]
RIGHT = {
    "eval_base": set(range(0, 10)),                       # 10/40
    "eval_sft": set(range(0, 8)) | set(range(10, 22)),    # 20/40: only base {8, 9}, only sft {10..21}
    "eval_2": set(range(1, 8)) | set(range(10, 24)),      # 21/40: only sft {0}, only eval_2 {22, 23}
}
MODEL = {"eval_base": "base", "eval_sft": "sft", "eval_2": "train_2"}


def _write_stage(run_dir: Path, name: str, kind: str, rows: list[dict], report: dict, complete: bool = True) -> None:
    d = run_dir / name
    d.mkdir(parents=True)
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {"stage": name, "kind": kind, "complete": complete, "rows": len(rows), "rejects": 0, "failures": 0,
                "seconds": 1.5, "usage": {"requests": len(rows), "cache_hits": 0}, "report": report}
    (d / "manifest.json").write_text(json.dumps(manifest))


def make_run(run_dir: Path) -> Path:
    """plan.json, one non-eval stage, three eval stages over the same 40 ids; eval_2 lost two requests and truncated three answers."""
    stages = [{"name": "seeds", "kind": "seeds", "fingerprint": "f0", "calls": 0}]
    stages += [{"name": n, "kind": "eval", "fingerprint": f"f{i}", "calls": 40} for i, n in enumerate(RIGHT, 1)]
    run_dir.mkdir(parents=True)
    (run_dir / "plan.json").write_text(json.dumps({"stages": stages}))
    _write_stage(run_dir, "seeds", "seeds", [{"id": "s-1", "question": "q"}], {"rows": 1})
    for name, right in RIGHT.items():
        rows = []
        for i, pid in enumerate(IDS):
            if name == "eval_2" and i in (38, 39):
                continue  # failed request: absent, counts as wrong
            row = {"id": pid, "question": "q", "gold": "1", "response": "r", "answer": "1" if i in right else "2",
                   "answer_extraction": "boxed", "correct": i in right}
            if name == "eval_2":
                row["finish_reason"] = "length" if i in (30, 31, 32) else "stop"
            rows.append(row)
        correct = len(right)
        lo, hi = wilson(correct, 40)
        _write_stage(run_dir, name, "eval", rows, {"model": MODEL[name], "n": 40, "correct": correct, "pass_at_1": correct / 40, "ci95": [lo, hi]})
    for s in stages:  # each finished for the plan's fingerprint
        path = run_dir / s["name"] / "manifest.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"fingerprint": s["fingerprint"]}))
    return run_dir


def test_stages_finished_for_another_fingerprint_are_left_out_as_stale(tmp_path):
    run = make_run(tmp_path / "run")
    m = json.loads((run / "eval_sft" / "manifest.json").read_text())
    (run / "eval_sft" / "manifest.json").write_text(json.dumps(m | {"fingerprint": "an-old-checkpoint"}))
    data = as_json(run)
    assert [c["stage"] for c in data["checkpoints"]] == ["eval_base", "eval_2"] and data["stale"] == ["eval_sft"]
    assert all("eval_sft" not in (q["a"], q["b"]) for q in data["pairs"])
    assert "Left out as stale" in markdown(run) and "eval_sft" in markdown(run).split("Left out as stale")[1]


def test_paired_counts_and_p_values(tmp_path):
    run = make_run(tmp_path / "run")
    result = paired(run)
    assert result["skipped"] == []
    got = {(q["a"], q["b"]): q for q in result["pairs"]}
    assert [(q["a"], q["b"], q["relation"]) for q in result["pairs"]] == [
        ("eval_base", "eval_sft", "consecutive"), ("eval_sft", "eval_2", "consecutive"), ("eval_base", "eval_2", "base")]
    q = got["eval_base", "eval_sft"]
    assert (q["n"], q["both"], q["only_a"], q["only_b"], q["neither"]) == (40, 8, 2, 12, 18)
    assert q["pass_at_1_a"] == 0.25 and q["pass_at_1_b"] == 0.5 and q["diff"] == pytest.approx(0.25)
    assert q["mcnemar_p"] == pytest.approx(2 * (1 + 14 + 91) / 2**14)
    assert q["ci95"][0] > 0  # a real gain
    q = got["eval_sft", "eval_2"]
    assert (q["only_a"], q["only_b"], q["mcnemar_p"]) == (1, 2, 1.0)
    assert q["ci95"][0] < 0 < q["ci95"][1]  # noise
    q = got["eval_base", "eval_2"]
    assert (q["only_a"], q["only_b"]) == (3, 14) and q["pass_at_1_b"] == 21 / 40
    assert q["mcnemar_p"] == pytest.approx(2 * (1 + 17 + 136 + 680) / 2**17)
    # all three are planned: one-sided (B better), Holm over the family of three
    assert all(q["planned"] for q in result["pairs"])
    one = {k: v["one_sided_p"] for k, v in got.items()}
    assert one[("eval_base", "eval_sft")] == pytest.approx(106 / 2**14) and one[("eval_sft", "eval_2")] == pytest.approx(0.5)
    assert one[("eval_base", "eval_2")] == pytest.approx(834 / 2**17)
    assert got["eval_base", "eval_2"]["p_holm"] == pytest.approx(3 * 834 / 2**17)
    assert got["eval_base", "eval_sft"]["p_holm"] == pytest.approx(3 * 834 / 2**17)  # step-down keeps Holm monotone
    assert got["eval_sft", "eval_2"]["p_holm"] == pytest.approx(0.5)
    # eval_2 cut three replies off (ids 30-32, all wrong there): the untruncated test leaves them out
    assert got["eval_sft", "eval_2"]["untruncated"]["n"] == 37


def test_holm_and_one_sided_mcnemar():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == [] and holm([0.9]) == [0.9] and holm([0.6, 0.7]) == [1.0, 1.0]
    assert mcnemar_one_sided(0, 0) == 1.0 and mcnemar_one_sided(0, 5) == pytest.approx(1 / 32)
    assert mcnemar_one_sided(5, 0) == 1.0  # B worse: no evidence that B is better
    for b, c in ((3, 9), (11, 25), (16, 17)):
        assert mcnemar_one_sided(b, c) + mcnemar_one_sided(c, b) == pytest.approx(1 + math.comb(b + c, c) / 2 ** (b + c))


def test_planned_comparisons_follow_the_pipeline():
    ev = [{"stage": "eval_base", "model": "base"}, {"stage": "eval_sft", "model": "sft"},
          {"stage": "eval_2", "model": "train_2"}, {"stage": "eval_3", "model": "train_3"}]
    assert planned(ev) == [("eval_base", "eval_sft"), ("eval_sft", "eval_2"), ("eval_sft", "eval_3"), ("eval_base", "eval_3")]
    assert planned(ev[:1]) == [] and planned([ev[0], ev[3]]) == [("eval_base", "eval_3")]


def test_pair_with_a_different_eval_set_is_skipped(tmp_path):
    run = make_run(tmp_path / "run")
    m = json.loads((run / "eval_2" / "manifest.json").read_text())
    m["report"]["n"] = 38
    (run / "eval_2" / "manifest.json").write_text(json.dumps(m))
    result = paired(run)
    assert [(q["a"], q["b"]) for q in result["pairs"]] == [("eval_base", "eval_sft")]
    assert {(s["a"], s["b"]) for s in result["skipped"]} == {("eval_sft", "eval_2"), ("eval_base", "eval_2")}
    assert all("n differs (40 vs 38)" in s["reason"] or "n differs (38 vs 40)" in s["reason"] for s in result["skipped"])
    assert "- eval_sft vs eval_2 not compared: n differs" in markdown(run)


def test_markdown_has_paired_table(tmp_path):
    run = make_run(tmp_path / "run")
    md = markdown(run)
    assert md.index("## pass@1 (greedy)") < md.index("## Paired comparisons") < md.index("## Stages")
    assert "| eval_base | base | 40 | 10 | 25.0% |" in md
    assert "| eval_2 | train_2 | 40 | 21 | 52.5% |" in md and md.split("| eval_2 | train_2 |")[1].split("\n")[0].endswith("| 3 |")
    assert md.split("| eval_sft | sft |")[1].split("\n")[0].endswith("| – |")  # no finish_reason recorded
    planned = md.split("### Planned (one-sided)")[1].split("###")[0]
    row = next(line for line in planned.splitlines() if line.startswith("| eval_base → eval_sft "))
    # planned, one-sided: P(X >= 12 | 14, 1/2) = 106/16384; Holm over the three planned pairs
    assert row.startswith("| eval_base → eval_sft | 40 | 2 / 12 | +25.0 |") and row.endswith("| 0.0065 | 0.0191 |")
    untruncated = md.split("### Planned, on the problems neither reply was cut off")[1].split("##")[0]
    assert "| eval_base → eval_sft | 40 | 2 / 12 |" in untruncated  # no finish_reason in eval_sft / eval_base: nothing cut
    assert "| eval_sft → eval_2 | 37 |" in untruncated  # the three replies eval_2 cut off are left out of the untruncated test
    assert max(len(line) for line in md.splitlines() if line.startswith("|")) <= 80  # the tables read at 80 columns
    assert "| seeds | 1 |" in md and "Total stage time" in md


def test_as_json(tmp_path):
    run = make_run(tmp_path / "run")
    data = as_json(run)
    assert [c["stage"] for c in data["checkpoints"]] == ["eval_base", "eval_sft", "eval_2"]
    c = data["checkpoints"][2]
    assert (c["model"], c["n"], c["correct"], c["pass_at_1"], c["truncated"]) == ("train_2", 40, 21, 0.525, 3)
    assert c["ci95"] == pytest.approx(list(wilson(21, 40))) and data["checkpoints"][0]["truncated"] is None
    assert data["pairs"] == paired(run)["pairs"] and data["skipped_pairs"] == []
    assert [s["stage"] for s in data["stages"]] == ["seeds", "eval_base", "eval_sft", "eval_2"]
    s = data["stages"][3]
    assert (s["kind"], s["rows"], s["rejects"], s["failures"], s["seconds"], s["requests"]) == ("eval", 38, 0, 0, 1.5, 38)
    assert data["total_seconds"] == pytest.approx(6.0)
    json.dumps(data, allow_nan=False)


def test_cli_json_markdown_and_bad_format(tmp_path):
    run = make_run(tmp_path / "run")
    proc = run_cli("report", run, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(as_json(run)))  # stdout is the JSON and nothing else
    assert not (run / "report.md").exists()

    shown = run_cli("report", run)
    assert shown.returncode == 0, shown.stderr
    assert "Paired comparisons" in shown.stdout and (run / "report.md").is_file()
    narrow = run_cli("report", run, env={"COLUMNS": "80"})
    assert narrow.returncode == 0 and max(map(len, narrow.stdout.splitlines())) <= 80
    assert "…" not in narrow.stdout and "eval_base → eval_sft" in narrow.stdout  # no cell cut at 80 columns

    bad = run_cli("report", run, "--format", "xml")
    assert bad.returncode == 2 and bad.stdout == ""
    assert "xml" in bad.stderr and "--format" in bad.stderr


# ---------- the PNG ----------

def _read_png(path: Path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def test_report_writes_a_two_panel_png(tmp_path):
    run = make_run(tmp_path / "run")
    assert run_cli("report", run).returncode == 0
    img = _read_png(run / "pass_at_1.png")
    h, w, channels = img.shape
    assert 400 <= h <= 1200 and 1000 <= w <= 2000 and channels in (3, 4)  # two panels side by side at 120 dpi
    rgb = img[..., :3]
    assert rgb.std() > 0.05 and (rgb < 0.5).mean() > 0.005  # drawn on, not a blank canvas
    left, right = rgb[:, : w // 2], rgb[:, w // 2:]
    assert (left < 0.5).mean() > 0.002 and (right < 0.5).mean() > 0.002  # both panels drawn
    assert "Plot:" in (run / "report.md").read_text()


def test_funnel_counts_rows_in_kept_rejected_failed():
    from orca_recipe.report import funnel

    manifests = [
        {"stage": "seeds", "kind": "seeds", "rows": 10, "rejects": 2, "failures": 0},
        {"stage": "solve", "kind": "solve", "rows": 7, "rejects": 2, "failures": 1, "inputs": {"seeds": "f"}},
        {"stage": "filter", "kind": "filter", "rows": 6, "rejects": 1, "failures": 0, "inputs": {"solve": "f"}},
        {"stage": "sft", "kind": "sft", "rows": 6, "rejects": 0, "failures": 0, "inputs": {"filter": "f"}},
        {"stage": "practice_2", "kind": "practice", "rows": 8, "rejects": 0, "failures": 0, "inputs": {"filter": "f", "sft": "f"}},
        {"stage": "judge_2", "kind": "judge", "rows": 8, "rejects": 0, "failures": 0, "inputs": {"filter": "f", "practice_2": "f"}},
        {"stage": "eval_sft", "kind": "eval", "rows": 39, "rejects": 0, "failures": 1, "inputs": {"sft": "f"}},
    ]
    got = {r["stage"]: (r["in"], r["kept"], r["rejected"], r["failed"]) for r in funnel(manifests)}
    assert got == {"seeds": (12, 10, 2, 0), "solve": (10, 7, 2, 1), "filter": (7, 6, 1, 0), "sft": (6, 6, 0, 0),
                   "practice_2": (6, 8, 0, 0), "judge_2": (8, 8, 0, 0), "eval_sft": (40, 39, 0, 1)}


def test_png_without_eval_stages_still_shows_the_funnel(tmp_path):
    from orca_recipe.report import plot

    path = plot(tmp_path, [], [{"stage": "seeds", "kind": "seeds", "rows": 3, "rejects": 1, "failures": 0}])
    assert path is not None and _read_png(path).shape[0] > 300
    assert plot(tmp_path, [], []) is None
