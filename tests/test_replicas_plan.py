"""Replicas in the recipe: validated by the schema, and `plan` shows how the calls split."""

from __future__ import annotations

from _cli import run_cli
from fake_openai import fake_recipe


def test_plan_shows_the_split_over_replicas(tmp_path):
    recipe = fake_recipe(tmp_path / "r.yaml", "http://127.0.0.1:9/v1", endpoint={
        "model": "hosted_vllm/teacher", "concurrency": 32,
        "replicas": ["http://10.0.0.2:8000/v1", "http://10.0.0.3:8000/v1"]}, seeds={"limit": 30})
    out = run_cli("plan", recipe, "--no-prompts")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "spread over 3 servers (32 in flight each, 96 in all)" in text and "~1/3 of one server's" in text


def test_replicas_need_an_api_base_and_an_openai_compatible_model(tmp_path):
    for endpoint, words in ((({"api_base": None, "replicas": ["http://h:1/v1"]}), "replicas: set api_base too"),
                            ({"model": "anthropic/claude-sonnet-4-5", "replicas": ["http://h:1/v1"]},
                             "replicas need an OpenAI-compatible model")):
        recipe = fake_recipe(tmp_path / "bad.yaml", "http://127.0.0.1:9/v1", endpoint=endpoint)
        out = run_cli("validate", recipe)
        assert out.returncode == 2 and words in out.stderr and "bad.yaml" in out.stderr, out.stderr
