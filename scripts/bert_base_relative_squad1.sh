#!/usr/bin/env bash
# Seed experiment: BERT-base with relative_key_query position embeddings
# (zhiheng-huang/bert-base-uncased-embedding-relative-key-query) fine-tuned on SQuAD v1.1, 8 GPUs.
# Published dev result: F1 90.54 (with max_seq_length 384: 90.34; on 1 GPU: 90.71).
# Settings: 8 GPUs x batch 6 (total 48), lr 3e-5, 2 epochs, max_seq_length 512, doc_stride 128,
# lower-cased input.
#
# Usage (from anywhere; relative SQUAD_DIR/OUTPUT_DIR are taken from the directory you start in):
#   SQUAD_DIR=/path/to/squad OUTPUT_DIR=/path/to/out bash scripts/bert_base_relative_squad1.sh [more flags]
# Get the data with scripts/download_squad.sh. Flags given after the script name are appended, so they
# override the ones below (e.g. --overwrite_output_dir to reuse a folder, --fp32 for the classic fp32 on a GPU,
# where bf16 autocast and packed batches are the default: see the log's `path:` line).
set -euo pipefail
SQUAD_DIR=${SQUAD_DIR:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./runs/bert_base_relative_squad1}
[[ $SQUAD_DIR == /* ]] || SQUAD_DIR=$PWD/${SQUAD_DIR#./}
[[ $OUTPUT_DIR == /* ]] || OUTPUT_DIR=$PWD/${OUTPUT_DIR#./}
cd "$(dirname "$0")/.."

torchrun --nproc_per_node=${NPROC:-8} run_squad.py \
  --model_type bert \
  --model_name_or_path zhiheng-huang/bert-base-uncased-embedding-relative-key-query \
  --do_train \
  --do_eval \
  --do_lower_case \
  --train_file "$SQUAD_DIR/train-v1.1.json" \
  --predict_file "$SQUAD_DIR/dev-v1.1.json" \
  --per_gpu_train_batch_size 6 \
  --per_gpu_eval_batch_size 60 \
  --learning_rate 3e-5 \
  --num_train_epochs 2.0 \
  --max_seq_length 512 \
  --doc_stride 128 \
  --save_steps 5000 \
  --save_total_limit 2 \
  --threads 8 \
  --output_dir "$OUTPUT_DIR" \
  "$@"
