"""Which path a run takes on its device: packed or padded batches, torch.compile or eager, the precision and
the attention kernels; decided once, from the flags and a few facts, and said in one log line.

Why a module of its own: the seed scripts' flags do not name the fast path, so the tool chooses the fastest
configuration it can show correct for the model family and the device; a flag given explicitly always wins,
and each choice has its way back (`--packing off`, `--torch_compile off`, `--fp32`, `--sdpa_kernels torch`).
The rules are plain data measured on an H200 (bench/RESULTS.md, ../shared/measurements) and pure functions
over facts, so they are tested on any machine. No torch here: run_squad.py gathers the facts.

The rules (CUDA; on a CPU every default stays the classic one: padded, eager, fp32):
  precision  bf16 autocast on a GPU that computes bf16 natively (Ampere and newer) and no precision flag:
             fp32 master weights and optimizer, as --bf16. The accuracy evidence is in bench/RESULTS.md
             ("bf16 autocast and F1").
  packing    on where flash attention's varlen kernel runs: a GPU of compute capability 8.0 or newer, bf16
             or fp16, and a family packing.py supports with that kernel (every one but the relative-position
             BERT, whose exact packed path is quadratic in the pack on a GPU; and not models of remote code
             or decoders); BERT-large measured 337 vs 181 seq/s (padded, --bf16).
  compile    torch.compile for training when it pays back its compilation: at least COMPILE_MIN_PARAMETERS
             and COMPILE_MIN_STEPS (BERT-large packed: ~20 s of compilation, 54 instead of 95 ms a step, so
             it pays after ~500 steps; small models gain little, their steps are bound by the host).
             Evaluation runs eager in a run that trains (compiling it again cost 9 s of an 11 s evaluation
             of 1,447 questions); an evaluation-only run compiles when --torch_compile is given.
  attention  padded batches use SDPA's flash or memory-efficient kernels, never cuDNN: cuDNN builds a
             graph for every new (batch, width) shape (~3 ms of CPU per attention call) and its backward
             gives NaN for lengths = 64 mod 128 with a mask (pytorch #196678).
"""

from __future__ import annotations

from dataclasses import dataclass

import model_families

# Families whose packed attention runs flash attention's varlen kernel on a GPU (packing.SUPPORTED_MODEL_TYPES,
# which also takes the relative-position BERT through an exact but quadratic path).
VARLEN_PACKING_TYPES = model_families.PACKING_TYPES
COMPILE_MIN_PARAMETERS = 100_000_000
COMPILE_MIN_STEPS = 1_000


# Families whose padded attention goes through SDPA (the others compute attention themselves).
SDPA_TYPES = model_families.SDPA_TYPES


@dataclass(frozen=True)
class PathFlags:
    """The flags the choice reads (the rest of the command line plays no part in it)."""

    packing: str = "auto"  # auto, on, off
    sdpa_kernels: str = "auto"  # auto, torch
    fp16: bool = False
    bf16: bool = False
    fp32: bool = False

    @classmethod
    def from_args(cls, args) -> PathFlags:
        return cls(args.packing, args.sdpa_kernels, args.fp16, args.bf16, args.fp32)


@dataclass(frozen=True)
class Facts:
    """What the choice depends on besides the flags."""

    cuda: bool  # the run's device is a GPU
    bf16_gpu: bool  # that GPU computes bf16 natively (Ampere and newer; not emulated)
    model_type: str
    relative_positions: bool = False  # BERT with relative_key(_query) position embeddings
    flash_gpu: bool = False  # that GPU runs flash attention's kernels (compute capability 8.0 and newer)
    custom_code: bool = False  # the model's classes come from its folder (--trust_remote_code) or it is a decoder


@dataclass(frozen=True)
class Choice:
    """The path of one run, each part with the reason it was taken."""

    packing: bool
    precision: str  # fp32, bf16 or fp16
    sdpa_without_cudnn: bool
    reasons: tuple[str, ...]
    compile_training: bool = False
    compile_evaluation: bool = False

    def with_compilation(self, training: bool, evaluation: bool, reason: str) -> Choice:
        return Choice(self.packing, self.precision, self.sdpa_without_cudnn, (*self.reasons, reason), training,
                      evaluation)

    def describe(self) -> str:
        return "path: " + "; ".join(self.reasons)


