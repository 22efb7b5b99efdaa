#!/usr/bin/env bash
# GPU check of the paper-scale path, one command, at most 8 minutes on one H100/H200:
#   1. stage-B training steps and guided sampling, ours vs the authors' execution, on SD 1.5's
#      architecture at 512² in bf16 with random weights: images/s, peak memory, MFU
#      (benchmarks/gpu_check.py, timings by benchmarks/bench_generator.py);
#   2. the sd15 chain test (kedro run --env=sd15 on the tiny SD 1.5-layout fixture) on the GPU.
#
#   benchmarks/gpu_check.sh                        # cuda; writes gpu_check/ (JSON, table, logs)
#   benchmarks/gpu_check.sh --device cpu --tiny    # dry run of the same script on a CPU, seconds
#   options: --out DIR, --peak-tflops N (dense bf16 peak when the device name is not known)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
DEVICE=cuda TINY="" OUT=gpu_check PEAK=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=--tiny; shift ;;
    --out) OUT=$2; shift 2 ;;
    --peak-tflops) PEAK=(--peak-tflops "$2"); shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "$DEVICE" != cpu ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device visible to torch')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.csv" || true
fi
echo "== 1/2 benchmark ($DEVICE ${TINY:-SD 1.5 at 512})"
timeout 330 "$PY" benchmarks/gpu_check.py --device "$DEVICE" $TINY "${PEAK[@]}" --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/benchmark.log"
echo "== 2/2 sd15 chain test on $DEVICE"
if [ -n "$TINY" ]; then  # the chain takes minutes on a CPU: the dry run only checks that it is collected
  "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/generator/test_sd15_chain.py 2>&1 | tee "$OUT/chain.log"
else
  TISYNTH_CHAIN_DEVICE="$DEVICE" timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/generator/test_sd15_chain.py 2>&1 | tee "$OUT/chain.log"
fi
echo "gpu_check.sh: done; results in $OUT/"
