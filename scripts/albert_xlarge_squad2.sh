#!/usr/bin/env bash
# Seed experiment: albert-xlarge-v2 fine-tuned on SQuAD v2.0, 4 GPUs.
# Published dev result (classic HuggingFace run_squad.py, 4 GPUs, fp16): F1 87.46, EM 84.42.
# Settings: 4 GPUs x batch 3 x 4 accumulation steps (total 48), lr 3e-5, 3 epochs, 814 warm-up steps
# (10% of the ~8,140 optimizer steps), max_seq_length 384, doc_stride 128, float16 mixed precision.
#
# Usage (from anywhere; relative SQUAD_DIR/OUTPUT_DIR are taken from the directory you start in):
#   SQUAD_DIR=/path/to/squad OUTPUT_DIR=/path/to/out bash scripts/albert_xlarge_squad2.sh [more flags]
# Get the data with scripts/download_squad.sh. Flags given after the script name are appended, so they
# override the ones below (e.g. --overwrite_output_dir to reuse a folder, --fp32 for the classic fp32 on a GPU,
# where bf16 autocast and packed batches are the default: see the log's `path:` line).
set -euo pipefail
SQUAD_DIR=${SQUAD_DIR:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./runs/albert_xlarge_squad2}
[[ $SQUAD_DIR == /* ]] || SQUAD_DIR=$PWD/${SQUAD_DIR#./}
[[ $OUTPUT_DIR == /* ]] || OUTPUT_DIR=$PWD/${OUTPUT_DIR#./}
cd "$(dirname "$0")/.."

torchrun --nproc_per_node=${NPROC:-4} run_squad.py \
  --model_type albert \
  --model_name_or_path albert-xlarge-v2 \
  --do_train \
  --do_eval \
  --do_lower_case \
  --version_2_with_negative \
  --train_file "$SQUAD_DIR/train-v2.0.json" \
  --predict_file "$SQUAD_DIR/dev-v2.0.json" \
  --per_gpu_train_batch_size 3 \
  --per_gpu_eval_batch_size 24 \
  --gradient_accumulation_steps 4 \
  --learning_rate 3e-5 \
  --num_train_epochs 3.0 \
  --warmup_steps 814 \
  --max_seq_length 384 \
  --doc_stride 128 \
  --fp16 \
  --fp16_opt_level O1 \
  --save_steps 5000 \
  --save_total_limit 2 \
  --threads 8 \
  --output_dir "$OUTPUT_DIR" \
  "$@"
