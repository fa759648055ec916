"""Record transformers 4.x's question-answering pipeline on the fixture model: the reference qa_pipeline.py
must reproduce (tests/test_qa_pipeline.py checks it against tests/fixtures/qa_pipeline/expected.json).

Run it with a transformers 4.x interpreter (5.3 removed the pipeline), from the repository root:

    python -m venv /tmp/tf4 && /tmp/tf4/bin/pip install torch==2.13.0 'transformers<5' numpy safetensors
    /tmp/tf4/bin/python bench/pipeline_parity.py [--squad_dir DIR]

(recorded with transformers 4.57.6 and torch 2.13.0+cpu). The model is tests/fixtures/qa_pipeline/model,
made by tests/fixtures/qa_pipeline/make_model.py (rerun this script whenever that model changes). The
questions come from the shared SQuAD 2.0 dev sample (SQUAD_DIR, else ../shared/data/squad2): answerable
and unanswerable ones, from the longest contexts and from short ones, so that at max_seq_len 128 and
doc_stride 32 most contexts take several windows. For each case (top_k 1 and 3, with and without
handle_impossible_answer, 4.x's defaults, no word alignment) it writes the call's keyword arguments and
4.x's output for the whole list of questions, as 4.x shaped it; "shapes" records what single inputs, a list
of one and a list of dicts return; every input records its number of windows (the tokenizer's overflow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from squad_internals import atomic_io  # noqa: E402 - standard library only, importable under transformers 4

FIXTURE = REPO / "tests" / "fixtures" / "qa_pipeline"
MODEL = FIXTURE / "model"
WINDOWED = {"max_seq_len": 128, "doc_stride": 32}
CASES = (
    {**WINDOWED, "top_k": 1},
    {**WINDOWED, "top_k": 3},
    {**WINDOWED, "top_k": 1, "handle_impossible_answer": True},
    {**WINDOWED, "top_k": 3, "handle_impossible_answer": True},
    {"top_k": 2, "handle_impossible_answer": True},  # 4.x's defaults: max_seq_len 384, doc_stride 128
    {**WINDOWED, "top_k": 3, "align_to_words": False, "max_answer_len": 5},
)
PER_KIND = 6  # answerable and unanswerable questions from the longest contexts, and as many from short ones


def pick_questions(dev_path: Path) -> list[dict]:
    """PER_KIND answerable and PER_KIND unanswerable questions of the longest and of the shortest contexts."""
    data = json.loads(dev_path.read_text(encoding="utf-8"))
    paragraphs = sorted((p for article in data["data"] for p in article["paragraphs"]),
                        key=lambda p: len(p["context"]))
    chosen: list[dict] = []
    for pool in (paragraphs[::-1], paragraphs):
        for impossible in (False, True):
            found = 0
            for paragraph in pool:
                qa = next((q for q in paragraph["qas"] if bool(q.get("is_impossible")) == impossible), None)
                if qa is None or any(c["id"] == qa["id"] for c in chosen):
                    continue
                chosen.append({"id": qa["id"], "question": qa["question"], "context": paragraph["context"],
                               "is_impossible": impossible})
                found += 1
                if found == PER_KIND:
                    break
    return chosen


def window_count(tokenizer, question: str, context: str) -> int:
    """How many windows 4.x's pipeline makes of an input at WINDOWED (its tokenizer call, overflow on)."""
    enc = tokenizer(question, context, truncation="only_second", max_length=WINDOWED["max_seq_len"],
                    stride=WINDOWED["doc_stride"], return_overflowing_tokens=True)
    return len(enc["input_ids"])


def shapes(qa, inputs: list[dict]) -> list[dict]:
    """4.x's output for the call forms whose result shape differs."""
    one, two = inputs[0], inputs[:2]
    pairs = [{"question": x["question"], "context": x["context"]} for x in two]
    calls = [
        ("question=str, context=str", {"question": one["question"], "context": one["context"], **WINDOWED}),
        ("question=str, context=str, top_k=3", {"question": one["question"], "context": one["context"],
                                                 "top_k": 3, **WINDOWED}),
        ("question=[str], context=[str]", {"question": [one["question"]], "context": [one["context"]], **WINDOWED}),
        ("question=[str, str], context=str", {"question": [x["question"] for x in two], "context": one["context"],
                                              **WINDOWED}),
    ]
    out = [{"call": name, "kwargs": kwargs, "output": qa(**kwargs)} for name, kwargs in calls]
    out.append({"call": "list of dicts (positional)", "args": pairs, "kwargs": dict(WINDOWED),
                "output": qa(pairs, **WINDOWED)})
    out.append({"call": "list of one dict (positional), top_k=2", "args": pairs[:1], "kwargs": {"top_k": 2, **WINDOWED},
                "output": qa(pairs[:1], top_k=2, **WINDOWED)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_squad = Path(os.environ.get("SQUAD_DIR", REPO.parent / "shared" / "data" / "squad2"))
    parser.add_argument("--squad_dir", type=Path, default=default_squad)
    args = parser.parse_args()
    if int(transformers.__version__.split(".")[0]) >= 5:
        print(f"error: needs transformers 4.x (found {transformers.__version__}); see this file's docstring",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    inputs = pick_questions(args.squad_dir / "dev-v2.0.json")
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    qa = pipeline("question-answering", model=str(MODEL), tokenizer=tokenizer, device=-1)
    for item in inputs:
        item["windows"] = window_count(tokenizer, item["question"], item["context"])
    questions, contexts = [x["question"] for x in inputs], [x["context"] for x in inputs]
    cases = [{"kwargs": kwargs, "outputs": qa(question=questions, context=contexts, **kwargs)} for kwargs in CASES]
    record = {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
              "model": str(MODEL.relative_to(REPO)), "squad_file": "dev-v2.0.json", "windowed": WINDOWED,
              "inputs": inputs, "cases": cases, "shapes": shapes(qa, inputs)}
    target = FIXTURE / "expected.json"
    atomic_io.write_json_atomic(target, record, indent=1)
    multi = sum(x["windows"] > 1 for x in inputs)
    print(f"{target.relative_to(REPO)}: {len(inputs)} questions ({multi} of several windows), {len(cases)} cases, "
          f"{target.stat().st_size} bytes (transformers {transformers.__version__}, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
