"""`orca-recipe publish` against a loopback fake of the Hub routes it calls (tests/fake_hub.py).

The CLI runs in a subprocess, as a user would, with HF_ENDPOINT (or --endpoint) pointing at
the fake; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from _cli import run_cli as _run_cli
from fake_hub import FakeHub
from huggingface_hub import DatasetCard, ModelCard

from orca_recipe.stats import wilson

TOKEN = "hf_PLANTEDtoken9f8e7d6c5b4a"
ONLINE = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN}


def run_cli(*args, env=None, **kw):
    """The CLI with its own HF_HOME: huggingface_hub caches what it fetched there (never the fake's answers in ~/.cache)."""
    home = Path(str(args[1])).parent / "hf_home" if len(args) > 1 else None
    return _run_cli(*args, env={"HF_HOME": str(home)} | (env or {}), **kw)

# name, kind, inputs, rows, rejects, failures
STAGES = [
    ("seeds", "seeds", [], 4, 1, 0),
    ("solve", "solve", ["seeds"], 3, 1, 0),
    ("filter", "filter", ["solve"], 3, 0, 0),
    ("eval_base", "eval", [], 5, 0, 1),
    ("sft", "sft", ["filter"], 3, 0, 0),
    ("eval_sft", "eval", ["sft"], 5, 0, 0),
    ("practice_2", "practice", ["filter", "sft"], 0, 0, 0),  # finished with no rows: no config
    ("judge_2", "judge", ["filter", "practice_2"], 0, 0, 0),  # planned, never run
]
RIGHT = {"eval_base": 1, "eval_sft": 3}


def make_run(tmp: Path, *, licence: bool = True) -> Path:
    """A finished run on disk as the runner writes it: plan.json, recipe.yaml, a folder per stage."""
    data = tmp / "data"
    data.mkdir(parents=True)
    (data / "seeds.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    if licence:
        (data / "LICENSE").write_text("MIT License\n\nCopyright (c) 2021 Someone\n")
    run = tmp / "runs" / "demo"
    run.mkdir(parents=True)
    recipe = {"name": "demo", "description": "a test run", "models": {"teacher": {"model": "openai/gpt-4o-mini"}, "smol": {"local": {"embedded": "smollm2-135m-instruct"}}},
              "agents": {"solver": {"model": "teacher"}, "student": {"model": "smol"}}, "seeds": {"path": str(data / "seeds.jsonl")},
              "solve": {"agent": "solver"}, "training": {"student": "smol"}, "eval": {"path": str(data / "seeds.jsonl"), "agent": "student"},
              "judge": {"mode": "exact"}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    plan = [{"name": n, "kind": k, "fingerprint": f"fp-{n}", "calls": 0} for n, k, *_ in STAGES]
    (run / "plan.json").write_text(json.dumps({"recipe": "demo", "stages": plan}))
    for name, kind, inputs, rows, rejects, failures in STAGES:
        if name == "judge_2":
            continue
        d = run / name
        d.mkdir()
        if kind == "eval":
            data_rows = [{"id": f"eval-{i}", "question": f"q{i}", "gold": "2", "answer": "2" if i < RIGHT[name] else None, "correct": i < RIGHT[name]} for i in range(rows)]
            lo, hi = wilson(RIGHT[name], rows)
            report = {"model": "base" if name == "eval_base" else "sft", "n": rows, "correct": RIGHT[name], "pass_at_1": RIGHT[name] / rows, "ci95": [lo, hi]}
        else:
            data_rows = [{"id": f"{name}-{i}", "question": f"q{i}", "seed_id": f"seeds-{i}"} for i in range(rows)]
            report = {"checkpoint": str((d / "output").resolve())} if kind == "sft" else {}
        (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data_rows))
        (d / "rejects.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "reason": "agreement 1/2 < 2"}) + "\n" for i in range(rejects)))
        (d / "failures.jsonl").write_text("".join(json.dumps({"id": f"f{i}", "reason": "llm: timeout"}) + "\n" for i in range(failures)))
        usage = {"requests": rows, "cache_hits": 0, "prompt_tokens": 10 * rows, "completion_tokens": 5 * rows, "cost": 0.25 if name == "solve" else 0.0}
        manifest = {"stage": name, "kind": kind, "fingerprint": f"fp-{name}", "complete": True, "inputs": {i: f"fp-{i}" for i in inputs},
                    "rows": rows, "rejects": rejects, "failures": failures, "seconds": 2.0, "usage": usage, "report": report}
        (d / "manifest.json").write_text(json.dumps(manifest))
        if kind == "sft":
            (d / "output").mkdir()
            (d / "output" / "config.json").write_text('{"model_type": "llama"}')
            (d / "output" / "model.safetensors").write_bytes(b"\0" * 64)
            (d / "output" / "checkpoint-2").mkdir()  # a resume checkpoint: never published
            (d / "output" / "checkpoint-2" / "optimizer.pt").write_bytes(b"\1" * 8)
    return run


def _stage_files(run: Path) -> dict[str, bytes]:
    return {f"{n}/data.jsonl": (run / n / "data.jsonl").read_bytes() for n, *_, in STAGES if n not in ("judge_2", "practice_2")}


def test_publish_pushes_one_dataset_repo_and_the_checkpoint(tmp_path):
    run = make_run(tmp_path)
    with FakeHub(token=TOKEN) as hub:
        proc = run_cli("publish", run, "--repo", "org/demo-run", "--models", env=ONLINE | {"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr
    assert hub.unknown == []  # only the routes the fake knows
    assert {(c["repo"], c["type"], c["revision"]) for c in hub.commits} == {("org/demo-run", "datasets", "main"), ("org/demo-run-sft", "models", "main")}

    ds = hub.repos["org/demo-run"]
    assert ds["type"] == "dataset"
    for path, blob in _stage_files(run).items():
        assert ds["files"][path] == blob, path  # every stage's rows, byte for byte
    assert "practice_2/data.jsonl" not in ds["files"] and "practice_2/manifest.json" in ds["files"]
    assert not any(p.startswith("judge_2/") for p in ds["files"])  # never ran
    assert ds["files"]["solve/rejects.jsonl"] == (run / "solve" / "rejects.jsonl").read_bytes()
    assert str(run.resolve()) not in ds["files"]["sft/manifest.json"].decode()  # no local path published
    assert "note:" in proc.stderr and "judge_2" in proc.stderr

    card = DatasetCard(ds["files"]["README.md"].decode())
    configs = {c["config_name"]: c["data_files"] for c in card.data.configs}
    assert list(configs) == ["seeds", "solve", "filter", "eval_base", "sft", "eval_sft"]
    assert configs["solve"] == [{"split": "train", "path": "solve/data.jsonl"}]
    assert all(files[0]["path"] in ds["files"] for files in configs.values())
    assert card.data.license == "mit"
    text = card.text
    assert "seeds --> solve" in text and "solve --> filter" in text and "sft --> eval_sft" in text  # lineage
    assert "| `solve` | solve | 3 | 1 | 0 | 3 |" in text and "| `eval_base` | eval | 5 | 0 | 1 |" in text  # counts
    assert "agreement 1/2 < 2 ×1" in text and "llm: timeout ×1" in text  # why rows were dropped
    assert "openai/gpt-4o-mini" in text and "the checkpoint of `sft`" in text  # models
    assert "Total cost: $0.2500" in text
    assert "| eval_sft | sft | 5 | 3 | 60.0% |" in text
    assert "MIT License" in text and "LICENSE" in text

    model = hub.repos["org/demo-run-sft"]
    assert model["type"] == "model"
    assert set(model["files"]) == {"README.md", "config.json", "model.safetensors"}  # no resume checkpoint
    mcard = ModelCard(model["files"]["README.md"].decode())
    assert mcard.data.datasets == ["org/demo-run"] and "eval_sft" in mcard.text

    # Publishing again updates the same repos (create_repo answers 409: it exists).
    with FakeHub(token=TOKEN) as hub2:
        hub2.repos["org/demo-run"] = {"type": "dataset", "files": {}, "private": False}
        again = run_cli("publish", run, "--repo", "org/demo-run", "--endpoint", hub2.url, env=ONLINE)
    assert again.returncode == 0, again.stderr
    assert set(_stage_files(run)) <= set(hub2.repos["org/demo-run"]["files"]) and "org/demo-run-sft" not in hub2.repos


def test_rejected_token_is_one_message_without_the_token(tmp_path):
    run = make_run(tmp_path)
    wrong = "hf_WRONGtoken" + TOKEN[::-1]
    with FakeHub(token=TOKEN) as hub:  # the fake echoes the Authorization header it got in its 401
        proc = run_cli("publish", run, "--repo", "org/demo-run", "--endpoint", hub.url, env=ONLINE | {"HF_TOKEN": wrong})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    assert "401" in proc.stderr and "$HF_TOKEN" in proc.stderr
    assert wrong not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr
    assert hub.repos == {} and hub.commits == []


def test_token_from_another_variable_and_unreachable_endpoint(tmp_path):
    run = make_run(tmp_path)
    with FakeHub(token=TOKEN) as hub:
        ok = run_cli("publish", run, "--repo", "org/x", "--endpoint", hub.url, "--token-env", "MY_HUB_KEY",
                     env={"HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "MY_HUB_KEY": TOKEN})
    assert ok.returncode == 0, ok.stderr
    down = run_cli("publish", run, "--repo", "org/x", "--endpoint", "http://127.0.0.1:9", env=ONLINE)
    assert down.returncode == 2 and "Traceback" not in down.stderr and down.stderr.count("error:") == 1
    assert "cannot reach the Hub at http://127.0.0.1:9" in down.stderr and TOKEN not in down.stderr
    offline = run_cli("publish", run, "--repo", "org/x", "--endpoint", "http://127.0.0.1:9", env=ONLINE | {"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "HF_HUB_OFFLINE" in offline.stderr
    missing = run_cli("publish", run, "--repo", "org/x", env={"HF_TOKEN": ""})
    assert missing.returncode == 2 and "$HF_TOKEN" in missing.stderr


def test_dry_run_writes_the_folder_and_needs_no_token_or_network(tmp_path):
    run = make_run(tmp_path, licence=False)
    out = tmp_path / "out"
    proc = run_cli("publish", run, "--repo", "org/demo-run", "--dry-run", "--out", out, "--models",
                   env={"HF_TOKEN": "", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "would push dataset org/demo-run" in proc.stdout and "would push model org/demo-run-sft" in proc.stdout
    for path, blob in _stage_files(run).items():
        assert (out / "dataset" / path).read_bytes() == blob
    card = DatasetCard((out / "dataset" / "README.md").read_text())
    assert card.data.license == "unknown" and "unknown — check the seed data's licence" in card.text
    assert (out / "models" / "sft" / "README.md").is_file()
    default = run_cli("publish", run, "--repo", "org/demo-run", "--dry-run", "--license", "cc-by-4.0", env={"HF_TOKEN": ""})
    assert default.returncode == 0, default.stderr
    assert DatasetCard((run / "publish" / "dataset" / "README.md").read_text()).data.license == "cc-by-4.0"


def test_bad_input_is_one_message_and_exit_2(tmp_path):
    run = make_run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "plan.json").write_text(json.dumps({"stages": [{"name": "seeds", "kind": "seeds", "fingerprint": "f", "calls": 0}]}))
    cases = [
        ((tmp_path / "nope", "org/x"), "not a run directory"),
        ((tmp_path / "data", "org/x"), "not a run directory (no plan.json)"),
        ((empty, "org/x"), "no finished stage"),
        ((run, "noslash"), "must be ORG/NAME"),
        ((run, "org/bad name!"), "not a valid Hub repo id"),
        ((run, "a/b/c"), "must be ORG/NAME"),
    ]
    for (run_dir, repo), expected in cases:
        proc = run_cli("publish", run_dir, "--repo", repo, "--dry-run", "--out", tmp_path / "o")
        assert proc.returncode == 2, (repo, proc.stderr)
        assert expected in proc.stderr and proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr, proc.stderr
