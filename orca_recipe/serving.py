"""Which model endpoints a stage's agents get: hosted ones through litellm, local ones on our
own vLLM servers (the student's checkpoint where it practises or is evaluated), and which
servers stay up between stages."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from orca_recipe.content import content_id
from orca_recipe.errors import UserError
from orca_recipe.llm.pool import ServerPool, local_timeout
from orca_recipe.recipe.compile import Plan, StageRun
from orca_recipe.stages.base import StageContext


class StageServing:
    """The endpoints of a plan's stages, on one pool of local servers."""

    def __init__(self, plan: Plan, pool: ServerPool):
        self.plan, self.pool, self.run_dir = plan, pool, plan.run_dir

    def attach(self, ctx: StageContext, cache: Any, budget: Any) -> None:
        """Give `ctx` its LLM door: one endpoint per model its agents call, local servers started."""
        from orca_recipe.llm.batch import MAX_REQUESTS
        from orca_recipe.llm.door import LLM, Endpoint

        recipe = self.plan.recipe
        endpoints = {}
        parallel = 1
        names = {}
        starts = {}
        for agent in ctx.stage.agents:
            key = recipe.agents[agent].model
            m = recipe.models[key]
            servers = 1 + len(m.replicas)
            parallel = max(parallel, m.concurrency * servers * 2, MAX_REQUESTS if m.batch else 0)  # a batch takes every row at once
            server_key = self.server_key(ctx.stage, agent)
            names[agent] = server_key or key
            if m.local is None:
                endpoints[key] = Endpoint.from_recipe(key, m)
                continue
            model_stage = self.checkpoint_stage(ctx.stage, agent)
            if model_stage:
                folder = self.run_dir / model_stage / "output"
                served = f"{key}-{model_stage}"
            else:
                folder = self.local_folder(m.local)
                served = m.local.embedded or Path(folder).name
            server = self.pool.server(server_key, folder, served, m.local)
            api_base = self.pool.running(server_key)
            if api_base is None:  # started by the first request the cache cannot answer
                starts[server_key] = functools.partial(self.pool.start, server_key)
            # The cache knows a local model by its weights and the dtype it runs in, not by
            # its folder: new weights in the same folder are another model.
            identity = f"local:{content_id(folder)}:{server.dtype}"
            endpoint = Endpoint.from_recipe(key, m, api_base=api_base or "", litellm_model=f"hosted_vllm/{served}", identity=identity)
            call = ctx.stage.agent_calls[agent]  # what one request asks for: how long a server may take to answer it
            timeout_s = max(m.timeout_s, local_timeout(m.concurrency, call.samples, call.max_tokens, gpu=not self.pool.on_cpu))
            endpoints[server_key] = dataclasses.replace(endpoint, price=(0.0, 0.0), timeout_s=timeout_s)  # our own server: tokens, no bill
        ctx.llm = LLM(endpoints, cache, batch_dir=self.run_dir / "batches", budget=budget, starts=starts)
        ctx.endpoint_for = lambda agent: names[agent]
        ctx.extra["parallel"] = parallel


    @staticmethod
    def checkpoint_stage(stage: StageRun, agent: str) -> str | None:
        """The training stage whose model this agent runs on here (compiled: practice and eval of the student)."""
        return stage.agent_calls[agent].checkpoint

    def server_key(self, stage: StageRun, agent: str) -> str | None:
        """Which local server an agent needs in a stage (None for hosted models)."""
        key = self.plan.recipe.agents[agent].model
        if self.plan.recipe.models[key].local is None:
            return None
        ckpt = self.checkpoint_stage(stage, agent)
        return f"{key}@{ckpt}" if ckpt else key

    def release_servers(self, remaining: list[StageRun]) -> None:
        """Stop local servers that none of `remaining` needs. On a CPU the runner passes only
        the next stage: two engines there only compete for the same cores and memory, and a
        restart (~30 s) is cheaper than a stage run beside an idle engine."""
        needed = {self.server_key(s, a) for s in remaining for a in s.agents}
        for key in list(self.pool.servers):
            if key not in needed:
                self.pool.stop(key)

    def local_folder(self, local: Any) -> Path:
        if local.embedded:
            from orca_recipe.llm.embedded import ensure_embedded_model

            return ensure_embedded_model(local.embedded)
        folder = Path(local.path)
        if not (folder / "config.json").is_file():
            raise UserError(f"local model folder {folder} has no config.json (expected a Hugging Face model folder)", key="models.*.local.path")
        return folder


def until_training(todo: list[StageRun]) -> list[StageRun]:
    """The stages before the next training stage: what a GPU machine keeps its servers for (a
    trainer needs the GPUs an engine holds; the engine starts again after it)."""
    out = []
    for stage in todo:
        if stage.kind in ("sft", "train_preference"):
            break
        out.append(stage)
    return out


def next_llm_stage(todo: list[StageRun]) -> list[StageRun]:
    """The next stage that talks to a model, unless a training stage comes first (a trainer
    on a CPU wants every core and the memory an idle engine holds): what a CPU keeps alive."""
    for stage in todo:
        if stage.kind in ("sft", "train_preference"):
            return []
        if stage.agents:
            return [stage]
    return []
