#!/usr/bin/env python
"""Answers on a CPU, side by side on the same questions, threads and CPU (issue #24 items 3 and 5): qa_pipeline.py
in float32 and bf16 autocast at batch 1 and 32, transformers 4.57's pipeline (optional, its own interpreter),
the model's forward alone in fp32 and bf16, and this CPU's measured fp32 / bf16 matmul rates, so that every
speed is a ratio within one run and the model's rate is a share of what the CPU can do.

Why a script of its own: the speed of answers on a CPU depends on the CPU's bf16 (AMX or AVX512-BF16, read from
/proc/cpuinfo by process_group.cpu_bf16) and on what surrounds the model (tokenizing, windows, decoding); this
measures both, and counts the answers that differ between the precisions (and from 4.57's).

    M=runs/minilm_v2  # a fine-tuned QA model folder
    python bench/cpu_answers.py --model $M [--questions 300] [--threads 1] [--tf4_python /tmp/tf4/bin/python]

transformers 4.57 in its own environment, sharing this one's torch (bench/pipeline_parity.py's recipe without a
second torch download), from the repository root:

    python -m venv /tmp/tf4 && echo "$(python -c 'import site;print(site.getsitepackages()[0])')" \\
      > /tmp/tf4/lib/python3.11/site-packages/zz_main.pth
    /tmp/tf4/bin/pip install --no-deps transformers==4.57.6 'huggingface_hub<1.0' 'tokenizers>=0.22,<=0.23.0' \\
      requests urllib3 idna charset_normalizer certifi

The worker mode (--tf4_worker) is what that interpreter runs: it imports only transformers 4's pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SQUAD_DIR = Path(os.environ.get("SQUAD_DIR", REPO.parent / "shared" / "data" / "squad2"))
BATCHES = (1, 32)


def dev_questions(squad_dir: Path, n: int) -> list[dict]:
    """The first n questions of the shared SQuAD 2.0 dev file, with their contexts."""
    data = json.loads((squad_dir / "dev-v2.0.json").read_text(encoding="utf-8"))
    found = [{"id": qa["id"], "question": qa["question"], "context": p["context"],
              "gold": [a["text"] for a in qa["answers"]] or [""]}
             for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]
    return found[:n]


def tf4_worker(model: str, questions_file: str, threads: int) -> None:
    """Under transformers 4.x: its pipeline's answers and wall time at each batch size, as one JSON line."""
    import torch
    import transformers
    from transformers import pipeline

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    items = json.loads(Path(questions_file).read_text(encoding="utf-8"))
    qa = pipeline("question-answering", model=model, device=-1)
    qa(question=items[0]["question"], context=items[0]["context"])  # warm-up
    out = {"version": transformers.__version__}
    for batch in BATCHES:
        start = time.perf_counter()
        found = qa(question=[x["question"] for x in items], context=[x["context"] for x in items], batch_size=batch)
        out[str(batch)] = {"seconds": time.perf_counter() - start, "answers": [a["answer"] for a in found]}
    print(json.dumps(out))


def run_tf4(python: str, model: str, items: list[dict], threads: int, scratch: Path) -> dict | None:
    path = scratch / "cpu_answers_questions.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([python, __file__, "--tf4_worker", "--model", model, "--questions_file", str(path),
                           "--threads", str(threads)], capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        print(f"transformers 4.57: not measured ({done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


class ModelClock:
    """Seconds spent inside the model's forward (the rest of a pipeline call is tokenizing, windows, batching
    and decoding)."""

    def __init__(self, model):
        self.seconds = 0.0
        forward = model.forward

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        model.forward = timed


def time_pipeline(qa, items: list[dict], batch: int) -> dict:
    pairs = [(x["question"], x["context"]) for x in items]
    qa.answer(pairs[:2], batch_size=batch)  # warm-up
    start, model_before = time.perf_counter(), qa.clock.seconds
    found = qa.answer(pairs, batch_size=batch)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "model_seconds": qa.clock.seconds - model_before,
            "answers": [a[0]["answer"] if a else "" for a in found]}


