#!/usr/bin/env bash
# A real IsoFLOP sweep on CPU, end to end with the `arlm scaling` commands a user runs:
# 4 compute budgets x 5 Transformer sizes of the `cpu` ladder (the demo's options, byte
# tokens, the standard library as text): 20 runs, 20 minutes of training on 2 cores. Then 3
# held-out runs at 1e13 FLOPs, 2.5x the largest budget (another 20 minutes; HOLDOUT=0 skips
# them), which the fit predicts without seeing. docs/scaling.md reports what it gave.
#
#   bash experiments/scaling_cpu.sh [SWEEP_DIR]      # default runs/scaling-cpu (and runs/scaling-cpu-holdout)
#
# Rerunning it skips the finished runs and resumes an interrupted one. The fit and its plots
# go to experiments/results/scaling_cpu_fit.json and docs/figures/scaling/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/scaling-cpu}
ARLM=${ARLM:-arlm}
start=$(date +%s)
if [ ! -f "$OUT/sweep.json" ]; then
  # each budget's five sizes are centred on the model with ~20 tokens per parameter (the default)
  "$ARLM" scaling plan --budgets 5e11,1e12,2e12,4e12 --sizes 5 --out "$OUT"
fi
"$ARLM" scaling run "$OUT"
echo "sweep: $(( $(date +%s) - start )) s of wall clock in this invocation"
mkdir -p experiments/results docs/figures/scaling
cp "$OUT/results.csv" experiments/results/scaling_cpu_results.csv
HELD=()
if [ "${HOLDOUT:-1}" != 0 ]; then
  if [ ! -f "$OUT-holdout/sweep.json" ]; then
    "$ARLM" scaling plan --budgets 1e13 --sizes 3 --out "$OUT-holdout"
  fi
  "$ARLM" scaling run "$OUT-holdout"
  cp "$OUT-holdout/results.csv" experiments/results/scaling_cpu_holdout.csv
  HELD=(--holdout experiments/results/scaling_cpu_holdout.csv)
fi
"$ARLM" scaling fit "$OUT/results.csv" --budget 1e13 --bootstrap 1000 "${HELD[@]}" \
  --plot docs/figures/scaling --out experiments/results/scaling_cpu_fit.json
