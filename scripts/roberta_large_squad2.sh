#!/usr/bin/env bash
# Seed experiment: roberta-large fine-tuned on SQuAD v2.0, 8 GPUs, the RoBERTa-paper recipe plus
# layer-wise learning-rate decay.
# Published dev result (fairseq re-implementation, ecchochan/roberta-squad): best F1 89.62 (EM 86.64 at
# the tuned threshold); the RoBERTa paper reports F1 89.4 without layer-wise decay.
# Settings: 8 GPUs x batch 6 (total 48), lr 3e-5, 2 epochs, layer-wise LR decay 0.75, polynomial
# (power 1) decay to 0 after 6% warm-up, AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.01,
# passage before question, max_seq_length 512, doc_stride 128, float16 mixed precision.
# With fewer GPUs keep the total batch at 48: NPROC=4 ... --gradient_accumulation_steps 2.
#
# Usage (from anywhere; relative SQUAD_DIR/OUTPUT_DIR are taken from the directory you start in):
#   SQUAD_DIR=/path/to/squad OUTPUT_DIR=/path/to/out bash scripts/roberta_large_squad2.sh [more flags]
# Get the data with scripts/download_squad.sh. Flags given after the script name are appended, so they
# override the ones below (e.g. --overwrite_output_dir to reuse a folder, --fp32 for the classic fp32 on a GPU,
# where bf16 autocast and packed batches are the default: see the log's `path:` line).
set -euo pipefail
SQUAD_DIR=${SQUAD_DIR:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./runs/roberta_large_squad2}
[[ $SQUAD_DIR == /* ]] || SQUAD_DIR=$PWD/${SQUAD_DIR#./}
[[ $OUTPUT_DIR == /* ]] || OUTPUT_DIR=$PWD/${OUTPUT_DIR#./}
cd "$(dirname "$0")/.."

torchrun --nproc_per_node=${NPROC:-8} run_squad.py \
  --model_type roberta \
  --model_name_or_path roberta-large \
  --do_train \
  --do_eval \
  --version_2_with_negative \
  --context_first \
  --train_file "$SQUAD_DIR/train-v2.0.json" \
  --predict_file "$SQUAD_DIR/dev-v2.0.json" \
  --per_gpu_train_batch_size 6 \
  --per_gpu_eval_batch_size 32 \
  --learning_rate 3e-5 \
  --layerwise_lr_decay 0.75 \
  --lr_scheduler_type polynomial \
  --lr_end 0.0 \
  --lr_power 1.0 \
  --warmup_ratio 0.06 \
  --adam_beta1 0.9 \
  --adam_beta2 0.98 \
  --adam_epsilon 1e-6 \
  --weight_decay 0.01 \
  --num_train_epochs 2.0 \
  --max_seq_length 512 \
  --doc_stride 128 \
  --fp16 \
  --save_steps 5000 \
  --save_total_limit 2 \
  --threads 8 \
  --output_dir "$OUTPUT_DIR" \
  "$@"