def choose(flags: PathFlags, facts: Facts) -> Choice:
    """Packing, precision and the attention kernels (compilation waits for the run's length: compilation())."""
    precision, precision_why = choose_precision(flags, facts)
    packing, packing_why = choose_packing(flags.packing, facts, precision)
    no_cudnn = facts.cuda and flags.sdpa_kernels == "auto"
    reasons = [packing_why, precision_why]
    if facts.cuda and not packing and facts.model_type in SDPA_TYPES:
        reasons.append("padded attention: SDPA flash or memory-efficient kernels, not cuDNN (--sdpa_kernels torch for PyTorch's choice)"
                       if no_cudnn else
                       "padded attention: PyTorch's own SDPA choice (--sdpa_kernels torch)")
    return Choice(packing, precision, no_cudnn, tuple(reasons))


def choose_packing(flag: str, facts: Facts, precision: str) -> tuple[bool, str]:
    if flag == "on":
        return True, "packed batches (--packing)"
    if flag == "off":
        return False, "padded batches (--packing off)"
    if not facts.cuda:
        return False, "padded batches (the CPU default; --packing to pack)"
    if facts.model_type not in VARLEN_PACKING_TYPES or facts.custom_code:
        return False, f"padded batches ({facts.model_type}: its attention cannot be packed)"
    if facts.relative_positions:
        return False, f"padded batches ({facts.model_type}, relative positions: its packed path is quadratic on a GPU)"
    if not facts.flash_gpu or precision == "fp32":
        why = "fp32" if facts.flash_gpu else "a GPU older than compute capability 8.0"
        return False, f"padded batches (flash attention's varlen kernel needs bf16/fp16 on sm80+: {why})"
    return True, f"packed batches ({facts.model_type}: flash attention's varlen kernel; --packing off for padded)"


def choose_precision(flags: PathFlags, facts: Facts) -> tuple[str, str]:
    if flags.fp16:
        return "fp16", "fp16 autocast with a gradient scaler (--fp16)"
    if flags.bf16:
        return "bf16", "bf16 autocast (--bf16)"
    if flags.fp32:
        return "fp32", "fp32 (--fp32)"
    if facts.cuda and facts.bf16_gpu:
        return "bf16", "bf16 autocast (a bf16 GPU and no precision flag; --fp32 for fp32)"
    return "fp32", "fp32 (no precision flag" + (", and the GPU has no bf16)" if facts.cuda else ")")


def needs_run_length(flag: str, cuda: bool, training: bool) -> bool:
    """Whether compilation() reads the run's length: only the automatic rule, for GPU training (counting the
    optimizer steps plans an epoch, which for packed batches of a big data set is a visible wait)."""
    return flag == "auto" and cuda and training


def compilation(choice: Choice, flag: str, cuda: bool, training: bool, parameters: int, steps: int) -> Choice:
    """Whether to torch.compile for training and for evaluation, given the run's size (steps: 0 without
    training)."""
    if flag == "off":
        return choice.with_compilation(False, False, "eager (--torch_compile off)")
    if flag == "on":
        if training:
            return choice.with_compilation(True, False, "torch.compile for training (--torch_compile); "
                                                        "evaluation eager (not compiled a second time)")
        return choice.with_compilation(False, True, "torch.compile for evaluation (--torch_compile)")
    if not needs_run_length(flag, cuda, training):
        return choice.with_compilation(False, False, "eager (compilation pays only for long GPU training)")
    if parameters >= COMPILE_MIN_PARAMETERS and steps >= COMPILE_MIN_STEPS:
        return choice.with_compilation(True, False, f"torch.compile for training ({parameters / 1e6:.0f}M parameters x "
                                                    f"{steps} steps repay its compilation; --torch_compile off to skip)")
    return choice.with_compilation(False, False, f"eager ({parameters / 1e6:.0f}M parameters x {steps} steps: "
                                                 f"compilation would not pay; --torch_compile to compile)")
