#!/usr/bin/env bash
# Seed experiment: SpanBERT/spanbert-base-cased fine-tuned on SQuAD v2.0, one GPU.
# Published dev result: best F1 83.35 at best_f1_thresh -5.02 (the SpanBERT paper: 83.6 at batch 32).
# Settings: batch 16, lr 2e-5, 3 epochs, max_seq_length 384, doc_stride 128, cased input (no
# --do_lower_case). Compare best_f1: it applies the no-answer threshold tuned on the dev set.
#
# Usage (from anywhere; relative SQUAD_DIR/OUTPUT_DIR are taken from the directory you start in):
#   SQUAD_DIR=/path/to/squad OUTPUT_DIR=/path/to/out bash scripts/spanbert_base_squad2.sh [more flags]
# Get the data with scripts/download_squad.sh. Flags given after the script name are appended, so they
# override the ones below (e.g. --overwrite_output_dir to reuse a folder, --fp32 for the classic fp32 on a GPU,
# where bf16 autocast and packed batches are the default: see the log's `path:` line).
set -euo pipefail
SQUAD_DIR=${SQUAD_DIR:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./runs/spanbert_base_squad2}
[[ $SQUAD_DIR == /* ]] || SQUAD_DIR=$PWD/${SQUAD_DIR#./}
[[ $OUTPUT_DIR == /* ]] || OUTPUT_DIR=$PWD/${OUTPUT_DIR#./}
cd "$(dirname "$0")/.."

python run_squad.py \
  --model_type bert \
  --model_name_or_path SpanBERT/spanbert-base-cased \
  --do_train \
  --do_eval \
  --version_2_with_negative \
  --train_file "$SQUAD_DIR/train-v2.0.json" \
  --predict_file "$SQUAD_DIR/dev-v2.0.json" \
  --per_gpu_train_batch_size 16 \
  --per_gpu_eval_batch_size 64 \
  --learning_rate 2e-5 \
  --num_train_epochs 3.0 \
  --max_seq_length 384 \
  --doc_stride 128 \
  --save_steps 5000 \
  --save_total_limit 2 \
  --threads 8 \
  --output_dir "$OUTPUT_DIR" \
  "$@"
