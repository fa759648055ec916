#!/usr/bin/env bash
# One-call GPU measurement suite (one H200 or H100, under 8 minutes with compilation): run from the repo root
# as `bash bench/gpu_suite.sh`. It times the command line's own training loop (run_squad.train, imported by
# bench/train_throughput.py) against the classic loop in the same run, for BERT-base, BERT-large and
# ModernBERT-base shapes (random weights from configs), seq 384, SQuAD feature lengths, batch 32, bf16,
# prints the table and writes bench/results/gpu_suite.json (date, GPU, torch version inside).
# Feature lengths: .carry/lengths.npy (python bench/train_throughput.py --save_lengths .carry/lengths.npy, made
# where the SQuAD data is), else computed from ../shared/data/squad2. Logs go to $OUT (default bench_out/).
# Each measurement is bounded by `timeout`, so one failure does not stop the rest; one that could overrun
# SUITE_BUDGET_S (default 450 s) is skipped.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT" bench/results
LENGTHS=.carry/lengths.npy
if [ ! -f "$LENGTHS" ]; then
  LENGTHS="$OUT/lengths.npy"
  python bench/train_throughput.py --save_lengths "$LENGTHS" > "$OUT/lengths.log" 2>&1 || {
    echo "no .carry/lengths.npy and no SQuAD data to compute it" >&2; exit 2; }
fi
SUMMARY="$OUT/summary.jsonl"
: > "$SUMMARY"
STEPS=${STEPS:-30}
BUDGET=${SUITE_BUDGET_S:-450}
# The model shapes; a dry run on a CPU: BASE=tiny LARGE=tiny MODERN=tiny STEPS=2 bash bench/gpu_suite.sh
BASE=${BASE:-bert-base} LARGE=${LARGE:-bert-large} MODERN=${MODERN:-modernbert-base}
T0=$(date +%s)

run() {  # run NAME LIMIT_S ARGS...: one measurement, full log in $OUT/NAME.log, its JSON line to the summary
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  if (( start - T0 + limit > BUDGET )); then echo "== $name skipped (suite budget ${BUDGET}s)"; return; fi
  timeout "$limit" python bench/train_throughput.py --lengths_file "$LENGTHS" --steps "$STEPS" "$@" \
    > "$OUT/$name.log" 2>&1
  echo "== $name rc=$? $(( $(date +%s) - start ))s (total $(( $(date +%s) - T0 ))s)"
  grep -E '^\||^device|^\{"ok"' "$OUT/$name.log" || tail -5 "$OUT/$name.log"
  tail -1 "$OUT/$name.log" | grep '^{' | python -c "import json,sys; d=json.load(sys.stdin); d['name']='$name'; print(json.dumps(d))" \
    >> "$SUMMARY" 2>/dev/null
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/env.txt"
# The packed CUDA kernels against padded SDPA first (bf16 logits, the loss, a compiled step with dropout).
run check_base 60 --config $BASE --mode check --batch_size 48
# Training, batch 32: classic vs the CLI's loop (--packing --torch_compile: one shape, one compilation).
run train_large 150 --config $LARGE --batch_size 32 --loops classic,packed --compile
run train_base 100 --config $BASE --batch_size 32 --loops packed --compile
run train_modernbert 130 --config $MODERN --batch_size 32 --loops packed --compile
# Evaluation, BERT-large: classic vs run_squad.infer (bf16 weights, packed, compiled).
run eval_large 90 --config $LARGE --mode eval --batch_size 128 --loops classic,packed --compile
# The CLI's eager loops (no compilation), padded and packed, when time is left.
run train_large_eager 80 --config $LARGE --batch_size 32 --loops cli,packed

python - "$SUMMARY" <<'PY'
import datetime, json, sys
import torch
import atomic_io
runs = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs[d["name"]] = {r["loop"]: r for r in d.get("results", [])}
def get(name, loop, key):
    return runs.get(name, {}).get(loop, {}).get(key)
result = {
    "date": datetime.date.today().isoformat(),
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch": torch.__version__,
    "command": "bash bench/gpu_suite.sh",
    "bert_large_train_seq_s": get("train_large", "packed", "seq_per_s"),
    "bert_large_train_mfu": get("train_large", "packed", "utilization"),
    "bert_base_train_seq_s": get("train_base", "packed", "seq_per_s"),
    "modernbert_base_train_seq_s": get("train_modernbert", "packed", "seq_per_s"),
    "bert_large_eval_seq_s": get("eval_large", "packed", "seq_per_s"),
    "classic_bert_large_train_seq_s": get("train_large", "classic", "seq_per_s"),
    "classic_bert_large_eval_seq_s": get("eval_large", "classic", "seq_per_s"),
    "peak_gib": get("train_large", "packed", "peak_mem_gib"),
    "classic_peak_gib": get("train_large", "classic", "peak_mem_gib"),
    "runs": runs,
}
# Only a GPU's numbers go into the committed results; a dry run on a CPU writes beside its logs.
target = "bench/results/gpu_suite.json" if result["gpu"] else sys.argv[1].replace("summary.jsonl", "gpu_suite.json")
atomic_io.write_json_atomic(target, result, indent=2)
print("wrote", target)
print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
PY
echo "suite done in $(( $(date +%s) - T0 ))s; logs in $OUT"
