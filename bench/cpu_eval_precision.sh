#!/usr/bin/env bash
# run_squad.py --do_eval of one fine-tuned model in fp32 and in bf16 autocast on a CPU (issue #24 item 2): EM, F1,
# best F1, the wall time of each, and how many of the per-question answers (predictions.json) differ.
#   bash bench/cpu_eval_precision.sh MODEL_DIR [OUT]   (OUT defaults to bench_out/cpu_eval_precision)
# THREADS (1) sets OMP_NUM_THREADS; SQUAD_DIR (../shared/data/squad2); SQUAD_VERSION (2: dev-v2.0.json with
# --version_2_with_negative; 1: dev-v1.1.json). The two runs alternate ROUNDS (1) times; SKIP_RUNS=1 compares the
# runs already in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bash bench/cpu_eval_precision.sh MODEL_DIR [OUT]}
OUT=${2:-bench_out/cpu_eval_precision}
SQUAD_DIR=${SQUAD_DIR:-../shared/data/squad2}
export OMP_NUM_THREADS=${THREADS:-1} TOKENIZERS_PARALLELISM=false
case "${SQUAD_VERSION:-2}" in
  2) DEV=$SQUAD_DIR/dev-v2.0.json VERSION_FLAGS=(--version_2_with_negative) ;;
  1) DEV=$SQUAD_DIR/dev-v1.1.json VERSION_FLAGS=() ;;
  *) echo "error: SQUAD_VERSION must be 1 or 2" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'); bf16 flags: $(grep -o -w -m1 -E 'amx_bf16|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')" \
     "threads $OMP_NUM_THREADS; load $(cut -d' ' -f1 /proc/loadavg)"
for round in $(seq "${ROUNDS:-1}"); do
  [ -n "${SKIP_RUNS:-}" ] && break  # SKIP_RUNS=1: only the comparison of runs already in OUT
  for precision in fp32 bf16; do
    start=$(date +%s.%N)
    python run_squad.py --model_name_or_path "$MODEL" --do_eval ${VERSION_FLAGS[@]+"${VERSION_FLAGS[@]}"} --do_lower_case \
      --predict_file "$DEV" --max_seq_length 256 --doc_stride 128 --per_gpu_eval_batch_size 32 \
      --no_cuda "--$precision" --output_dir "$OUT/$precision" --overwrite_output_dir > "$OUT/$precision.log" 2>&1 \
      || { echo "run $precision failed: see $OUT/$precision.log" >&2; exit 1; }
    echo "round $round $precision: $(python -c "print(f'{$(date +%s.%N) - $start:.1f}')") s wall;" \
         "$(grep -o 'inference on [0-9]* features: [0-9.]* s' "$OUT/$precision.log")"
  done
done
python - "$OUT" "$DEV" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {p: out / p for p in ("fp32", "bf16")}
for name, folder in runs.items():
    m = list(json.loads((folder / "eval_results.json").read_text()).values())[-1]
    best = f", best F1 {m['best_f1']:.2f} (thresh {m['best_f1_thresh']:.3f})" if "best_f1" in m else ""
    v2 = (f", HasAns F1 {m['HasAns_f1']:.2f}, NoAns EM {m['NoAns_exact']:.2f}" if "NoAns_exact" in m else "")
    print(f"{name}: EM {m.get('exact', m.get('exact_match')):.2f} F1 {m['f1']:.2f}{best}{v2}")
a, b = (json.loads(next(runs[p].glob("predictions*.json")).read_text()) for p in ("fp32", "bf16"))
odds = [json.loads(f.read_text()) for p in ("fp32", "bf16") for f in runs[p].glob("null_odds*.json")]
largest = (f"; largest null-odds difference {max(abs(odds[0][k] - odds[1][k]) for k in odds[0]):.3f}"
           if len(odds) == 2 else "")
print(f"answers differing: {sum(a[k] != b[k] for k in a)} of {len(a)}{largest}")
# The best non-empty span of each question (what it answers when made to answer): differing, and its F1 on the
# answerable questions, in each precision; meaningful even where "no answer" wins everywhere.
import squad_metrics
nbest = [json.loads(next(runs[p].glob("nbest_predictions*.json")).read_text()) for p in ("fp32", "bf16")]
spans = [{k: next((e["text"] for e in v if e["text"]), "") for k, v in n.items()} for n in nbest]
data = json.loads(Path(sys.argv[2]).read_text())["data"]
gold = {qa["id"]: [x["text"] for x in qa["answers"]] for d in data for p in d["paragraphs"] for qa in p["qas"]}
has = [k for k, g in gold.items() if g]
f1 = [100 * sum(max(squad_metrics.compute_f1(g, s[k]) for g in gold[k]) for k in has) / len(has) for s in spans]
print(f"best non-empty spans differing: {sum(spans[0][k] != spans[1][k] for k in spans[0])} of {len(spans[0])}; "
      f"their F1 on the {len(has)} answerable questions: fp32 {f1[0]:.2f}, bf16 {f1[1]:.2f}")
PY
