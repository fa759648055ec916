"""Varlen and padded attention kernels on SQuAD-like feature lengths: time (fwd, fwd+bwd) and error.

Standalone: torch and numpy, plus, when it imports, the project's `packing._flash_varlen` (the FA2 call
the packed training path makes). Runs on an H200 in under a minute: `--budget` (default 50 s from
the start of main, plus ~5 s of imports) bounds everything, FA4's JIT compile included; `--dry-run`
runs the same code on the CPU with tiny shapes, CUDA-only variants reported as skipped.

Workload: `--calls` (8) x `--features` (32) features, lengths from `--lengths_file` (.npy) or a seeded
synthetic draw shaped like the shared train-v2.0 sample's (mean ~198, max 384, min 40). One random
bank of bf16 q/k/v/grad-out tokens per shape serves every variant, so all see the same numbers:
  packed  each call is one flat stream of 32 randomly chosen features (cu_seqlens, max 384);
  padded  the same 256 features sorted by length and cut into 8 batches of 32 (the length grouping of
          utils_squad.length_grouped_batches), width = longest feature rounded up to 8, a key-padding
          mask [B,1,W,W] (an expand, as transformers builds it), q/k/v as [B,H,W,D] views of
          [B,W,H,D] (the BERT layout); `static384` pads every batch to 384 (one shape).
Per call = per 32 features in both layouts, so the numbers compare directly.

Variants (shape: BERT-large 16 heads x 64, BERT-base 12 x 64, bf16):
  fa2_*            torch.ops.aten._flash_attention_forward (dropout 0.1 through packing._flash_varlen
                   when packing imports, else the same aten call; dropout 0 direct)
  varlen_attn      torch.nn.attention.varlen.varlen_attn (dropout fixed at 0)
  fa4_*            in a child process (isolates the dispatcher override and bounds the JIT compile):
                   torch's activate_flash_attention_impl("FA4") then the aten op / varlen_attn, and
                   flash-attn-4's own flash_attn.cute.flash_attn_varlen_func; dropout where supported.
                   The child starts first and compiles (first calls, timed) while the parent measures,
                   then times its kernels alone once the parent is done; killed at the budget, keeping
                   what it reported. Needs flash-attn-4 and its dependencies importable (a --target
                   install on PYTHONPATH works: nvidia-cutlass-dsl's .pth is replaced here).
                   torch 2.11-2.13 unpack two values from flash-attn-4's _flash_attn_fwd, which returns
                   five (4.0.0b20+): the as-shipped call is tried once and reported, the timed one goes
                   through a registered impl ("FA4_bench") whose module cuts the tuple to (out, lse).
  sdpa_<backend>   padded SDPA forced to one backend (cudnn, efficient, flash) with the mask; cuDNN's
                   first call per new shape is timed on its own (graph building), and a NaN probe runs
                   widths 64/192/320 (pytorch #196678: cuDNN backward NaN at width % 128 == 64 + mask)
Correctness (dropout 0): max |diff| of the output and of dq/dk/dv against an fp32 reference on the
features of the first call (packed) and first batch (padded). Every variant is guarded: a failure is
one line and the run goes on. The last line printed is JSON.

  python bench/attention_kernels.py                 # on the GPU
  python bench/attention_kernels.py --dry-run       # anywhere, CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import subprocess
import sys
import threading
import time
import traceback
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"large": (16, 64), "base": (12, 64)}
DRY_SHAPES = {"tiny": (2, 16)}


# ----------------------------------------------------------------------------------------------
# Workload
# ----------------------------------------------------------------------------------------------
def synthetic_lengths(n: int, seed: int, max_len: int = 384, min_len: int = 40) -> np.ndarray:
    """SQuAD-like feature lengths: a two-piece lognormal (median 170, log-sd 0.36 below and 0.55 above),
    clipped to [min_len, max_len]. Against the 4,037 features of the shared train-v2.0 sample (MiniLM
    tokenizer, 384/128): mean 197.2 vs 197.7, root-mean-square 214.9 vs 215.2 (attention cost goes with
    L^2), 7.0% vs 7.3% at 384, quartiles 133/170/247 vs 134/170/245."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    lengths = 170.0 * max_len / 384 * np.exp(np.where(z < 0, 0.36, 0.55) * z)
    return np.clip(np.rint(lengths), min_len, max_len).astype(np.int64)


