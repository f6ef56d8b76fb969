"""Every dataset a run writes loads with `datasets.load_dataset` from the run folder, with the
row counts its manifest states: the promise the README and a published card make."""

from __future__ import annotations

import json
from pathlib import Path

from _cli import REPO, run_cli
from fake_openai import FakeOpenAI, fake_recipe, pipeline_reply


def test_every_stage_dataset_loads_with_its_manifest_counts(tmp_path):
    from datasets import load_dataset

    with FakeOpenAI(responder=pipeline_reply) as srv:
        recipe = fake_recipe(tmp_path / "gen.yaml", srv.api_base, endpoint={"concurrency": 4, "max_retries": 1}, seeds={"limit": 4}, evolve={"limit": 4},
                             solve={"keep_if_gold_matches": True},  # the fake never matches a seed's gold: rejects
                             eval={"path": f"{REPO}/data/gsm8k/test.jsonl", "agent": "student", "limit": 6})
        run_dir = tmp_path / "run"
        proc = run_cli("run", recipe, "--run-dir", run_dir)
        assert proc.returncode == 0, proc.stderr + proc.stdout
    loaded = {}
    plan = json.loads((run_dir / "plan.json").read_text())["stages"]
    assert [s["kind"] for s in plan] == ["seeds", "ask_me_anything", "evolve", "solve", "filter", "eval"]
    for stage in plan:
        m = json.loads((run_dir / stage["name"] / "manifest.json").read_text())
        for part, count in (("data", m["rows"]), ("rejects", m["rejects"]), ("failures", m["failures"])):
            if count == 0 and part != "data":
                assert part not in m["files"] and not (run_dir / stage["name"] / f"{part}.jsonl").exists()  # none: it would not load
                continue
            path = run_dir / stage["name"] / m["files"][part]
            ds = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf_cache"))
            assert len(ds) == count, (stage["name"], part)
            loaded[stage["name"], part] = count
        assert m["rows"] > 0, stage["name"]
    assert any(part == "rejects" for _, part in loaded)  # the rejects tables were read too

    # The published folder loads by config name, as `load_dataset("ORG/NAME", stage)` would on the Hub.
    out = tmp_path / "publish"
    dry = run_cli("publish", run_dir, "--repo", "org/run", "--dry-run", "--out", out)
    assert dry.returncode == 0, dry.stderr
    for stage in plan:
        split = "test" if stage["kind"] == "eval" else "train"  # eval problems are test problems: never a train split
        ds = load_dataset(str(out / "dataset"), stage["name"], split=split, cache_dir=str(tmp_path / "hf_cache"))
        assert len(ds) == loaded[stage["name"], "data"], stage["name"]
    card = (out / "dataset" / "README.md").read_text()
    assert (out / "dataset" / "LICENSE").read_text().startswith("MIT License") and "`LICENSE` in this repository" in card
    assert "@misc{mitra2024orcamath" in card
    for path in (out / "dataset").rglob("manifest.json"):
        assert str(tmp_path) not in path.read_text() and str(Path.home()) not in path.read_text(), path
