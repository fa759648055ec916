"""Which path a run takes on its device: packed or padded batches, torch.compile or eager, the precision and
the attention kernels; decided once, from the flags and a few facts, and said in one log line.

Why a module of its own: the seed scripts' flags do not name the fast path, so the tool chooses the fastest
configuration it can show correct for the model family and the device; a flag given explicitly always wins,
and each choice has its way back (`--packing off`, `--torch_compile off`, `--fp32`, `--sdpa_kernels torch`).
The rules are plain data measured on an H200 (bench/RESULTS.md, ../shared/measurements) and pure functions
over facts, so they are tested on any machine. No torch here: device_path.py gathers the facts.

The rules (CUDA; on a CPU every default but precision stays the classic one: padded, eager):
  precision  bf16 autocast on a GPU that computes bf16 natively (Ampere and newer), or a CPU that does (it
             reports amx_bf16 or avx512_bf16: BF16_CPU_FLAGS), and no precision flag: fp32 master weights and
             optimizer, as --bf16. The accuracy evidence is in bench/RESULTS.md ("bf16 autocast and F1", and
             "bf16 on a CPU" for evaluation and answers). Elsewhere fp32: emulated bf16 is slower than fp32.
             qa_pipeline takes the CPU's rule (pipeline_precision); on a GPU it keeps float32 unless asked.
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

When a part cannot run here (path_fallback.py tries them), an automatic one is given up for its safer choice
(SAFER, in RISKY_PARTS order when the cause is unknown) with one warning, and an explicit one is refused with
the flag that chooses the safer path (WAY_BACK).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from squad_internals import model_families

# Families whose packed attention runs flash attention's varlen kernel on a GPU (packing.SUPPORTED_MODEL_TYPES,
# which also takes the relative-position BERT through an exact but quadratic path).
VARLEN_PACKING_TYPES = model_families.PACKING_TYPES
COMPILE_MIN_PARAMETERS = 100_000_000
COMPILE_MIN_STEPS = 1_000

# The parts of a path that can fail where the classic path would run, in the order they are given up when the
# cause of a failure is not known: what each falls back to, and the flag that asks for that explicitly.
RISKY_PARTS = ("compile", "packing", "precision")
SAFER = {"compile": "eager", "packing": "padded batches", "precision": "fp32"}
WAY_BACK = {"compile": "--torch_compile off", "packing": "--packing off", "precision": "--fp32"}


# Families whose padded attention goes through SDPA (the others compute attention themselves).
SDPA_TYPES = model_families.SDPA_TYPES

# The CPU features (as Linux's /proc/cpuinfo names them) that compute bf16 natively: Intel's AMX tiles (Sapphire
# Rapids and newer) and AVX512-BF16 (Cooper Lake, AMD Zen 4 and newer). Read from what the CPU reports, never from
# its vendor or model name; without them bf16 autocast is emulated and slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bf16_cpu(cpu_flags: Iterable[str]) -> str:
    """The first of BF16_CPU_FLAGS among the flags the CPU reports, "" when none: the CPU's bf16 fact."""
    reported = set(cpu_flags)
    return next((flag for flag in BF16_CPU_FLAGS if flag in reported), "")


@dataclass(frozen=True)
class PathFlags:
    """The flags the choice reads (the rest of the command line plays no part in it)."""

    packing: str = "auto"  # auto, on, off
    sdpa_kernels: str = "auto"  # auto, torch
    fp16: bool = False
    bf16: bool = False
    fp32: bool = False
    torch_compile: str = "auto"  # auto, on, off

    @classmethod
    def from_args(cls, args) -> PathFlags:
        return cls(args.packing, args.sdpa_kernels, args.fp16, args.bf16, args.fp32, args.torch_compile)

    def explicit(self, part: str) -> str | None:
        """The flag that asked for `part` explicitly (None: the part was chosen automatically)."""
        return {"compile": "--torch_compile on" if self.torch_compile == "on" else None,
                "packing": "--packing on" if self.packing == "on" else None,
                "precision": "--fp16" if self.fp16 else "--bf16" if self.bf16 else None}[part]

    def safer(self, part: str) -> PathFlags:
        """These flags with `part` given up for its safer choice (SAFER)."""
        return replace(self, **{"compile": {"torch_compile": "off"}, "packing": {"packing": "off"},
                                "precision": {"fp32": True, "bf16": False, "fp16": False}}[part])