def load_lengths(args) -> np.ndarray:
    need = args.features * args.calls
    if args.lengths_file:
        pool = np.load(args.lengths_file).astype(np.int64).ravel()
        pool = pool[(pool > 0) & (pool <= args.max_len)]
        if len(pool) == 0:
            raise SystemExit(f"error: no lengths in 1..{args.max_len} in {args.lengths_file}")
        rng = np.random.default_rng(args.seed)
        return rng.choice(pool, size=need, replace=len(pool) < need)
    return synthetic_lengths(need, args.seed, args.max_len, min_len=min(40, args.max_len // 2))


class Workload:
    """Token bank and the two layouts (packed calls, padded batches) of the same features, one shape."""

    def __init__(self, lengths: np.ndarray, heads: int, dim: int, args, device, dtype):
        self.lengths, self.heads, self.dim, self.device, self.dtype = lengths, heads, dim, device, dtype
        self.scale = 1.0 / math.sqrt(dim)
        n = len(lengths)
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        total = int(lengths.sum())
        gen = torch.Generator(device=device).manual_seed(args.seed + 1000 * heads + dim)
        # q, k, v, grad_out for every token of every feature, in feature order
        self.bank = [torch.randn(total, heads, dim, device=device, dtype=dtype, generator=gen) for _ in range(4)]
        rng = np.random.default_rng(args.seed + 1)
        order = rng.permutation(n)
        self.pack_features = [order[i * args.features:(i + 1) * args.features] for i in range(args.calls)]
        by_len = np.argsort(-lengths, kind="stable")
        self.batch_features = [by_len[i * args.features:(i + 1) * args.features] for i in range(args.calls)]
        self.max_len = args.max_len

    def _token_index(self, feats) -> torch.Tensor:
        idx = np.concatenate([np.arange(self.starts[f], self.starts[f] + self.lengths[f]) for f in feats])
        return torch.as_tensor(idx, device=self.device)

    def packed_calls(self) -> list[dict]:
        calls = []
        for feats in self.pack_features:
            idx = self._token_index(feats)
            q, k, v, g = (t.index_select(0, idx).contiguous() for t in self.bank)
            lens = self.lengths[feats]
            cu = torch.as_tensor(np.concatenate([[0], np.cumsum(lens)]), device=self.device, dtype=torch.int32)
            calls.append({"q": q, "k": k, "v": v, "g": g, "cu": cu, "max": int(lens.max()), "feats": feats})
        return calls

    def padded_calls(self, static_width: int | None = None) -> list[dict]:
        calls = []
        for feats in self.batch_features:
            lens = self.lengths[feats]
            width = static_width or int(-(-int(lens.max()) // 8) * 8)
            calls.append(self._padded(feats, width))
        return calls

    def _padded(self, feats, width: int) -> dict:
        b = len(feats)
        lens = self.lengths[feats]
        # [B, W, H, D] contiguous (BERT's view of the projection), token rows of each feature, zeros after
        bufs = [torch.zeros(b, width, self.heads, self.dim, device=self.device, dtype=self.dtype) for _ in range(4)]
        rows = torch.as_tensor(np.concatenate([np.full(n, i) for i, n in enumerate(lens)]), device=self.device)
        cols = torch.as_tensor(np.concatenate([np.arange(n) for n in lens]), device=self.device)
        idx = self._token_index(feats)
        for buf, src in zip(bufs, self.bank, strict=True):
            buf[rows, cols] = src.index_select(0, idx)
        keep = torch.arange(width, device=self.device)[None, :] < torch.as_tensor(lens, device=self.device)[:, None]
        mask = keep[:, None, None, :].expand(b, 1, width, width)
        return {"q": bufs[0], "k": bufs[1], "v": bufs[2], "g": bufs[3], "mask": mask, "keep": keep,
                "lens": lens, "width": width, "feats": feats}

    def probe_call(self, width: int, batch: int = 4) -> dict:
        """A batch of `batch` features padded to `width` (all shorter than it): the cuDNN NaN probe."""
        short = np.flatnonzero(self.lengths < width)[:batch]
        if len(short) == 0:
            short = np.argsort(self.lengths)[:batch]
        return self._padded(short, width)


# ----------------------------------------------------------------------------------------------
# Kernels: each builds fn(call, q, k, v) -> out, same layout as q
# ----------------------------------------------------------------------------------------------
def _packing_module():
    try:
        sys.path.insert(0, str(REPO))
        from squad_internals import packing  # noqa: F401  (the project's own FA2 call)

        return packing, None
    except Exception as e:  # transformers missing, or the module broken: fall back to the aten call
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        if sys.path and sys.path[0] == str(REPO):
            sys.path.pop(0)


def fa2_aten(dropout: float):
    def fn(c, q, k, v, scale):
        return torch.ops.aten._flash_attention_forward(
            q, k, v, c["cu"], c["cu"], c["max"], c["max"], dropout, False, False, scale=scale)[0]
    return fn


def fa2_packing(packing, dropout: float):
    def fn(c, q, k, v, scale):
        four = [t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)]  # [1, H, T, D], as the model hands it
        return packing._flash_varlen(*four, c["cu"], c["max"], dropout, scale, None)[0]
    return fn


def varlen_attn_fn():
    from torch.nn.attention.varlen import varlen_attn

    def fn(c, q, k, v, scale):
        return varlen_attn(q, k, v, c["cu"], c["cu"], c["max"], c["max"], scale=scale)
    return fn


def segment_sdpa_fn(dropout: float):
    """One SDPA per feature: packing's exact CPU path (dry-run only, to exercise the packed machinery)."""
    def fn(c, q, k, v, scale):
        bounds = c["cu"].tolist()
        outs = [torch.nn.functional.scaled_dot_product_attention(
            *(t[a:b].transpose(0, 1) for t in (q, k, v)), dropout_p=dropout, scale=scale).transpose(0, 1)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return torch.cat(outs)
    return fn


def sdpa_fn(backend, dropout: float):
    from torch.nn.attention import sdpa_kernel

    def fn(c, q, k, v, scale):
        with sdpa_kernel([backend]):
            # [B, W, H, D] -> [B, H, W, D] views, as BERT's attention passes them
            out = torch.nn.functional.scaled_dot_product_attention(
                *(t.transpose(1, 2) for t in (q, k, v)), attn_mask=c["mask"], dropout_p=dropout, scale=scale)
        return out.transpose(1, 2)
    return fn


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(fn, c, scale, backward: bool):
    leaves = [c[n].detach().requires_grad_(backward) for n in ("q", "k", "v")]
    if not backward:
        with torch.no_grad():
            return fn(c, *leaves, scale), None
    out = fn(c, *leaves, scale)
    grads = torch.autograd.grad(out, leaves, c["g"])
    return out, grads


def time_variant(fn, calls, scale, device, reps: int, warmup: int) -> dict:
    """ms per call: fwd alone, fwd+bwd, and the host's share of fwd+bwd (time to issue the work)."""
    res = {}
    for mode, backward in (("fwd", False), ("fwdbwd", True)):
        for _ in range(warmup):
            for c in calls:
                run_once(fn, c, scale, backward)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            for c in calls:
                run_once(fn, c, scale, backward)
        host = time.perf_counter() - t0
        sync(device)
        wall = time.perf_counter() - t0
        n = reps * len(calls)
        res[f"{mode}_ms"] = 1e3 * wall / n
        if backward:
            res["host_ms"] = 1e3 * host / n
    return res


def first_calls(fn, calls, scale, device) -> dict:
    """Wall time of the first fwd+bwd of each new shape (cuDNN builds a graph per shape)."""
    seen, times = set(), []
    for c in calls:
        key = tuple(c["q"].shape)
        if key in seen:
            continue
        seen.add(key)
        sync(device)
        t0 = time.perf_counter()
        run_once(fn, c, scale, True)
        sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return {"first_shapes": len(times), "first_ms_mean": float(np.mean(times)), "first_ms_max": float(np.max(times))}


def reference(wl: Workload, feats) -> dict:
    """fp32 attention per feature: out and grads of q/k/v (grad_out from the bank), by feature id."""
    ref = {}
    for f in feats:
        a, n = int(wl.starts[f]), int(wl.lengths[f])
        q, k, v, g = (t[a:a + n].float().transpose(0, 1) for t in wl.bank)  # [H, L, D]
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        p = torch.softmax((q @ k.transpose(1, 2)) * wl.scale, dim=-1)
        out = p @ v
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
        ref[int(f)] = [t.transpose(0, 1).detach() for t in (out, dq, dk, dv)]  # [L, H, D]
    return ref


def errors(kind: str, c: dict, out, grads, ref: dict) -> dict:
    out, grads = out.detach(), [g.detach() for g in grads]
    worst = [0.0, 0.0]
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
    for i, f in enumerate(c["feats"]):
        r = ref.get(int(f))
        if r is None:
            continue
        if kind == "packed":
            a = int(c["cu"][i])
            n = int(c["cu"][i + 1]) - a
            got = [t[a:a + n] for t in (out, *grads)]
        else:
            n = int(c["lens"][i])
            got = [t[i, :n] for t in (out, *grads)]
        worst[0] = max(worst[0], float((got[0].float() - r[0]).abs().max()))
        worst[1] = max(worst[1], max(float((x.float() - y).abs().max()) for x, y in zip(got[1:], r[1:], strict=True)))
    return {"out_err": worst[0], "grad_err": worst[1], "finite": finite}


def nonfinite_calls(fn, calls, scale) -> list[int]:
    bad = []
    for c in calls:
        out, grads = run_once(fn, c, scale, True)
        if not (bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)):
            bad.append(int(c["q"].shape[1]))
    return bad


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:200] if msg else ''}"


class Bench:
    def __init__(self, args, device, dtype, deadline: float, tag: str = ""):
        self.args, self.device, self.dtype, self.deadline, self.tag = args, device, dtype, deadline, tag
        self.rows: list[dict] = []

    def left(self) -> float:
        return self.deadline - time.time()

    def record(self, row: dict) -> dict:
        self.rows.append(row)
        print(self.tag + format_row(row), flush=True)
        return row

    def variant(self, shape: str, name: str, kind: str, make, calls, wl: Workload, ref: dict | None,
                dropout: float, first: bool = False, scan_nan: bool = False, note: str = "") -> dict:
        row = {"shape": shape, "variant": name, "kind": kind, "dropout": dropout, "note": note}
        if self.left() < 1.0:
            row["status"] = "skipped: out of --budget"
            return self.record(row)
        if isinstance(make, str):
            row["status"] = make
            return self.record(row)
        try:
            fn = make()
            t0 = time.perf_counter()
            if first:
                row.update(first_calls(fn, calls, wl.scale, self.device))
            else:
                out, grads = run_once(fn, calls[0], wl.scale, True)
                sync(self.device)
                row["first_call_ms"] = 1e3 * (time.perf_counter() - t0)
            if ref is not None and dropout == 0.0:
                out, grads = run_once(fn, calls[0], wl.scale, True)
                row.update(errors(kind, calls[0], out, grads, ref))
            if scan_nan:
                row["nonfinite_widths"] = nonfinite_calls(fn, calls, wl.scale)
            row.update(time_variant(fn, calls, wl.scale, self.device, self.args.reps, self.args.warmup))
            row["status"] = "ok"
        except Exception as e:
            row["status"] = "failed: " + one_line(e)
            if self.args.verbose:
                traceback.print_exc()
        return self.record(row)


def format_row(r: dict) -> str:
    def f(key, fmt="{:.3f}"):
        return fmt.format(r[key]) if r.get(key) is not None else "-"

    err = f"{r['out_err']:.1e}/{r['grad_err']:.1e}" if "out_err" in r else "-"
    if r.get("finite") is False:
        err += " NONFINITE"
    extra = []
    if "first_ms_max" in r:
        extra.append(f"first call/shape {r['first_ms_mean']:.1f} ms mean, {r['first_ms_max']:.1f} max over {r['first_shapes']} shapes")
    elif "first_call_ms" in r:
        extra.append(f"first {r['first_call_ms']:.0f} ms")
    if r.get("nonfinite_widths"):
        extra.append(f"NaN/inf at widths {r['nonfinite_widths']}")
    if r.get("note"):
        extra.append(r["note"])
    status = "" if r.get("status") == "ok" else f"  [{r.get('status')}]"
    return (f"{r['shape']:<6} {r['variant']:<26} p={r['dropout']:<4} fwd {f('fwd_ms'):>7} ms  fwd+bwd {f('fwdbwd_ms'):>7} ms"
            f"  host {f('host_ms'):>7} ms  err out/grad {err:<17}{'  ' + '; '.join(extra) if extra else ''}{status}")


# ----------------------------------------------------------------------------------------------
# In-process variants (torch only)
# ----------------------------------------------------------------------------------------------
def run_torch_variants(bench: Bench, shapes: dict, lengths: np.ndarray) -> dict:
    args, device, dtype = bench.args, bench.device, bench.dtype
    cuda = device.type == "cuda"
    packing, packing_err = _packing_module() if not args.no_packing else (None, "--no_packing")
    from torch.nn.attention import SDPBackend

    info = {"packing_import": "ok" if packing else packing_err}
    need_cuda = "skipped: needs CUDA (flash attention's varlen kernel)"
    for shape, (heads, dim) in shapes.items():
        if bench.left() < 2.0:
            print(f"{shape}: skipped, out of --budget", flush=True)
            continue
        wl = Workload(lengths, heads, dim, args, device, dtype)
        packed, padded = wl.packed_calls(), wl.padded_calls()
        ref = reference(wl, set(packed[0]["feats"]) | set(padded[0]["feats"]))

        def pv(name, make, dropout, note="", shape=shape, packed=packed, wl=wl, ref=ref):
            return bench.variant(shape, name, "packed", make if cuda else need_cuda, packed, wl, ref, dropout, note=note)

        if packing is not None:
            pv("fa2_varlen[packing]", lambda: fa2_packing(packing, 0.1), 0.1, "packing._flash_varlen (aten op)")
        else:
            pv("fa2_varlen[aten]", lambda: fa2_aten(0.1), 0.1, f"packing not imported: {packing_err}")
        pv("fa2_varlen[aten]", lambda: fa2_aten(0.0), 0.0)
        pv("varlen_attn", varlen_attn_fn, 0.0)
        if not cuda:  # exercises the packed machinery where no flash kernel exists
            bench.variant(shape, "segment_sdpa[cpu path]", "packed", lambda: segment_sdpa_fn(0.0), packed, wl, ref, 0.0)

        # padded, length-grouped widths (rounded to 8), key-padding mask
        backends = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                    ("flash", SDPBackend.FLASH_ATTENTION)]
        if not cuda:
            backends.append(("math", SDPBackend.MATH))
        for bname, backend in backends:
            for p in (0.0, 0.1):
                bench.variant(shape, f"sdpa_{bname}[grouped]", "padded", lambda b=backend, p=p: sdpa_fn(b, p),
                              padded, wl, ref, p, first=(bname == "cudnn"), scan_nan=(bname == "cudnn" and p == 0.0))
        static = wl.padded_calls(static_width=args.max_len)
        for bname, backend in backends[:2]:
            for p in (0.0, 0.1):
                bench.variant(shape, f"sdpa_{bname}[static{args.max_len}]", "padded",
                              lambda b=backend, p=p: sdpa_fn(b, p), static, wl, ref, p, first=(bname == "cudnn"))
        # cuDNN NaN probe (pytorch #196678): widths with width % 128 == 64, with a mask, backward
        widths = [w for w in (64, 192, 320) if w <= args.max_len] or [args.max_len]
        probes = [wl.probe_call(w) for w in widths]
        bench.variant(shape, "sdpa_cudnn[nan-probe]", "padded", lambda: sdpa_fn(SDPBackend.CUDNN_ATTENTION, 0.0),
                      probes, wl, None, 0.0, scan_nan=True, note=f"widths {widths}")
        wl = packed = padded = static = probes = ref = None  # free this shape's tensors
        if cuda:
            torch.cuda.empty_cache()
    return info


