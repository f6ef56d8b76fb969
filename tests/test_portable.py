"""Fingerprints and cache keys follow content, not location.

Copy a project folder elsewhere and every stage keeps its fingerprint (a finished run is not
redone); new weights in the same model folder, or another server under the same model name,
are another model to the request cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from orca_recipe.content import REMEMBER_FROM, content_id
from orca_recipe.llm.door import Endpoint
from orca_recipe.recipe.compile import compile_file
from orca_recipe.recipe.schema import ModelEndpoint

REPO = Path(__file__).resolve().parents[1]


def project(root: Path, local_model: bool = False) -> Path:
    """A user's project: recipes/, prompts/ and data/ side by side, like the repository; with
    `local_model` the student is the folder root/model instead of the embedded model."""
    for part in ("recipes", "prompts"):
        shutil.copytree(REPO / part, root / part)
    (root / "data" / "gsm8k").mkdir(parents=True)
    for name in ("train.jsonl", "test.jsonl", "dev.jsonl"):
        (root / "data" / "gsm8k" / name).write_text("".join((REPO / "data" / "gsm8k" / name).open().readlines()[:400]))
    if local_model:
        recipe = yaml.safe_load((root / "recipes" / "tiny.yaml").read_text())
        recipe["models"]["smol"]["local"] = {"path": "../model"}
        (root / "recipes" / "tiny.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return root / "recipes" / "tiny.yaml"


def fake_weights(folder: Path, fill: bytes = b"\1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"num_hidden_layers": 2}')
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')  # an instruct model's
    (folder / "model.safetensors").write_bytes(fill * (REMEMBER_FROM + (3 << 20)))  # a "large" file: its digest remembered
    return folder


def fingerprints(recipe: Path, run_dir: Path) -> dict[str, str]:
    return {s.name: s.fingerprint for s in compile_file(recipe, run_dir=run_dir).stages}


def test_a_copied_project_keeps_every_fingerprint(tmp_path):
    a = project(tmp_path / "a")
    before = fingerprints(a, tmp_path / "a" / "runs" / "tiny")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    after = fingerprints(tmp_path / "elsewhere" / "b" / "recipes" / "tiny.yaml", tmp_path / "elsewhere" / "b" / "runs" / "tiny")
    assert before == after and len(before) >= 13


def test_changed_data_changes_the_fingerprints_that_read_it(tmp_path):
    a = project(tmp_path / "a")
    before = fingerprints(a, tmp_path / "run")
    test = tmp_path / "a" / "data" / "gsm8k" / "test.jsonl"
    test.write_text(test.read_text().replace("Janet", "Jane", 1))
    after = fingerprints(a, tmp_path / "run")
    assert before["seeds"] == after["seeds"] and before["eval_base"] != after["eval_base"]
    assert before["filter"] != after["filter"]  # decontaminated against the changed eval set


def test_a_local_model_is_known_by_its_weights_not_its_folder(tmp_path):
    model = fake_weights(tmp_path / "a" / "model")
    recipe = project(tmp_path / "a", local_model=True)
    before = fingerprints(recipe, tmp_path / "run")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert fingerprints(tmp_path / "b" / "recipes" / "tiny.yaml", tmp_path / "run") == before
    fake_weights(model, fill=b"\2")  # retrained: same names, same sizes, new weights
    after = fingerprints(recipe, tmp_path / "run")
    assert before["seeds"] == after["seeds"] and before["ask_me_anything"] != after["ask_me_anything"]


def test_content_id_sees_new_weights_a_new_config_and_nothing_else(tmp_path):
    model = fake_weights(tmp_path / "m")
    first = content_id(model)
    shutil.copytree(model, tmp_path / "copy")
    assert content_id(tmp_path / "copy") == first
    (model / ".orca-complete").write_text("converted at some time")  # a marker, not content
    (model / "checkpoint-4").mkdir()
    (model / "checkpoint-4" / "x.bin").write_bytes(b"intermediate")
    assert content_id(model) == first
    weights = model / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one byte in the middle of the weights
    weights.write_bytes(bytes(blob))
    assert content_id(model) != first
    second = content_id(model)
    (model / "config.json").write_text('{"num_hidden_layers": 3}')
    assert content_id(model) != second
    assert content_id(tmp_path / "nothing") == "missing"


def test_the_cache_tells_servers_apart_by_api_base():
    one = Endpoint.from_recipe("m", ModelEndpoint(model="openai/llama", api_base="http://10.0.0.1:8000/v1"))
    two = Endpoint.from_recipe("m", ModelEndpoint(model="openai/llama", api_base="http://10.0.0.2:8000/v1"))
    hosted = Endpoint.from_recipe("m", ModelEndpoint(model="openai/gpt-4-turbo"))
    assert one.identity != two.identity and hosted.identity == "openai/gpt-4-turbo"


def test_a_changed_byte_in_a_large_seeds_file_reruns_seeds_on(tmp_path, monkeypatch):
    """Data files are known by all their bytes: a same-length edit in the middle of a large file
    is a new identity, and the digest is remembered by (path, size, mtime, inode)."""
    import json as _json

    import orca_recipe.content as content

    monkeypatch.setenv("ORCA_RECIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(content, "_memo", None)
    recipe = project(tmp_path / "a")
    root = recipe.parent.parent
    seeds = root / "data" / "gsm8k" / "train.jsonl"
    rows = seeds.read_text()
    filler = "".join(_json.dumps({"question": f"Filler problem number {i} about apples.", "answer": f"#### {i}"}) + "\n"
                     for i in range(REMEMBER_FROM // 60))
    seeds.write_text(rows + filler)
    assert seeds.stat().st_size > REMEMBER_FROM
    before = fingerprints(recipe, tmp_path / "run")
    memo = _json.loads((tmp_path / "home" / "content-ids.json").read_text())
    assert any(str(seeds.resolve()) in k for k in memo)  # remembered: the next plan does not hash it again
    text = seeds.read_text()
    middle = text.index("#### ", len(text) // 2)
    digit = text[middle + 5]
    seeds.write_text(text[:middle + 5] + ("7" if digit != "7" else "8") + text[middle + 6:])  # same length
    after = fingerprints(recipe, tmp_path / "run")
    assert after["seeds"] != before["seeds"] and after["sft"] != before["sft"] and after["eval_base"] == before["eval_base"]
