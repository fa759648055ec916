"""The training loop's own host cost per optimizer step: run_squad.train against a bare loop, same batches.

Why: on a GPU, small models (MiniLM, BERT-base) are bound by what the host does per step, not by the
arithmetic. This measures, on any machine (a CPU is enough), what run_squad.train adds to the work a step
cannot avoid. The model's compute is made negligible (BERT with one layer of width 8), so what is left is
Python and dispatch. Both loops see the same batches, built from the same plan:
  bare  the prebuilt CPU tensors of each step; forward, loss, backward, fused AdamW step, zero_grad
  train run_squad.train itself: batches built ahead in a thread, amp context, clipping and the finiteness
        test, the skip on the device, the schedule, the meter, the progress bar, the stop flag
Alternated --repeats times; printed: the median milliseconds per step of each and their difference, and a
last line of JSON. `--packing` compares packed batches (default: padded).

    python bench/host_cost.py [--steps 200] [--repeats 5] [--packing]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig
from transformers.modeling_outputs import QuestionAnsweringModelOutput

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from train_throughput import squad_features  # noqa: E402

import run_squad  # noqa: E402
from squad_internals import (  # noqa: E402
    batching,
    process_group,
    training_state,
)

VOCAB = 1000


class NegligibleQA(torch.nn.Module):
    """A QA model whose arithmetic costs next to nothing: token embeddings of width 8 and the start/end head,
    the inputs and outputs of a BERT's. What remains of a step is host work."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.config = BertConfig(vocab_size=VOCAB, hidden_size=8)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.qa_outputs = torch.nn.Linear(8, 2)

    def forward(self, input_ids, start_positions=None, end_positions=None, **_):
        start, end = self.qa_outputs(self.embed(input_ids)).unbind(-1)
        loss = None
        if start_positions is not None:
            ce = torch.nn.functional.cross_entropy
            loss = (ce(start, start_positions) + ce(end, end_positions)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end)


def negligible_model(seed: int) -> NegligibleQA:
    return NegligibleQA(seed)


def synthetic_lengths(n: int, seed: int) -> np.ndarray:
    """SQuAD-like feature lengths (mean ~200 of at most 384)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(198, 70, size=n), 48, 384).astype(np.int64)


def strategy_for(model, features, batch_size: int, packed: bool):
    return batching.make_batching(batching.SpanHead(), model.config, features, batch_size, packed=packed,
                                  pack_tokens=0, max_seq_length=384, version_2=False, lang_id=0)


def bare_loop(model, features, strategy, steps: int, seed: int) -> float:
    """Seconds per step of the least a step does, over prebuilt batches."""
    plan = batching.epoch_plan(strategy, features.lengths(), seed, 0, 1, 1)[:steps]
    batches = [strategy.tensors(features, group[0], with_labels=True) for group in plan]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        loss = strategy.forward(model, batch, training=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(batches)


def train_loop(model, features, strategy, steps: int, seed: int, batch_size: int) -> float:
    """Seconds per step of run_squad.train over the same plan (its first epoch's steps)."""
    rt = process_group.Runtime(rank=0, world_size=1, local_rank=-1, device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as out:
        loop = run_squad.LoopConfig(Path(out), max_steps=steps, seed=seed, logging_steps=steps, save_steps=0)
        summary = run_squad.train(model, features, batching.TrainBatches(batch_size, 1, strategy), rt,
                                  loop=loop, optim=training_state.OptimConfig(learning_rate=1e-4))
    return summary["seconds"] / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the host cost of one process, not of a thread pool racing the other loop
    lengths = synthetic_lengths((args.steps + 2) * args.batch_size, args.seed)
    features = squad_features(lengths, args.seed, VOCAB)
    bare, ours = [], []
    for r in range(args.repeats + 1):  # the first round warms up both loops and is not counted
        for name, times in (("bare", bare), ("train", ours)):
            model = negligible_model(args.seed)
            strategy = strategy_for(model, features, args.batch_size, args.packing)
            seconds = (bare_loop(model, features, strategy, args.steps, args.seed) if name == "bare" else
                       train_loop(model, features, strategy, args.steps, args.seed, args.batch_size))
            if r:
                times.append(seconds * 1000)
    result = {"batches": "packed" if args.packing else "padded", "steps": args.steps, "repeats": args.repeats,
              "bare_ms_per_step": statistics.median(bare), "train_ms_per_step": statistics.median(ours),
              "bare_runs_ms": [round(t, 3) for t in bare], "train_runs_ms": [round(t, 3) for t in ours],
              "torch": torch.__version__}
    result["overhead_ms_per_step"] = result["train_ms_per_step"] - result["bare_ms_per_step"]
    print(f"{result['batches']}: bare loop {result['bare_ms_per_step']:.3f} ms/step, run_squad.train "
          f"{result['train_ms_per_step']:.3f} ms/step: the loop's own host cost {result['overhead_ms_per_step']:.3f} "
          f"ms/step (median of {args.repeats})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
