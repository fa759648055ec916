#!/usr/bin/env bash
# Seed experiment: xlnet-large-cased fine-tuned on SQuAD v1.1, one GPU.
# Published dev result (classic HuggingFace run_squad.py): F1 92.60, EM 85.46.
# Settings: batch 4, lr 3e-5, 2 epochs, max_seq_length 384, doc_stride 128, XLNet's beam-search answer
# head, the passage before the question (automatic for XLNet's left-padding tokenizer, as in the classic
# processor). The published command also passed --do_lower_case to this cased model; it is left out
# here so the cased vocabulary sees cased text (add it to reproduce that run exactly).
#
# Usage (from anywhere; relative SQUAD_DIR/OUTPUT_DIR are taken from the directory you start in):
#   SQUAD_DIR=/path/to/squad OUTPUT_DIR=/path/to/out bash scripts/xlnet_large_squad1.sh [more flags]
# Get the data with scripts/download_squad.sh. Flags given after the script name are appended, so they
# override the ones below (e.g. --overwrite_output_dir to reuse a folder, --fp32 for the classic fp32 on a GPU,
# where bf16 autocast and packed batches are the default: see the log's `path:` line).
set -euo pipefail
SQUAD_DIR=${SQUAD_DIR:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./runs/xlnet_large_squad1}
[[ $SQUAD_DIR == /* ]] || SQUAD_DIR=$PWD/${SQUAD_DIR#./}
[[ $OUTPUT_DIR == /* ]] || OUTPUT_DIR=$PWD/${OUTPUT_DIR#./}
cd "$(dirname "$0")/.."

python run_squad.py \
  --model_type xlnet \
  --model_name_or_path xlnet-large-cased \
  --do_train \
  --do_eval \
  --train_file "$SQUAD_DIR/train-v1.1.json" \
  --predict_file "$SQUAD_DIR/dev-v1.1.json" \
  --per_gpu_train_batch_size 4 \
  --per_gpu_eval_batch_size 16 \
  --learning_rate 3e-5 \
  --num_train_epochs 2.0 \
  --max_seq_length 384 \
  --doc_stride 128 \
  --save_steps 5000 \
  --save_total_limit 2 \
  --threads 8 \
  --output_dir "$OUTPUT_DIR" \
  "$@"
