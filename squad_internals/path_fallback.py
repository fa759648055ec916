"""When the path chosen for a run cannot run here: torch.compile and the precision probed before any data is
prepared, the first optimizer step tried before training starts, and the switch to eager when compilation
fails at a later step.

Why a module of its own: fast_path.py chooses from facts, but whether a choice runs depends on the installation
(a C++ compiler and Triton for torch.compile, a kernel for this GPU, dtype and shape), which only trying shows.
An automatic choice that fails is given up for the next safer one with one warning; an explicit one is refused
in one line that names the way out (fast_path.fallback_warning, fast_path.refusal).
"""

from __future__ import annotations

import logging
import traceback

import torch

from squad_internals import atomic_io, batching, device_path, fast_path, process_group

logger = logging.getLogger(__name__)

# Where the frames of a compiled call, its compilers and their kernels live: an error raised through them is
# compilation's (an error of the model's own code would be raised again by the eager run).
COMPILER_FILES = ("/torch/_dynamo/", "/torch/_inductor/", "/torch/_functorch/", "/triton/")
COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "triton")


class PathUnavailable(ValueError):
    """An explicitly requested path (--torch_compile on, --packing on, --bf16, --fp16) cannot run here."""


def what_failed(exc: BaseException, limit: int = 160) -> str:
    """An error in a few words: the innermost cause's type and first line (compilers wrap the real error)."""
    inner = exc
    while getattr(inner, "inner_exception", None) is not None or inner.__cause__ is not None:
        inner = getattr(inner, "inner_exception", None) or inner.__cause__
    text = f"{type(inner).__name__}: {atomic_io.first_line(inner)}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_compile_failure(exc: BaseException) -> bool:
    """Whether an error came out of torch.compile's machinery (never an out-of-memory error: that has its own
    report)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    if type(exc).__module__.startswith(COMPILER_MODULES):
        return True
    frames = traceback.extract_tb(exc.__traceback__)
    return any(marker in frame.filename.replace("\\", "/") for frame in frames for marker in COMPILER_FILES)


def failure_kind(exc: BaseException) -> str:
    """memory (the run's own out-of-memory report, not the path's), compile, or path (any other part's)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "memory"
    return "compile" if is_compile_failure(exc) else "path"


def forked_rng(device: torch.device):
    """Random numbers drawn inside leave the run's generators as they were (a probe must not shift dropout)."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def compile_problem(backend: str, mode: str | None, device: torch.device) -> str | None:
    """Whether torch.compile runs here at all, tried on a tiny function (forward and backward) on the run's
    device: None, or what failed (no working C++ compiler, no Triton, a backend that raises)."""
    def tiny(x, w):
        return torch.nn.functional.gelu(x @ w).sum()

    with forked_rng(device):
        try:
            x = torch.randn(4, 8, device=device)
            w = torch.randn(8, 8, device=device, requires_grad=True)
            torch.compile(tiny, backend=backend, mode=mode)(x, w).backward()
        except Exception as exc:  # noqa: BLE001 - any failure means compilation cannot be used here
            return what_failed(exc)
    return None


def precision_problem(precision: str, device: torch.device) -> str | None:
    """Whether autocast in this precision runs on the device (a GPU without bf16 even emulated; fp16's gradient
    scaler): None, or what failed."""
    if precision == "fp32":
        return None
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=True):
        return f"{torch.cuda.get_device_name(device)} has no bf16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    try:
        x = torch.ones(4, 8, device=device, requires_grad=True)
        with torch.autocast(device_type=device.type, dtype=dtype):
            y = torch.nn.functional.linear(x, torch.ones(8, 8, device=device))
        y.float().sum().backward()
        if precision == "fp16":
            torch.amp.GradScaler(device.type)
    except Exception as exc:  # noqa: BLE001 - any failure means this precision cannot be used here
        return what_failed(exc)
    return None


def first_step_problem(model, strategy, batch: dict, amp, device: torch.device) -> Exception | None:
    """One forward and backward of the run's first micro-batch on its path, then undone (random state restored,
    gradients cleared): None, or the error it raised (failure_kind tells out of memory, which is the run's own,
    from the path's failures; returned, not raised, so that every rank hears of it)."""
    with forked_rng(device):
        try:
            model.train()
            with amp:
                loss = strategy.forward(model, batch, training=True).loss
            loss.backward()
        except Exception as exc:  # noqa: BLE001 - whatever the path raises is fallen back from or reported
            return exc
        finally:
            model.zero_grad(set_to_none=True)
    return None


def first_step_failure(choice: fast_path.Choice, model, batches: batching.TrainBatches, features, rt,
                       position: dict, seed: int) -> tuple[str, str] | None:
    """The first micro-batch of this run (its first, or the resumed position's) tried on the path: None, or
    (what kind of failure: compile, memory or path; what failed), the same on every rank. The classic path is
    not tried: it has nothing to fall back to, and its errors are the run's own."""
    if not choice.risky():
        return None
    plan = batching.epoch_plan(batches.batching, features.lengths(), seed + position["epoch"], rt.rank,
                               rt.world_size, batches.accumulation)
    idx = plan[min(position["step_in_epoch"], len(plan) - 1)][0] if plan else None
    exc = None
    if idx is not None:
        batch = batching.to_device(batches.batching.tensors(features, idx, with_labels=True), rt.device)
        exc = first_step_problem(model, batches.batching, batch, device_path.amp_context(choice.precision, rt.device),
                                 rt.device)
    found = None if exc is None else (failure_kind(exc), what_failed(exc))
    return process_group.first_problem(rt, found)


def uncompile(model) -> None:
    """The model's own forward again (undoes nn.Module.compile, which only sets this attribute)."""
    model._compiled_call_impl = None


class EagerFallback:
    """A compiled model that goes on eagerly when its compilation fails at some step (a new shape, a kernel
    Triton cannot build): the step is computed again from its start, its gradients cleared and the random state
    restored, so no micro-batch is lost or counted twice and the data order is unchanged.

    Once training has started the run is never ended for compilation, even with --torch_compile on (its refusal
    is before training: the probe and the first step): the steps trained are kept. With several processes the
    failure reaches the other ranks through the stop flag's all-reduce (process_group.StopFlag.eager), and every
    rank runs eagerly from the same step on."""

    def __init__(self, model, compiled: bool):
        self.model, self.compiled = model, compiled
        self.rng: dict | None = None
        self.note: str | None = None  # what happened, for the end of training

    def step_begins(self) -> None:
        if self.compiled:
            self.rng = process_group.rng_state()

    def recover(self, exc: Exception, step: int) -> bool:
        """After an error in a step: True when it was compilation's and the step is to be computed again
        eagerly (the model switched, the step's gradients and random draws undone); False to raise it."""
        if not self.compiled or not is_compile_failure(exc):
            return False
        self.switch(f"the compiled step {step} failed ({what_failed(exc)})")
        self.model.zero_grad(set_to_none=True)
        process_group.set_rng_state(self.rng)
        return True

    def switch(self, why: str) -> None:
        uncompile(self.model)
        self.compiled, self.note = False, f"eager since {why}"
        logger.warning("%s: training goes on eagerly from this step (%s runs eagerly from the start)", why,
                       fast_path.WAY_BACK["compile"])