def int8(module):
    """torch's dynamic int8 quantization of every Linear layer with its defaults (one scale per weight tensor;
    torch.ao, deprecated in favour of torchao, whose int8 runs eagerly slower than bf16 autocast here: 22 q/s,
    measured once); qa_pipeline's quantize="int8" is per output channel and leaves the head float32."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


class OrtModel:
    """An ONNX Runtime session in the place of the torch model inside qa_pipeline: the same tokenizing, windows,
    batches and decoding around it, so the two differ by the model's runtime only. Its config says eager
    attention, so the batches carry the 2-D padding mask the exported graph takes."""

    def __init__(self, path: Path, config, threads: int):
        import copy

        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.config = copy.deepcopy(config)
        self.config._attn_implementation = "eager"

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self

    def __call__(self, **inputs):
        return self.forward(**inputs)

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_):
        import torch

        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                "token_type_ids": (torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids).numpy()}
        start, end = self.session.run(None, feed)
        return SimpleNamespace(start_logits=torch.from_numpy(start), end_logits=torch.from_numpy(end))


def onnx_files(model: str, scratch: Path) -> dict[str, Path]:
    """The model as a user serving it on ONNX Runtime would make it: exported by torch's dynamo exporter (its
    TorchScript exporter gives wrong logits for transformers 5's BERT: 0.2 off, measured), ORT's BERT fusions
    (onnxruntime.transformers.optimizer), and their dynamic int8 quantization (int8 weights, activations
    quantized per call)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModelForQuestionAnswering

    net = AutoModelForQuestionAnswering.from_pretrained(model, attn_implementation="eager").eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.net(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.start_logits, out.end_logits

    ids = torch.randint(1000, 2000, (2, 64))
    files = {"fp32": scratch / "model.onnx", "fp32 fused": scratch / "model_fused.onnx", "int8": scratch / "model_int8.onnx"}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(Logits().eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(files["fp32"]), dynamo=True,
                      input_names=names, output_names=["start_logits", "end_logits"],
                      dynamic_shapes=({0: "batch", 1: "tokens"},) * 3)
    config = net.config
    optimize_model(str(files["fp32"]), model_type="bert", num_heads=config.num_attention_heads,
                   hidden_size=config.hidden_size).save_model_to_file(str(files["fp32 fused"]))
    quantize_dynamic(files["fp32 fused"], files["int8"], weight_type=QuantType.QInt8)
    return files


def onnx_runtime(model: str, items: list[dict], threads: int, scratch: Path) -> dict:
    """ONNX Runtime fp32 (fused) and int8 inside qa_pipeline at each batch size; {} when it is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("ONNX Runtime: not installed (pip install onnxruntime onnx onnxscript), not measured")
        return {}
    from qa_pipeline import QuestionAnsweringPipeline

    files, results = onnx_files(model, scratch), {}
    for variant in ("fp32", "fp32 fused", "int8"):
        qa = QuestionAnsweringPipeline(model, device="cpu", dtype="float32", null_threshold=None)
        qa.model = OrtModel(files[variant], qa.model.config, threads)
        qa.clock = ModelClock(qa.model)
        for batch in BATCHES:
            results[(f"ORT {variant}", batch)] = time_pipeline(qa, items, batch)
    return results


def ours(model: str, items: list[dict]) -> dict:
    """qa_pipeline.py in float32, bfloat16 autocast, torch's default dynamic int8 and its own quantize="int8" at
    each batch size."""
    from qa_pipeline import QuestionAnsweringPipeline

    results = {}
    for variant in ("float32", "bfloat16", "int8", "quantize=int8"):
        if variant == "quantize=int8":  # the pipeline's own option: per output channel, the head float32
            qa = QuestionAnsweringPipeline(model, device="cpu", quantize="int8", null_threshold=None)
        else:
            qa = QuestionAnsweringPipeline(model, device="cpu", null_threshold=None,
                                           dtype="bfloat16" if variant == "bfloat16" else "float32")
        if variant == "int8":
            qa.model = int8(qa.model)
        qa.clock = ModelClock(qa.model)
        for batch in BATCHES:
            results[(variant, batch)] = time_pipeline(qa, items, batch)
    return results


def per_call_ms(model: str, items: list[dict], calls: int) -> float:
    """Milliseconds per call of one question (the interactive use), float32, batch 1: the fixed cost of a call."""
    from qa_pipeline import QuestionAnsweringPipeline

    qa = QuestionAnsweringPipeline(model, device="cpu", dtype="float32", null_threshold=None)
    pairs = [(x["question"], x["context"]) for x in items[:calls]]
    qa.answer(pairs[:1])
    start = time.perf_counter()
    for pair in pairs:
        qa.answer([pair])
    return 1000 * (time.perf_counter() - start) / len(pairs)


def matmul_rate(dtype, n: int = 6144, k: int = 384, m: int = 1536, seconds: float = 2.0) -> float:
    """GFLOP/s of this CPU's matmul at a MiniLM feed-forward shape (batch 32 x 192 tokens, 384 -> 1536)."""
    import torch

    a, b = torch.randn(n, k).to(dtype), torch.randn(k, m).to(dtype)
    torch.matmul(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        runs += 1
    return 2 * n * k * m * runs / (time.perf_counter() - start) / 1e9


def forward_flops(config, tokens: int) -> float:
    """Multiply-adds x 2 of an encoder's forward over one sequence: the linear layers and attention's two
    matmuls (embeddings, softmax and norms are negligible)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * (4 * h * h + 2 * h * i) + 4 * tokens * h
    return float(layers * per_token * tokens)


def forward_rate(model: str, batch: int, tokens: int, seconds: float = 4.0) -> dict:
    """Sequences/s of the model's forward alone in fp32 and under bf16 autocast, and its GFLOP/s."""
    import torch

    from qa_pipeline import QuestionAnsweringPipeline

    qa = QuestionAnsweringPipeline(model, device="cpu", dtype="float32", null_threshold=None)
    ids = torch.randint(1000, 2000, (batch, tokens))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    out, models = {}, {"fp32": qa.model, "bf16": qa.model, "int8": int8(qa.model)}
    for name, autocast in (("fp32", False), ("bf16", True), ("int8", False)):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            models[name](**inputs)
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                models[name](**inputs)
                runs += 1
            rate = batch * runs / (time.perf_counter() - start)
        out[name] = {"seq_per_s": rate, "gflops": rate * forward_flops(qa.model.config, tokens) / 1e9}
    return out


def forward_profile(model: str, batch: int = 32, tokens: int = 256) -> None:
    """Where the forward's time goes in fp32, under bf16 autocast and with bf16 weights: seconds per op kind
    (torch.profiler, self time), one forward each after a warm-up, a quarter of the rows padded."""
    import torch
    from torch.profiler import profile

    from qa_pipeline import QuestionAnsweringPipeline

    net = QuestionAnsweringPipeline(model, device="cpu", dtype="float32", null_threshold=None).model
    ids = torch.randint(1000, 2000, (batch, tokens))
    mask = torch.ones_like(ids)
    mask[: batch // 4, tokens * 3 // 4:] = 0
    kinds = ("aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::gelu", "aten::copy_",
             "aten::native_layer_norm", "aten::add")
    for name, weights, autocast in (("fp32", torch.float32, False), ("bf16 autocast", torch.float32, True),
                                    ("bf16 weights", torch.bfloat16, False)):
        net = net.to(weights)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            net(input_ids=ids, attention_mask=mask)
            with profile() as prof:
                net(input_ids=ids, attention_mask=mask)
        self_s = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
        total = sum(self_s.values())
        parts = ", ".join(f"{k.removeprefix('aten::')[:24]} {self_s.get(k, 0.0):.3f}" for k in kinds)
        print(f"  forward {batch} x {tokens}, {name}: {total:.3f} s; {parts}; rest {total - sum(self_s.get(k, 0.0) for k in kinds):.3f}")


def differing(a: list[str], b: list[str]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def f1(items: list[dict], answers: list[str]) -> float:
    """The official F1 of these answers on the answerable questions (HasAns F1), in percent: the pipeline's
    defaults always answer with a span, as 4.x's."""
    import squad_metrics

    scored = [max(squad_metrics.compute_f1(g, a) for g in x["gold"])
              for x, a in zip(items, answers, strict=True) if x["gold"] != [""]]
    return 100 * sum(scored) / max(1, len(scored))


def report(items: list[dict], mine: dict, theirs: dict | None, forward: dict, rates: dict) -> None:
    n = len(items)
    print(f"{n} questions, the pipeline's defaults; questions/s (model's share of the call); answers differing "
          "from float32 batch 1; F1 on the answerable ones")
    base = mine[("float32", 1)]["answers"]
    for (dtype, batch), r in mine.items():
        print(f"  qa_pipeline {dtype:>13} batch {batch:>2}: {n / r['seconds']:6.1f} q/s "
              f"(model {100 * r['model_seconds'] / r['seconds']:.0f}%, rest {r['seconds'] - r['model_seconds']:.2f} s)"
              f"; {differing(r['answers'], base)} answers differ; F1 {f1(items, r['answers']):.2f}")
    if theirs:
        for batch in BATCHES:
            r = theirs[str(batch)]
            print(f"  transformers {theirs['version']} float32 batch {batch:>2}: {n / r['seconds']:6.1f} q/s; "
                  f"{differing(r['answers'], base)} answers differ from qa_pipeline float32; "
                  f"F1 {f1(items, r['answers']):.2f}")
        best = n / mine[("bfloat16", 32)]["seconds"]
        print(f"  qa_pipeline bf16 batch 32 / transformers 4.57 batch 32: "
              f"{best / (n / theirs['32']['seconds']):.2f}x")
    if ("ORT int8", 32) in mine:
        ort = min(mine[("ORT int8", b)]["seconds"] for b in BATCHES)
        print(f"  qa_pipeline bf16 batch 32 / ONNX Runtime int8 (its faster batch size): "
              f"{ort / mine[('bfloat16', 32)]['seconds']:.2f}x")
    for name, rate in (("fp32", "fp32"), ("bf16", "bf16"), ("int8", "bf16")):  # no int8 matmul rate measured
        f = forward[name]
        print(f"  forward alone {name}: {f['seq_per_s']:.1f} seq/s, {f['gflops']:.0f} GFLOP/s = "
              f"{100 * f['gflops'] / rates[rate]:.0f}% of this CPU's {rate} matmul rate ({rates[rate]:.0f} GFLOP/s)")
    print(f"  bf16 / fp32: forward {forward['bf16']['seq_per_s'] / forward['fp32']['seq_per_s']:.2f}x, "
          f"pipeline batch 32 {mine[('float32', 32)]['seconds'] / mine[('bfloat16', 32)]['seconds']:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--squad_dir", type=Path, default=SQUAD_DIR)
    parser.add_argument("--tf4_python", default=None, help="a transformers 4.x interpreter (see the docstring)")
    parser.add_argument("--per_call", type=int, default=40, help="questions asked one per call (0: skip)")
    parser.add_argument("--profile", action="store_true", help="only where the forward's time goes, by op")
    parser.add_argument("--tf4_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--questions_file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tf4_worker:
        tf4_worker(args.model, args.questions_file, args.threads)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from squad_internals import process_group

    torch.set_num_threads(args.threads)
    items = dev_questions(args.squad_dir, args.questions)
    print(f"CPU bf16: {process_group.cpu_bf16() or 'none'}; torch {torch.__version__}, {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    if args.profile:
        forward_profile(args.model)
        return 0
    theirs = run_tf4(args.tf4_python, args.model, items, args.threads, Path("/tmp")) if args.tf4_python else None
    mine = ours(args.model, items)
    with tempfile.TemporaryDirectory() as scratch:
        mine.update(onnx_runtime(args.model, items, args.threads, Path(scratch)))
    rates = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    report(items, mine, theirs, forward_rate(args.model, 32, 192), rates)
    if args.per_call:
        print(f"  one question per call, float32, batch 1: {per_call_ms(args.model, items, args.per_call):.1f} ms a call")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
