#!/usr/bin/env bash
# The GPU figures of issues 3 and 5 in one run, for a session that is lent a GPU (device tool).
# Everything runs ours alone: the HF side of the benchmarks is a CPU comparison.
#
#   run(command="bash experiments/gpu_check.sh", timeout_s=560)
#
# Budgeted to finish in about 6 minutes on one H100/H200 (leaving time to rerun within the
# session's 15 minutes); each step has its own timeout, so one slow step cannot eat the rest.
# JSON goes to $OUT (or ./gpu_results), a log line per step to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date -u +%H:%M:%S))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $? ; $(tail -n 1 "$OUT/$name.log" | cut -c1-200)"
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
"$PY" -c "import jax; print(jax.__version__, jax.devices())"

# issue 5: training MFU in bf16 on one GPU (target >= 45% for gpt2-350m), with measured peak
# memory against the `arlm plan` estimate of the same step
step train_124m 120 "$PY" experiments/bench_train.py --config gpt2-124m --dtype bfloat16 \
  --batch 16 --seq 1024 --steps 10 --no-torch --out "$OUT/bench_train_gpt2-124m_bf16.json"
step train_350m 150 "$PY" experiments/bench_train.py --config gpt2-350m --dtype bfloat16 \
  --batch 16 --seq 1024 --steps 10 --no-torch --out "$OUT/bench_train_gpt2-350m_bf16.json"
# issue 3: decode figures, and a >= 1B model at batch 1 against the HBM roofline (target 0.6)
step decode_124m 120 "$PY" experiments/bench_decode.py --model gpt2-124m --no-torch \
  --out "$OUT/bench_decode_gpt2-124m.json"
step decode_1_5b 120 "$PY" experiments/bench_decode.py --model gpt2-1.5b --dtype bfloat16 \
  --batch 1 --no-torch --out "$OUT/bench_decode_gpt2-1.5b_bf16.json"
echo "== done ($(date -u +%H:%M:%S))"
