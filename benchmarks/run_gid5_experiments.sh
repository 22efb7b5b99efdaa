#!/usr/bin/env bash
# The two real-data experiments of docs/results.md on GID-5 (CPU budgets; hours on 2 cores).
#   bash benchmarks/run_gid5_experiments.sh [path to gid5] [path to taef2 weights] [output root]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/gid5}
TAEF2=${2:-../shared/data/weights/taef2}
OUT=${3:-benchmarks/out}
PY=.venv/bin/python

# 1. in-domain: all scenes, the fixed split; (a)-(d), 3 seeds
$PY benchmarks/experiment.py --data "$DATA" --taef2 "$TAEF2" --workspace "$OUT/gid5_in_domain" --seeds 0 1 2

# 2. cross-domain (Rural -> Urban analogue): masks from farmland/forest/meadow/water scenes,
#    Refs and evaluation from built-up scenes; (a) and (b), 3 seeds
$PY benchmarks/experiment.py --data "$DATA" --taef2 "$TAEF2" --workspace "$OUT/gid5_cross_domain" --seeds 0 1 2 \
    --source-groups "farmland forest meadow water" --target-groups builtup --variants real tisynth