@dataclass(frozen=True)
class Facts:
    """What the choice depends on besides the flags."""

    cuda: bool  # the run's device is a GPU
    bf16_gpu: bool  # that GPU computes bf16 natively (Ampere and newer; not emulated)
    model_type: str
    relative_positions: bool = False  # BERT with relative_key(_query) position embeddings
    flash_gpu: bool = False  # that GPU runs flash attention's kernels (compute capability 8.0 and newer)
    custom_code: bool = False  # the model's classes come from its folder (--trust_remote_code) or it is a decoder
    resumed_packed: bool | None = None  # the checkpoint being resumed was trained packed (None: no checkpoint)
    bf16_cpu: str = ""  # the run's CPU computes bf16 natively: the feature it reports (native_bf16_cpu), else ""


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

    def risky(self) -> tuple[str, ...]:
        """The parts of this path that can fail where the classic one (padded, fp32, eager) runs."""
        taken = {"compile": self.compile_training or self.compile_evaluation, "packing": self.packing,
                 "precision": self.precision != "fp32"}
        return tuple(part for part in RISKY_PARTS if taken[part])

    def short(self) -> str:
        """The path in three words, for the end of training: e.g. `packed, bf16, compiled`."""
        compiled = self.compile_training or self.compile_evaluation
        return f"{'packed' if self.packing else 'padded'}, {self.precision}, {'compiled' if compiled else 'eager'}"


def part_to_give_up(choice: Choice, flags: PathFlags, compile_failure: bool) -> tuple[str, str | None]:
    """Which part of a path that failed to give up, and the flag that asked for it (None: it was automatic, so
    the run falls back; a flag: the run is refused). A compilation error blames compilation; otherwise the
    automatic parts go first, in RISKY_PARTS order (a kernel or a dtype the installation lacks is the likely
    cause), then the explicit ones."""
    risky = choice.risky()
    if compile_failure and "compile" in risky:
        return "compile", flags.explicit("compile")
    candidates = [p for p in risky if p != "compile"] or list(risky)
    automatic = [p for p in candidates if flags.explicit(p) is None]
    part = (automatic or candidates)[0]
    return part, flags.explicit(part)


def fallback_warning(part: str, what_failed: str, where: str) -> str:
    """The one warning line of an automatic choice given up: what failed, what runs instead, the explicit flag."""
    return (f"{SAFER_FROM[part]} failed {where} ({what_failed}): going on with {SAFER[part]} "
            f"({WAY_BACK[part]} chooses that explicitly)")


def refusal(part: str, flag: str, what_failed: str, where: str) -> str:
    """The one line of an explicit request that cannot be met, with the way out."""
    return f"{flag}: {SAFER_FROM[part]} failed {where} ({what_failed}); {WAY_BACK[part]} for {SAFER[part]}"


SAFER_FROM = {"compile": "torch.compile", "packing": "packed attention", "precision": "mixed precision"}


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
    if facts.resumed_packed is not None:  # its data plan is the checkpoint's (a fallback may have changed it)
        return facts.resumed_packed, (f"{'packed' if facts.resumed_packed else 'padded'} batches, as the checkpoint "
                                      "being resumed was trained (--packing on|off to choose)")
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
    if not facts.cuda and facts.bf16_cpu:
        return "bf16", f"bf16 autocast (a CPU with native bf16, {facts.bf16_cpu}, and no precision flag; --fp32 for fp32)"
    return "fp32", "fp32 (no precision flag, and the " + ("GPU has no bf16)" if facts.cuda else
                                                          "CPU has no native bf16: neither amx_bf16 nor avx512_bf16)")


def pipeline_precision(requested: str | None, cuda: bool, bf16_cpu: str) -> tuple[str, str]:
    """qa_pipeline's dtype (float32, float16 or bfloat16) and why: the one asked for; else bf16 autocast on a CPU
    with native bf16 (the rule above); else float32 (on a GPU too, as transformers 4.x's pipeline)."""
    if requested is not None:
        return requested, f"{requested} (dtype={requested!r})"
    if not cuda and bf16_cpu:
        return "bfloat16", f"bfloat16 autocast (a CPU with native bf16, {bf16_cpu}; dtype='float32' for float32)"
    return "float32", "float32 (the default " + ("on a GPU; dtype='bfloat16' for bf16)" if cuda else
                                                 "on a CPU without native bf16: neither amx_bf16 nor avx512_bf16)")


def compile_pays(parameters: int, steps: int) -> bool:
    """The automatic rule's size condition (measured on BERT-large; see the module docstring)."""
    return parameters >= COMPILE_MIN_PARAMETERS and steps >= COMPILE_MIN_STEPS


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
    if compile_pays(parameters, steps):
        return choice.with_compilation(True, False, f"torch.compile for training ({parameters / 1e6:.0f}M parameters x "
                                                    f"{steps} steps repay its compilation; --torch_compile off to skip)")
    return choice.with_compilation(False, False, f"eager ({parameters / 1e6:.0f}M parameters x {steps} steps: "
                                                 f"compilation would not pay; --torch_compile to compile)")
