#!/usr/bin/env bash
# One-call GPU measurement suite (H100, < 9 minutes): run from the repo root as `bash bench/gpu_suite.sh`.
# Needs .carry/lengths.npy (python bench/train_throughput.py --save_lengths .carry/lengths.npy, made where
# the SQuAD data is) unless ../shared/data/squad2 exists. Logs and a summary go to $OUT (default bench_out/).
# Each measurement is short (30 timed steps) and bounded by `timeout`, so one failure does not stop the rest;
# a measurement that could overrun SUITE_BUDGET_S (default 400 s, leaving room for the F1-parity run) is
# skipped. Measured on an H100 (torch 2.11, transformers 5.17): about 330 s in all.
set -u
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
LENGTHS=.carry/lengths.npy
if [ ! -f "$LENGTHS" ]; then
  LENGTHS="$OUT/lengths.npy"
  python bench/train_throughput.py --save_lengths "$LENGTHS" > "$OUT/lengths.log" 2>&1 || {
    echo "no .carry/lengths.npy and no SQuAD data to compute it" >&2; exit 2; }
fi
SUMMARY="$OUT/summary.jsonl"
: > "$SUMMARY"
STEPS=${STEPS:-30}
T0=$(date +%s)

BUDGET=${SUITE_BUDGET_S:-400}

run() {  # run NAME LIMIT_S ARGS...: one measurement, full log in $OUT/NAME.log, JSON last line to summary
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  if (( start - T0 + limit > BUDGET )); then echo "== $name skipped (suite budget ${BUDGET}s)"; return; fi
  timeout "$limit" python bench/train_throughput.py --lengths_file "$LENGTHS" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - start ))s (total $(( $(date +%s) - T0 ))s)"
  grep -v '^{"loop"' "$OUT/$name.log" | grep -E '^\||^device' || tail -5 "$OUT/$name.log"
  tail -1 "$OUT/$name.log" | grep '^{' | python -c "import json,sys; d=json.load(sys.stdin); d['name']='$name'; print(json.dumps(d))" \
    >> "$SUMMARY" 2>/dev/null
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# Correctness of the CUDA varlen path first (bf16 packed vs padded, loss, a step with attention dropout).
run check_base 60 --config bert-base --mode check --batch_size 48
# Training: classic vs ours (pad to 64 / to 8) vs packed, eager.
run train_base 80 --config bert-base --steps "$STEPS" --loops classic,ours,ours8,packed
run train_large 100 --config bert-large --steps "$STEPS" --loops classic,ours,ours8,packed
# Evaluation throughput: inference, bf16 weights, large batches.
run eval_large 90 --config bert-large --mode eval --batch_size 128 --steps "$STEPS" --loops classic,ours,ours8,packed
# Compiled packed loop (fixed shapes: one compilation, ~40-60 s). Compiled "ours" recompiles per batch width
# and took > 100 s for BERT-base alone, so it is left to a longer session (--loops ours --compile).
run train_base_compile 100 --config bert-base --steps "$STEPS" --loops packed --compile
run train_large_compile 130 --config bert-large --steps "$STEPS" --loops packed --compile
echo "suite done in $(( $(date +%s) - T0 ))s; logs in $OUT"