def sdpa_choices(device, dtype) -> dict:
    """Which backend SDPA itself picks for a padded BERT-large batch, with and without a mask."""
    if device.type != "cuda":
        return {}
    out = {}
    backend = torch.nn.attention.SDPBackend
    names = {int(getattr(backend, n)): n for n in (
        "ERROR", "MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "OVERRIDEABLE") if hasattr(backend, n)}
    q = torch.randn(32, 16, 200, 64, device=device, dtype=dtype)
    mask = torch.ones(32, 1, 200, 200, device=device, dtype=torch.bool)
    for label, m, p in (("mask", mask, 0.0), ("mask_dropout", mask, 0.1), ("no_mask", None, 0.0)):
        try:
            out[label] = names.get(int(torch._fused_sdp_choice(q, q, q, m, p, False)), "?")
        except Exception as e:
            out[label] = one_line(e)
    return out


# ----------------------------------------------------------------------------------------------
# FA4 (child process)
# ----------------------------------------------------------------------------------------------
def _add_cutlass_dsl_path():
    """nvidia-cutlass-dsl puts its packages on sys.path from a .pth, which a --target/PYTHONPATH install
    does not run: add <site>/nvidia_cutlass_dsl/dsl_packages ourselves."""
    for entry in list(sys.path):
        cand = Path(entry or ".") / "nvidia_cutlass_dsl" / "dsl_packages"
        if cand.is_dir() and str(cand) not in sys.path:
            sys.path.insert(0, str(cand))


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def fa4_shim_module(interface):
    """A module torch's FA4 glue can import: flash-attn-4's _flash_attn_fwd cut to (out, lse).

    torch 2.11-2.13 unpack `out, lse = module._flash_attn_fwd(...)`; flash-attn-4 4.0.0b20+ returns 4-5
    values (out, lse, p, row_max[, o_lo]). The shim changes nothing else."""
    shim = types.ModuleType("_bench_fa4_shim")

    def _flash_attn_fwd(*a, **kw):
        res = interface._flash_attn_fwd(*a, **kw)
        return (res[0], res[1]) if isinstance(res, tuple) and len(res) > 2 else res

    shim._flash_attn_fwd = _flash_attn_fwd
    shim._flash_attn_bwd = interface._flash_attn_bwd
    sys.modules[shim.__name__] = shim
    return shim


def fa4_child(args):
    """Import FA4, compile (first calls, timed) while the parent measures, wait for GO, then time."""
    deadline = args.deadline
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    dtype = torch.bfloat16
    bench = Bench(args, device, dtype, deadline, tag="[fa4] ")
    info = {name: _dist_version(name) for name in (
        "flash-attn-4", "nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-base", "nvidia-cutlass-dsl-libs-cu13",
        "nvidia-cutlass-dsl-libs-cu12", "quack-kernels", "apache-tvm-ffi", "cuda-bindings", "cuda-python")}
    if device.type == "cuda":
        info["capability"] = torch.cuda.get_device_capability()
    pending = []  # (row, fn, override, calls, workload): compiled, timed after GO

    def emit(tag, payload):
        print(f"@@{tag} " + json.dumps(payload, default=str), flush=True)

    try:
        import torch.nn.attention as tna

        info["torch_api"] = {n: hasattr(tna, n) for n in (
            "activate_flash_attention_impl", "restore_flash_attention_impl", "list_flash_attention_impls",
            "current_flash_attention_impl", "register_flash_attention_impl")}
        if hasattr(tna, "list_flash_attention_impls"):
            info["torch_impls"] = tna.list_flash_attention_impls()
    except Exception as e:
        info["torch_api"] = one_line(e)

    _add_cutlass_dsl_path()
    t0 = time.perf_counter()
    try:
        import flash_attn.cute.interface as fa4i
        from flash_attn.cute import flash_attn_varlen_func
    except Exception as e:
        info["import"] = one_line(e)
        emit("READY", {"info": info, "rows": []})
        emit("RESULT", {"info": info, "rows": []})
        return
    info["import"] = f"ok ({time.perf_counter() - t0:.1f} s)"
    info["varlen_func_has_dropout"] = "dropout_p" in inspect.signature(flash_attn_varlen_func).parameters
    if device.type != "cuda":
        info["note"] = "no CUDA: FA4 variants skipped"
        emit("READY", {"info": info, "rows": []})
        emit("RESULT", {"info": info, "rows": []})
        return

    # torch's own path, exactly as shipped (expected to fail on the tuple arity, see fa4_shim_module)
    torch_fa4 = None
    try:
        import torch.nn.attention as tna
        from torch.nn.attention import _fa4

        q = torch.randn(64, 2, 64, device=device, dtype=dtype)
        cu = torch.tensor([0, 30, 64], device=device, dtype=torch.int32)
        t0 = time.perf_counter()
        try:
            tna.activate_flash_attention_impl("FA4")
            torch.ops.aten._flash_attention_forward(q, q, q, cu, cu, 34, 34, 0.0, False, False)
            info["torch_fa4_as_shipped"] = "ok"
        except Exception as e:
            info["torch_fa4_as_shipped"] = one_line(e)
        finally:
            info["torch_fa4_as_shipped_s"] = round(time.perf_counter() - t0, 1)  # includes a forward compile
            try:
                tna.restore_flash_attention_impl()
            except Exception:
                pass
        shim = fa4_shim_module(fa4i)
        tna.register_flash_attention_impl(
            "FA4_bench", register_fn=lambda: _fa4.register_flash_attention_fa4(module_path=shim.__name__))
        torch_fa4 = tna
    except Exception as e:
        info["torch_fa4_setup"] = one_line(e)

    emit("INFO", {"info": info})  # versions and the as-shipped check survive a kill during the compile
    lengths = load_lengths(args)

    def direct(dropout):
        if dropout:
            return "unsupported: flash_attn_varlen_func has no dropout" if not info["varlen_func_has_dropout"] else None

        def fn(c, q, k, v, scale):
            res = flash_attn_varlen_func(q, k, v, cu_seqlens_q=c["cu"], cu_seqlens_k=c["cu"],
                                         max_seqlen_q=c["max"], max_seqlen_k=c["max"], softmax_scale=scale)
            return res[0] if isinstance(res, tuple) else res
        return fn

    state = {"on": False}

    def fa4_active(on: bool):
        """torch's FA4 override on or off (once per switch, not per call: activation re-registers kernels)."""
        if on != state["on"]:
            if on:
                torch_fa4.activate_flash_attention_impl("FA4_bench")
            else:
                torch_fa4.restore_flash_attention_impl(_raise_warn=False)
            state["on"] = on

    shapes = DRY_SHAPES if args.dry_run else {s: SHAPES[s] for s in args.shapes.split(",")}
    for shape, (heads, dim) in shapes.items():
        wl = Workload(lengths, heads, dim, args, device, dtype)
        packed = wl.packed_calls()
        ref = reference(wl, set(packed[0]["feats"]))
        variants = [("fa4_varlen[direct]", lambda: direct(0.0), 0.0, False,
                     "flash_attn.cute.flash_attn_varlen_func, max_seqlen given"),
                    ("fa4_varlen[direct]", lambda: direct(0.1), 0.1, False, "")]
        if torch_fa4 is not None:
            variants += [
                ("fa4_torch[aten]", lambda: fa2_aten(0.0), 0.0, True,
                 "activate_flash_attention_impl + aten._flash_attention_forward (torch passes no max_seqlen)"),
                ("fa4_torch[aten]", lambda: fa2_aten(0.1), 0.1, True, ""),
                ("fa4_torch[varlen_attn]", varlen_attn_fn, 0.0, True, "varlen_attn with FA4 active"),
            ]
        for name, make, dropout, override, note in variants:
            # first call (the JIT compile) now, timing after GO; make() returns a str when unsupported
            row = {"shape": shape, "variant": name, "kind": "packed", "dropout": dropout, "note": note}
            if time.time() > deadline - 4:  # keep a few seconds to time what compiled
                row["status"] = "skipped: out of --budget (compile)"
                bench.record(row)
                continue
            try:
                fn = make()
                if isinstance(fn, str) or fn is None:
                    row["status"] = fn or "unsupported"
                    bench.record(row)
                    emit("ROW", row)
                    continue
                fa4_active(override)
                t0 = time.perf_counter()
                run_once(fn, packed[0], wl.scale, True)
                sync(device)
                row["first_call_ms"] = 1e3 * (time.perf_counter() - t0)
                if dropout == 0.0:
                    out, grads = run_once(fn, packed[0], wl.scale, True)
                    row.update(errors("packed", packed[0], out, grads, ref))
                for c in packed[1:]:  # the other calls' first runs (other totals may compile too)
                    run_once(fn, c, wl.scale, True)
                sync(device)
                row["status"] = "compiled, not timed"
                emit("ROW", row)
                pending.append((row, fn, override, packed, wl))
            except Exception as e:
                row["status"] = "failed: " + one_line(e)
                if args.verbose:
                    traceback.print_exc()
                bench.record(row)
                emit("ROW", row)
            finally:
                try:
                    fa4_active(False)
                except Exception:
                    pass
    emit("READY", {"info": info})
    line = sys.stdin.readline()  # the parent says GO once its own timings are done
    if line.strip() == "GO":
        for row, fn, override, calls, wl in pending:
            if time.time() > deadline - 0.5:
                row["status"] = "compiled, not timed: out of --budget"
            else:
                try:
                    fa4_active(override)
                    row.update(time_variant(fn, calls, wl.scale, device, args.reps, args.warmup))
                    row["status"] = "ok"
                except Exception as e:
                    row["status"] = "failed: " + one_line(e)
                finally:
                    fa4_active(False)
            bench.record(row)
    emit("RESULT", {"info": info, "rows": bench.rows})


class Child:
    """The FA4 child process: started first, compiles while the parent measures, timed after."""

    def __init__(self, args, deadline: float):
        cmd = [sys.executable, os.path.abspath(__file__), "--fa4_child", "--deadline", repr(deadline),
               "--features", str(args.features), "--calls", str(args.calls), "--reps", str(args.reps),
               "--warmup", str(args.warmup), "--seed", str(args.seed), "--max_len", str(args.max_len),
               "--shapes", args.shapes]
        if args.lengths_file:
            cmd += ["--lengths_file", args.lengths_file]
        if args.dry_run:
            cmd.append("--dry-run")
        if args.verbose:
            cmd.append("--verbose")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        self.ready = threading.Event()
        self.done = threading.Event()
        self.payload: dict = {}
        self.partial: dict = {}  # compile-phase rows, kept if the child is killed before its RESULT
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("@@INFO "):
                self.payload.update(json.loads(line[7:]))
            elif line.startswith("@@ROW "):
                row = json.loads(line[6:])
                self.partial[(row["shape"], row["variant"], row["dropout"])] = row
            elif line.startswith("@@READY "):
                self.payload.update(json.loads(line[8:]))
                self.ready.set()
            elif line.startswith("@@RESULT "):
                self.payload.update(json.loads(line[9:]))
                self.ready.set()
                self.done.set()
            else:
                self.log.append(line)
                if line.startswith("[fa4] ") or len(self.log) <= 30:
                    print(line if line.startswith("[fa4] ") else "[fa4 log] " + line[:300], flush=True)
        self.ready.set()
        self.done.set()

    def finish(self, deadline: float) -> dict:
        if not self.ready.wait(max(0.0, deadline - time.time())):
            self.kill()
            return {"status": "killed: not ready (compile) within --budget", "log_tail": self.log[-5:],
                    "rows": list(self.partial.values()), **{k: v for k, v in self.payload.items() if k != "rows"}}
        try:
            self.proc.stdin.write("GO\n")
            self.proc.stdin.flush()
        except Exception:
            pass
        if not self.done.wait(max(0.0, deadline - time.time())):
            self.kill()
            return {"status": "killed: timing not done within --budget", "log_tail": self.log[-5:],
                    **self.payload, "rows": list(self.partial.values())}
        self.proc.wait(timeout=5)
        return {"status": "ok" if "rows" in self.payload else "no result", "log_tail": self.log[-5:], **self.payload}

    def kill(self):
        try:
            os.killpg(self.proc.pid, 9)  # the child's own session, started above
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                    help="CPU, tiny shapes: checks the script, measures nothing of interest")
    ap.add_argument("--lengths_file", help=".npy of feature lengths (e.g. from train_throughput --save_lengths)")
    ap.add_argument("--features", type=int, default=32, help="features per call (pack or padded batch)")
    ap.add_argument("--calls", type=int, default=8, help="calls (packs / batches) per timing round")
    ap.add_argument("--reps", type=int, default=8, help="timed rounds over the calls, per mode (fwd, fwd+bwd)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before each mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max_len", type=int, default=384)
    ap.add_argument("--shapes", default="large,base", help=f"comma list of {sorted(SHAPES)}")
    ap.add_argument("--budget", type=float, default=50.0,
                    help="seconds from the start of main() to the JSON line, FA4 compile included (add ~5 s of imports)")
    ap.add_argument("--no_fa4", action="store_true", help="skip the FA4 child process")
    ap.add_argument("--no_packing", action="store_true", help="do not import the project's packing.py")
    ap.add_argument("--json_out", help="also write the final JSON here")
    ap.add_argument("--verbose", action="store_true", help="tracebacks of failed variants")
    ap.add_argument("--fa4_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dry_run:
        args.features, args.calls, args.reps, args.warmup = min(args.features, 4), min(args.calls, 2), 2, 1
        args.max_len = min(args.max_len, 48)
    return args


def main(argv=None) -> int:
    start = time.time()
    args = parse_args(argv)
    if args.fa4_child:
        fa4_child(args)
        return 0
    deadline = start + args.budget
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16
    child = None if args.no_fa4 else Child(args, deadline - 1.0)
    shapes = DRY_SHAPES if args.dry_run else {s: SHAPES[s] for s in args.shapes.split(",")}
    lengths = load_lengths(args)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if cuda else "cpu",
           "cudnn": torch.backends.cudnn.version() if cuda else None, "dry_run": args.dry_run,
           "lengths": {"n": int(len(lengths)), "mean": float(lengths.mean()), "min": int(lengths.min()),
                       "max": int(lengths.max()), "source": args.lengths_file or "synthetic"},
           "features_per_call": args.features, "calls": args.calls, "reps": args.reps}
    print(f"attention kernels: torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}) on {env['device']}; "
          f"{args.calls} calls x {args.features} features, lengths mean {lengths.mean():.1f} "
          f"[{lengths.min()}..{lengths.max()}] ({env['lengths']['source']}); ms per call (= per {args.features} features)",
          flush=True)
    bench = Bench(args, device, dtype, deadline - (15.0 if child and cuda else 1.0))
    env["sdpa_default_choice"] = sdpa_choices(device, dtype)
    if env["sdpa_default_choice"]:
        print(f"SDPA's own choice for a padded [32,16,200,64] batch: {env['sdpa_default_choice']}", flush=True)
    try:
        env.update(run_torch_variants(bench, shapes, lengths))
    except Exception as e:  # the per-variant guards should make this unreachable
        print("torch variants aborted: " + one_line(e), flush=True)
        traceback.print_exc()
    fa4 = child.finish(deadline - 1.0) if child else {"status": "skipped (--no_fa4)"}
    rows = bench.rows + fa4.pop("rows", [])
    if fa4.get("info"):
        print("fa4: " + json.dumps(fa4["info"], default=str), flush=True)
    if fa4.get("status") != "ok":
        print(f"fa4 child: {fa4.get('status')}", flush=True)

    print("\nsummary (fwd+bwd ms per call, lower is better):", flush=True)
    for shape in shapes:
        ok = sorted((r for r in rows if r["shape"] == shape and r.get("status") == "ok"), key=lambda r: r["fwdbwd_ms"])
        for r in ok:
            print(f"  {shape:<6} {r['variant']:<26} p={r['dropout']:<4} {r['fwdbwd_ms']:8.3f}", flush=True)
    result = {"env": env, "fa4": fa4, "rows": rows, "elapsed_s": round(time.time() - start, 1)}
    line = json.dumps(result, default=str)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
