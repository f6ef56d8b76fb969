"""Shared fixtures. The real local vLLM server is started once per session, on first use."""

from __future__ import annotations

import importlib.util

import pytest

EMBEDDED = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def embedded_model_dir():
    """The converted embedded model folder (converts once into $ORCA_RECIPE_HOME)."""
    from orca_recipe.llm.embedded import ensure_embedded_model

    return ensure_embedded_model(EMBEDDED)


@pytest.fixture(scope="session")
def vllm_server(embedded_model_dir, tmp_path_factory):
    """A running `VLLMServer` for the embedded model, served as `smollm2-135m-instruct`."""
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vllm is not installed: run scripts/setup.sh")
    from orca_recipe.llm.local import VLLMServer

    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VLLMServer(embedded_model_dir, served_name=EMBEDDED, log_path=log, startup_timeout=300)
    server.start()
    yield server
    server.stop()
