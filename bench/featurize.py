"""Benchmark utils_squad featurization: questions per second, answer recovery, peak memory.

python bench/featurize.py --train_file $SQUAD_DIR/train-v2.0.json --model_name_or_path MODEL [--threads 1]
  [--repeat K]  (K copies of the data with fresh question ids, to measure memory on a large file)
The LAST line printed is a JSON object with the numbers.
"""

import argparse
import json
import os
import re
import resource
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils_squad as us  # noqa: E402

PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Official SQuAD normalization: lower, drop ASCII punctuation, drop a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def repeated_copy(path: Path, repeat: int, folder: str) -> Path:
    """The SQuAD file with its articles repeated, question ids made unique per copy."""
    data = json.loads(path.read_text(encoding="utf-8"))
    articles = []
    for k in range(repeat):
        for article in data["data"]:
            paragraphs = [{"context": p["context"], "qas": [{**qa, "id": f"{qa['id']}_{k}"} for qa in p["qas"]]}
                          for p in article["paragraphs"]]
            articles.append({"title": article.get("title", ""), "paragraphs": paragraphs})
    out = Path(folder) / f"repeat{repeat}_{path.name}"
    out.write_text(json.dumps({"version": data.get("version", ""), "data": articles}), encoding="utf-8")
    return out


def answers_recoverable(features, examples) -> float:
    texts = us.labelled_answer_texts(features, examples)
    rows = [i for i, t in enumerate(texts) if t is not None]
    good = sum(normalize_answer(texts[i]) == normalize_answer(examples[features.example_index[i]].answers[0]["text"])
               for i in rows)
    return good / max(1, len(rows))


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux; worker processes are counted by their own (largest) peak
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train_file", required=True, type=Path)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--max_query_length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no_pin", action="store_true", help="do not restrict the process to --threads cores")
    args = parser.parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        # Pin before the tokenizers thread pool starts, so "one core" really is one core.
        cores = sorted(os.sched_getaffinity(0))[: args.threads]
        os.sched_setaffinity(0, cores)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    settings = us.FeatureSettings(args.max_seq_length, args.doc_stride, args.max_query_length, is_training=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = repeated_copy(args.train_file, args.repeat, tmp) if args.repeat > 1 else args.train_file
        t0 = time.perf_counter()
        examples, report = us.read_squad_examples(path, True, True)
        t1 = time.perf_counter()
        features = us.convert_examples_to_features(examples, tokenizer, settings, threads=args.threads)
        t2 = time.perf_counter()
    result = {
        "examples": len(examples),
        "features": len(features),
        "seconds": round(t2 - t1, 3),
        "examples_per_s": round(len(examples) / (t2 - t1), 1),
        "read_seconds": round(t1 - t0, 3),
        "answers_recoverable": round(answers_recoverable(features, examples), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": args.threads,
        "tokens": int(features.feature_start[-1]),
        "repaired": report.repaired,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
