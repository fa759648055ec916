"""The project's command lines without torch: flags, their checks, one-line errors and exit codes.

Why a module of its own: importing torch and transformers takes seconds, and a mistyped flag, a missing file
or a malformed input line must be answered at once. run_squad.py and qa_pipeline.py check their command line
with this module at the top of the file, before their own imports pull in torch (the `if __name__ ==
"__main__"` block there); squad_metrics.py, the official scorer's drop-in, keeps a copy of its error rule and
exit codes so that it runs as one file. So everything here is standard library: argparse, pathlib, json.

Exit codes, for every command: 0 success, 2 bad input or flags (one line on stderr naming the file, the record
and the problem), 3 interrupted with a checkpoint written (run_squad.py), 1 anything else (also one line);
run_squad.py interrupted before a checkpoint was written ends by the signal itself after its one line (the
shell reports 130 for SIGINT, 143 for SIGTERM, and a script running it stops too).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import stat
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from squad_internals import folder_lock, output_folder
from squad_internals.atomic_io import check_writable, first_line

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3
# Interrupted with no checkpoint written: what the shell reports for a process ended by SIGINT / SIGTERM.
EXIT_SIGNALLED = {signal.SIGINT: 130, signal.SIGTERM: 143}


class UsageError(Exception):
    """A bad flag or flag combination: one line, exit code 2."""


class InputError(Exception):
    """A bad input file or output folder: one line, exit code 2."""


def report(exc: BaseException, code: int, verbose: bool = False, prefix: str = "error") -> int:
    """The one line every failure becomes (the traceback too with --verbose_logging); returns the exit code."""
    if verbose:
        traceback.print_exc()
    print(f"{prefix}: {first_line(exc)}", file=sys.stderr)
    return code


def exit_code(exc: BaseException, bad_input: tuple[type[BaseException], ...]) -> int:
    """2 for the command's bad-input errors (UsageError and InputError always), 1 for anything else."""
    return EXIT_USAGE if isinstance(exc, (UsageError, InputError, *bad_input)) else EXIT_FAILURE


def run_guarded(work: Callable[[], int], bad_input: tuple[type[BaseException], ...] = (),
                verbose: bool = False) -> int:
    """Run a command's work; every failure is one line and its exit code, never a traceback."""
    try:
        return work()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line (traceback with --verbose_logging)
        return report(exc, exit_code(exc, bad_input), verbose)


# --------------------------------------------------------------------------------------------
# Interrupts: SIGINT and SIGTERM anywhere outside the training loop (whose StopFlag checkpoints instead)
# --------------------------------------------------------------------------------------------


class Terminated(BaseException):
    """SIGTERM outside the training loop. A BaseException, as KeyboardInterrupt for SIGINT: it unwinds every
    `with` and `finally` (temporaries removed, the folder's lock released) and no `except Exception` stops it."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated("SIGTERM")


def install_interrupt_handlers() -> dict:
    """SIGINT raises KeyboardInterrupt and SIGTERM raises Terminated, so that both unwind into one line and an
    exit code; returns the handlers they replace (restore_handlers). A signal the process was started with
    ignored stays ignored (a shell's background job ignores Ctrl-C, as Python itself respects)."""
    previous = {}
    for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _raise_terminated)):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    return previous


def ignore_interrupts(signals: dict) -> None:
    """From here on ``signals`` (those install_interrupt_handlers set) are ignored, until restore_handlers: a
    command reporting how it ended."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def interrupt_signal(exc: BaseException) -> int:
    return signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT


def report_interrupt(exc: BaseException, last_good: str | None) -> int:
    """One line for an interrupt that wrote no checkpoint; returns 130 (SIGINT) or 143 (SIGTERM)."""
    signum = interrupt_signal(exc)
    where = f"; last good checkpoint: {last_good}" if last_good is not None else ""
    print(f"interrupted: {signal.Signals(signum).name}: stopped at once, nothing half-written left{where}",
          file=sys.stderr)
    return EXIT_SIGNALLED[signum]


def exit_with(code: int) -> None:
    """sys.exit(code), except that 130 and 143 end the process by SIGINT / SIGTERM themselves (after every
    cleanup has run): a shell then reports 128 + the signal, and a bash script running the command stops
    instead of going on as if the command had handled the interrupt (what an exit(130) would tell it)."""
    for signum, signalled in EXIT_SIGNALLED.items():
        if code == signalled:
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
    sys.exit(code)


def one_line_interrupts_at_import() -> None:
    """While a command imports torch (seconds), Ctrl-C or SIGTERM print one line, not a traceback of the import."""
    install_interrupt_handlers()
    default_hook = sys.excepthook

    def hook(kind, exc, tb):
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            exit_with(report_interrupt(exc, None))
        default_hook(kind, exc, tb)

    sys.excepthook = hook


def exit_now_if_bad(check: Callable[[], object]):
    """The check at the top of a command's file: a bad command line exits here with its one line, before the
    file goes on to import torch; a good one costs only the check, whose result is returned."""
    try:
        return check()
    except (UsageError, InputError) as exc:
        sys.exit(report(exc, EXIT_USAGE))


class DefaultsFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default where it has one and its help does not already say it (and the
    description as written, examples included)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        silent = (None, False, "", argparse.SUPPRESS)
        if "default" in text.lower() or action.default in silent or action.option_strings == []:
            return text
        return f"{text} (default: {action.default})"


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2) instead of printing the usage and exiting."""

    def __init__(self, *args, error_prefix: str = "", **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix

    def error(self, message: str):
        raise UsageError(f"{self.error_prefix}{message}" + (" (see --help)" if self.error_prefix else ""))


# --------------------------------------------------------------------------------------------
# run_squad.py: every flag of the classic script (same names, defaults, meaning) plus the newer spellings
# --------------------------------------------------------------------------------------------

RUN_SQUAD_USAGE = """run_squad.py --model_name_or_path MODEL --output_dir DIR (--do_train | --do_eval | --do_predict)
                    [--train_file FILE] [--predict_file FILE] [--version_2_with_negative] [options]"""

RUN_SQUAD_DESCRIPTION = """Fine-tune and evaluate extractive question answering on SQuAD v1.1 / v2.0: the classic
HuggingFace run_squad.py's flags, with the same meaning.

example (the classic BERT-base recipe):
  python run_squad.py --model_type bert --model_name_or_path bert-base-uncased \\
    --do_train --do_eval --do_lower_case \\
    --train_file $SQUAD_DIR/train-v1.1.json --predict_file $SQUAD_DIR/dev-v1.1.json \\
    --per_gpu_train_batch_size 12 --learning_rate 3e-5 --num_train_epochs 2.0 \\
    --max_seq_length 384 --doc_stride 128 --output_dir ./debug_squad/

exit codes: 0 success, 2 bad input or flags, 3 interrupted with a checkpoint written, 130/143 interrupted
(SIGINT/SIGTERM) with none written, 1 anything else."""


def build_parser() -> Parser:
    """run_squad.py's flags, in the groups of the README."""
    p = Parser(prog="run_squad.py", usage=RUN_SQUAD_USAGE, description=RUN_SQUAD_DESCRIPTION,
               formatter_class=lambda prog: DefaultsFormatter(prog, max_help_position=40))
    add_model_flags(p.add_argument_group("model"))
    add_data_flags(p.add_argument_group("data"))
    add_run_flags(p.add_argument_group("what to run"))
    add_optimization_flags(p.add_argument_group("optimization"))
    add_speed_flags(p.add_argument_group("speed"))
    add_decoding_flags(p.add_argument_group("decoding"))
    add_checkpoint_flags(p.add_argument_group("checkpoints and logs"))
    add_process_flags(p.add_argument_group("devices and processes"))
    return p


def add_model_flags(g) -> None:
    g.add_argument("--model_type", default=None, type=str.lower, help="Model type (bert, xlnet, ...); read from the config when omitted, must agree with it when given.")
    g.add_argument("--model_name_or_path", default=None, help="Path to a pretrained model folder or a model identifier (required).")
    g.add_argument("--config_name", default="", help="Config name or path if not the same as model_name_or_path.")
    g.add_argument("--tokenizer_name", default="", help="Tokenizer name or path if not the same as model_name_or_path.")
    g.add_argument("--cache_dir", default="", help="Where to store pretrained models downloaded from the hub.")
    g.add_argument("--do_lower_case", action="store_true", help="Set this flag if you are using an uncased model.")
    g.add_argument("--simple_span_head", action="store_true", help="XLNet/XLM: use the plain start/end head instead of the beam-search head.")
    g.add_argument("--attn_implementation", default=None, choices=["sdpa", "eager"], help="Attention kernel (default: SDPA where the model supports it, else eager).")
    g.add_argument("--trust_remote_code", action="store_true", help="Allow model code from the checkpoint folder (off by default).")


def add_data_flags(g) -> None:
    g.add_argument("--data_dir", default=None, help="Folder holding --train_file / --predict_file when they are relative names.")
    g.add_argument("--train_file", default=None, help="SQuAD JSON or JSON Lines training file.")
    g.add_argument("--predict_file", default=None, help="SQuAD JSON or JSON Lines evaluation / prediction file.")
    g.add_argument("--dataset_name", default=None, help="A HuggingFace datasets name or local dataset folder (needs `datasets`).")
    g.add_argument("--version_2_with_negative", action="store_true", help="The data contains unanswerable questions (SQuAD 2.0).")
    g.add_argument("--max_seq_length", type=int, default=384, help="Maximum total input length after tokenization.")
    g.add_argument("--doc_stride", type=int, default=128, help="Step between the starts of consecutive context windows (classic meaning).")
    g.add_argument("--max_query_length", type=int, default=64, help="Maximum number of question tokens.")
    g.add_argument("--context_first", action="store_true", help="Put the passage before the question (RoBERTa recipe).")
    g.add_argument("--skip_bad_answers", action="store_true", help="Skip gold answers that cannot be found in their context instead of stopping (training: the question; evaluation: that answer); counted and reported.")
    g.add_argument("--overwrite_cache", action="store_true", help="Rebuild the cached features.")
    g.add_argument("--features_cache_dir", default=None, help="Where features are cached (default $RUN_SQUAD_CACHE or ~/.cache/run_squad/features).")
    g.add_argument("--threads", type=int, default=1, help="Processes used to build features.")
    g.add_argument("--lang_id", type=int, default=0, help="XLM language id for the `langs` input.")


def add_run_flags(g) -> None:
    g.add_argument("--do_train", action="store_true", help="Fine-tune on --train_file.")
    g.add_argument("--do_eval", action="store_true", help="Evaluate on --predict_file (with answers) and score.")
    g.add_argument("--do_predict", action="store_true", help="Write predictions for --predict_file (answers not needed, no scores).")
    g.add_argument("--evaluate_during_training", action="store_true", help="Evaluate at every --eval_steps (default: --logging_steps).")
    g.add_argument("--eval_steps", type=int, default=0, help="With --evaluate_during_training: evaluate every N steps (0: every --logging_steps).")
    g.add_argument("--eval_all_checkpoints", action="store_true", help="Evaluate every checkpoint-<step> folder in --output_dir.")


def add_optimization_flags(g) -> None:
    g.add_argument("--per_gpu_train_batch_size", "--per_device_train_batch_size", dest="per_gpu_train_batch_size", type=int, default=8, help="Batch size per device for training.")
    g.add_argument("--per_gpu_eval_batch_size", "--per_device_eval_batch_size", dest="per_gpu_eval_batch_size", type=int, default=8, help="Batch size per device for evaluation.")
    g.add_argument("--learning_rate", type=float, default=5e-5, help="Peak learning rate of AdamW.")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    g.add_argument("--weight_decay", type=float, default=0.0, help="Weight decay (not applied to biases and LayerNorm weights).")
    g.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    g.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    g.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0: no clipping).")
    g.add_argument("--num_train_epochs", type=float, default=3.0, help="Number of training epochs (may be fractional).")
    g.add_argument("--max_steps", type=int, default=-1, help="If > 0: total optimizer steps; overrides --num_train_epochs.")
    g.add_argument("--warmup_steps", type=int, default=0, help="Linear warm-up steps.")
    g.add_argument("--warmup_ratio", type=float, default=0.0, help="Warm-up as a fraction of the total steps (when --warmup_steps is 0).")
    g.add_argument("--lr_scheduler_type", default="linear", choices=["linear", "polynomial", "cosine", "constant"], help="Decay after warm-up.")
    g.add_argument("--lr_end", type=float, default=1e-7, help="Final learning rate of the polynomial schedule.")
    g.add_argument("--lr_power", type=float, default=1.0, help="Power of the polynomial schedule.")
    g.add_argument("--layerwise_lr_decay", type=float, default=1.0, help="Each layer's LR is the next higher layer's times this (1.0: off).")
    g.add_argument("--fp16", action="store_true", help="float16 mixed precision (torch.amp, with a gradient scaler).")
    g.add_argument("--fp16_opt_level", default="O1", help="Accepted for compatibility with apex scripts; torch.amp is used.")
    g.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (torch.amp, no scaler). The default on a GPU or CPU that computes bf16 natively (CPU: AMX or AVX512-BF16).")
    g.add_argument("--fp32", action="store_true", help="No mixed precision (the classic script's default, and the default on a CPU without native bf16).")
    g.add_argument("--max_nonfinite_steps", type=int, default=10, help="Stop after this many consecutive non-finite steps.")
    g.add_argument("--seed", type=int, default=42, help="Random seed.")


def add_speed_flags(g) -> None:
    g.add_argument("--packing", nargs="?", const="on", default="auto", choices=["auto", "on", "off"], help="Pack several features into fixed-size token streams: no compute on padding (BERT incl. relative positions, RoBERTa, XLM-RoBERTa, ELECTRA, ALBERT, DistilBERT, ModernBERT). auto: on a GPU for the families flash attention's varlen kernel serves; `--packing` alone means on.")
    g.add_argument("--pack_tokens", type=int, default=0, help="With packing: tokens per pack (default: the batch size times the mean feature length, rounded up to 64).")
    g.add_argument("--packed_attention_dropout", default="on", choices=["on", "off"], help="With packing: attention dropout while training (off: the faster kernel without dropout).")
    g.add_argument("--length_grouping", default="on", choices=["on", "off"], help="Padded training batches of similar lengths (on: little padding, as HF's --group_by_length; off: random batches, as the classic script).")
    g.add_argument("--torch_compile", nargs="?", const="on", default="auto", choices=["auto", "on", "off"], help="torch.compile the model (padded widths rounded to 64). auto: for GPU training long enough to repay the compilation; on (`--torch_compile` alone): training, or evaluation in a run that does not train.")
    g.add_argument("--torch_compile_backend", default="inductor", help="With compilation: the backend (as HuggingFace's Trainer).")
    g.add_argument("--torch_compile_mode", default=None, help="With compilation: the mode (default, reduce-overhead: CUDA graphs, max-autotune).")
    g.add_argument("--sdpa_kernels", default="auto", choices=["auto", "torch"], help="Padded attention on a GPU: auto = SDPA's flash or memory-efficient kernels, never cuDNN (it builds a graph per batch shape, and has a NaN backward for lengths = 64 mod 128 with a mask); torch = PyTorch's own choice.")
    g.add_argument("--auto_find_batch_size", action="store_true", help="Before training, halve the per-device batch until its longest batch fits in GPU memory, raising --gradient_accumulation_steps to keep the global batch.")


def add_decoding_flags(g) -> None:
    g.add_argument("--n_best_size", type=int, default=20, help="Candidates kept per question in nbest_predictions.")
    g.add_argument("--max_answer_length", type=int, default=30, help="Longest answer, in tokens.")
    g.add_argument("--null_score_diff_threshold", type=float, default=0.0, help="SQuAD 2.0: predict no answer when null_score - best_non_null > this.")
    g.add_argument("--verbose_logging", action="store_true", help="Debug logs, and tracebacks on errors.")


def add_checkpoint_flags(g) -> None:
    g.add_argument("--output_dir", default=None, help="Where predictions, checkpoints and the final model are written (required).")
    g.add_argument("--logging_steps", type=int, default=500, help="Log loss, learning rate and throughput every N optimizer steps.")
    g.add_argument("--save_steps", type=int, default=500, help="Save a checkpoint every N optimizer steps (0: never).")
    g.add_argument("--save_total_limit", type=int, default=0, help="Keep only the newest K checkpoints (0: keep all).")
    g.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or `latest` (newest in --output_dir).")
    g.add_argument("--overwrite_output_dir", action="store_true", help="Allow writing into a non-empty --output_dir (nothing is deleted).")


def add_process_flags(g) -> None:
    g.add_argument("--no_cuda", action="store_true", help="Do not use CUDA even when available.")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1, help="Set by torch.distributed.launch; torchrun sets LOCAL_RANK.")
    g.add_argument("--server_ip", default="", help="For remote debugging (debugpy).")
    g.add_argument("--server_port", default="", help="For remote debugging (debugpy).")


class FrozenArgs(argparse.Namespace):
    """The parsed flags, read-only once checked: what is derived from them lives elsewhere (run_squad.RunSetup)."""

    def __setattr__(self, name, value):
        raise AttributeError(f"the parsed flags are frozen: cannot set {name}")


def parse_args(argv: Sequence[str] | None = None) -> FrozenArgs:
    """Parse and check flag combinations; raises UsageError with one line. Touches no file."""
    args = build_parser().parse_args(argv)
    check_flag_combinations(args)
    frozen = FrozenArgs()
    frozen.__dict__.update(vars(args))
    return frozen


def check_flag_combinations(args: argparse.Namespace) -> None:
    """Conflicting or incomplete flags, each with its own message. (Sequence lengths are checked against
    the tokenizer's own special tokens once it is loaded: utils_squad.check_sequence_lengths.)"""
    if not (args.do_train or args.do_eval or args.do_predict):
        raise UsageError("nothing to do: pass at least one of --do_train, --do_eval, --do_predict")
    if args.model_name_or_path is None:
        raise UsageError("--model_name_or_path is required")
    if args.output_dir is None:
        raise UsageError("--output_dir is required")
    if args.fp16 and args.bf16:
        raise UsageError("--fp16 and --bf16 are mutually exclusive: choose one mixed precision")
    if args.fp32 and (args.fp16 or args.bf16):
        raise UsageError(f"--fp32 and --{'fp16' if args.fp16 else 'bf16'} are mutually exclusive: choose one precision")
    if args.do_train and not (args.train_file or args.dataset_name):
        raise UsageError("--do_train needs --train_file (or --dataset_name)")
    if (args.do_eval or args.do_predict) and not (args.predict_file or args.dataset_name):
        raise UsageError("--do_eval/--do_predict need --predict_file (or --dataset_name)")
    if args.do_eval and args.do_predict:
        raise UsageError("--do_eval and --do_predict both evaluate --predict_file: pass one of them")
    positive = ["max_seq_length", "doc_stride", "max_query_length", "per_gpu_train_batch_size",
                "per_gpu_eval_batch_size", "gradient_accumulation_steps", "n_best_size",
                "max_answer_length", "threads", "logging_steps", "max_nonfinite_steps"]
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    for name in ["save_steps", "save_total_limit", "warmup_steps", "eval_steps", "pack_tokens"]:
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must not be negative (got {getattr(args, name)})")
    if args.num_train_epochs <= 0 and args.max_steps <= 0 and args.do_train:
        raise UsageError("--num_train_epochs must be positive (or give --max_steps)")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise UsageError(f"--warmup_ratio must be in [0, 1) (got {args.warmup_ratio})")
    if not 0.0 < args.layerwise_lr_decay <= 1.0:
        raise UsageError(f"--layerwise_lr_decay must be in (0, 1] (got {args.layerwise_lr_decay})")
    if args.learning_rate <= 0:
        raise UsageError(f"--learning_rate must be positive (got {args.learning_rate})")
    if args.resume_from_checkpoint and not args.do_train:
        raise UsageError("--resume_from_checkpoint only makes sense with --do_train")
    if args.pack_tokens and args.pack_tokens < args.max_seq_length:
        raise UsageError(f"--pack_tokens ({args.pack_tokens}) must hold a whole feature: at least --max_seq_length "
                         f"({args.max_seq_length})")
    if args.auto_find_batch_size and args.pack_tokens:
        raise UsageError("--auto_find_batch_size sizes packs through --per_gpu_train_batch_size: drop --pack_tokens")
    if args.do_train and args.evaluate_during_training and not (args.predict_file or args.dataset_name):
        raise UsageError("--evaluate_during_training needs --predict_file (or --dataset_name)")
    if args.lr_scheduler_type == "polynomial" and args.lr_end >= args.learning_rate:
        raise UsageError(f"--lr_end ({args.lr_end}) must be below --learning_rate ({args.learning_rate}) "
                         "for --lr_scheduler_type polynomial")


def evaluating(args) -> bool:
    """--predict_file is read for --do_eval, --do_predict, and (as the classic script did) for
    --evaluate_during_training even without --do_eval."""
    return args.do_eval or args.do_predict or (args.do_train and args.evaluate_during_training)


def data_file(args, flag: str) -> Path | None:
    """--train_file / --predict_file as a path (relative to --data_dir, as in the classic script), checked to
    be a file when it is going to be read; None when the flag is not given (--dataset_name supplies it)."""
    name, wanted = (args.train_file, args.do_train) if flag == "--train_file" else (args.predict_file, evaluating(args))
    if not name:
        return None
    path = Path(name)
    if args.data_dir and not path.is_absolute():
        path = Path(args.data_dir) / path
    if wanted and path.is_dir():
        raise InputError(f"{flag} {path}: is a folder, not a data file")
    if wanted and not path.is_file():
        raise InputError(f"{flag} {path}: no such file")
    return path


def restarted_by_torchrun() -> bool:
    """torchrun restarted this process group (--max-restarts): the run continues from its latest checkpoint."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def check_output_dir(args) -> None:
    """--output_dir can be written, and nothing in it is overwritten unless --overwrite_output_dir says so."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir {out}: exists and is not a folder")
    try:
        check_writable(out)
    except OSError as exc:
        raise InputError(f"--output_dir {out}: cannot write there ({exc.strerror or exc})") from exc
    if args.overwrite_output_dir or not out.is_dir():
        return
    if args.do_train:
        check_training_into(out, args.resume_from_checkpoint)
    if not args.do_train:
        for _, prefix in output_folder.models_to_evaluate(out, args.eval_all_checkpoints, False, args.model_name_or_path):
            existing = out / f"predictions_{prefix}.json"
            if existing.exists():
                raise InputError(f"--output_dir {out}: {existing.name} exists; pass --overwrite_output_dir "
                                 "to replace it, or choose another --output_dir")


def check_output_dir_free(args) -> None:
    """Another live run holds --output_dir (its lock, folder_lock.py): refused naming it, before anything else
    about the folder is said. (The lock itself is taken later, by the process that will write there.)"""
    out = Path(args.output_dir)
    try:
        holder = folder_lock.held_by(out)
    except OSError:
        return  # cannot tell here: taking the lock will
    if holder is not None:
        raise InputError(str(folder_lock.refusal(out, holder)))


def check_training_into(out: Path, resume: str | None) -> None:
    """Training into an existing folder without --overwrite_output_dir: resuming a checkpoint there, or an
    empty folder. Each refusal names what the folder holds and only the flags that do what they say."""
    finished, saved = output_folder.finished_model(out), output_folder.list_checkpoints(out)
    if resume == "latest" and finished is not None and not saved:
        # `latest` with no checkpoint starts from the beginning: here it would train over a finished model.
        raise InputError(f"--output_dir {out} holds {finished.describe()} and no checkpoint to resume from: "
                         f"{ways_forward(out, finished)}")
    if resume is not None or restarted_by_torchrun() or not any(p.name != folder_lock.LOCK_NAME for p in out.iterdir()):
        return
    if finished is not None:
        more = f"; or continue its training from {saved[-1].name} with --resume_from_checkpoint latest" if saved else ""
        raise InputError(f"--output_dir {out} holds {finished.describe()}: {ways_forward(out, finished)}{more}")
    if saved:
        raise InputError(f"--output_dir {out} holds checkpoints of an unfinished run (the latest {saved[-1].name}): "
                         f"continue it with --resume_from_checkpoint latest, start over into it with "
                         "--overwrite_output_dir (files of the same name are replaced), or choose another --output_dir")
    raise InputError(f"--output_dir {out}: exists and is not empty; choose another --output_dir, or pass "
                     "--overwrite_output_dir to write into it (files of the same name are replaced, others kept)")


def ways_forward(out: Path, finished: output_folder.FinishedModel) -> str:
    """What a user can do with a folder holding a finished model, as flags that do exactly that."""
    elsewhere = " into another --output_dir" if finished.evaluated_files() else ""
    return (f"evaluate it with --do_eval --model_name_or_path {out}{elsewhere} (without --do_train); train a new "
            "model into another --output_dir; or replace it with --overwrite_output_dir (it is kept until the new "
            "model is written)")


def first_process() -> bool:
    """Rank 0 of a torchrun / Slurm / torch.distributed.launch group, or a single process: told by the
    launcher's environment, so that it is known before torch is imported."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def check_run_squad_command(argv: Sequence[str] | None) -> FrozenArgs:
    """What run_squad.py can tell without torch: the flags, the data files, the output folder (after the
    first process has finished a final model's replacement that a kill cut short: the checks and the run
    then see one whole model)."""
    args = parse_args(argv)
    check_path_flags(args)
    data_file(args, "--train_file")
    data_file(args, "--predict_file")
    check_output_dir_free(args)
    if first_process():  # the others load the model after it (run's barrier), so they see what it saw
        finish_interrupted_writes(args)
        check_model_folders(args)
    check_output_dir(args)
    return args


def finish_writes_in(folder: Path) -> None:
    """A reader's first step in a folder the tool writes (output_folder.finish_writes): repairs said in notes,
    one that cannot be made here refused in one line (InputError)."""
    try:
        repairs = output_folder.finish_writes(folder)
    except output_folder.UnfinishedWrite as exc:
        raise InputError(str(exc)) from None
    for repair in repairs:
        print(f"note: {repair}", file=sys.stderr)


def check_model_folders(args) -> None:
    """A local model folder must hold what is loaded from it: config.json that reads (unless --config_name)
    and a tokenizer file (unless --tokenizer_name); one line naming the missing or damaged file otherwise."""
    wanted = [(args.model_name_or_path, not args.config_name, not args.tokenizer_name),
              (args.config_name, True, False), (args.tokenizer_name, False, True)]
    for value, config, tokenizer in wanted:
        if value and Path(value).is_dir() and (config or tokenizer):
            problem = output_folder.model_folder_problem(Path(value), config=config, tokenizer=tokenizer)
            if problem is not None:
                raise InputError(problem)


# The flags naming a folder the run creates or writes into; and those naming a folder (or a hub name) it reads.
# (--features_cache_dir is not one: an unusable feature cache is warned about and done without.)
FOLDER_FLAGS = ("output_dir", "cache_dir")
MODEL_FLAGS = ("model_name_or_path", "config_name", "tokenizer_name")


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be, or become, a folder because of symbolic links (a loop of them, a link to
    nowhere, on the way or at the end), in words; None otherwise (check_output_dir says the rest)."""
    try:
        found = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of symbolic links"
        if exc.errno != errno.ENOENT:
            return None  # a file on the way, no permission: the check of the folder itself names it
        if os.path.islink(path):
            return f"a symbolic link to nowhere ({os.readlink(path)} does not exist)"
        if path.parent == path:
            return None
        above = folder_problem(path.parent)  # a missing folder is created, but not below a broken link
        return f"{path.parent} on its way is {above}" if above and " on its way is " not in above else above
    return None if stat.S_ISDIR(found.st_mode) else "exists and is not a folder"


def check_path_flags(args) -> None:
    """Folder flags that cannot be folders are refused here, before torch is imported, naming the reason;
    a model flag only when it is a symbolic link that leads nowhere (otherwise it may be a hub name)."""
    for name in FOLDER_FLAGS:
        value = getattr(args, name, None)
        problem = folder_problem(Path(value)) if value else None
        if problem is not None:
            raise InputError(f"--{name} {value}: {problem}")
    for name in MODEL_FLAGS:
        value = getattr(args, name, None)
        if value and os.path.islink(value) and not os.path.exists(value):
            raise InputError(f"--{name} {value}: {folder_problem(Path(value))}")


def finish_interrupted_writes(args) -> None:
    """Before anything reads them: the output folder, the model folder and a named checkpoint's folder are
    finished where a killed run left a set between two renames (output_folder.finish_writes, each under its
    lock; the output folder's stale temporaries removed too), each repair said in a note; a set that cannot
    be finished here is refused in one line."""
    out = Path(args.output_dir)
    folders = [out] + [Path(v) for v in (args.model_name_or_path, args.config_name, args.tokenizer_name) if v]
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest":
        folders.append(Path(args.resume_from_checkpoint).parent)  # a checkpoint's set is journaled there
    for folder in dict.fromkeys(folders):
        try:
            repairs = output_folder.finish_writes(folder, owned=folder == out)
        except output_folder.UnfinishedWrite as exc:
            raise InputError(str(exc)) from None
        for repair in repairs:
            print(f"note: {repair}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# qa_pipeline.py: a model folder and JSON Lines of questions
# --------------------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def build_pipeline_parser() -> Parser:
    p = Parser(prog="qa_pipeline.py", error_prefix="qa_pipeline.py: ",
               description="Answer questions with a fine-tuned extractive QA model (transformers 4's "
                           "question-answering pipeline). Reads JSON Lines {\"question\", \"context\", ...} and "
                           "writes one JSON line per input, in input order: the input object (every key, such as "
                           "id) with score, start, end, answer added (answer == context[start:end]); with --top_k "
                           "above 1 a key \"answers\" holding the list, best first, instead.")
    p.add_argument("model_dir", help="Folder of a fine-tuned model (config.json, weights, tokenizer).")
    p.add_argument("--input", default="-", help="JSON Lines file to read (default: standard input).")
    p.add_argument("--top_k", type=positive_int, default=1, help="Answers per question (default 1).")
    p.add_argument("--handle_impossible_answer", action="store_true", help="Allow the empty answer (no answer).")
    p.add_argument("--no_threshold", action="store_true",
                   help=f"Ignore the model folder's {output_folder.THRESHOLD_FILE} (decide no-answer as transformers 4.x).")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="Windows per forward pass (default: the library's, qa_pipeline.DEFAULT_BATCH_SIZE).")
    p.add_argument("--doc_stride", type=non_negative_int, default=None,
                   help="Overlap of consecutive windows, in tokens (default min(max_seq_len // 2, 128)).")
    p.add_argument("--max_answer_len", type=positive_int, default=15, help="Longest answer, in tokens (default 15).")
    p.add_argument("--max_seq_len", type=positive_int, default=None,
                   help="Tokens per window (default min(the tokenizer's model_max_length, 384)).")
    p.add_argument("--max_question_len", type=positive_int, default=64, help="Question tokens kept (default 64).")
    p.add_argument("--context_first", action="store_true",
                   help="Put the passage before the question (a model fine-tuned with --context_first).")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available).")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="The precision of the forward passes (default: bfloat16 autocast on a CPU that computes bf16 "
                        "natively, AMX or AVX512-BF16; float32 elsewhere). float16 needs a GPU.")
    p.add_argument("--quantize", default=None, choices=("int8",),
                   help="int8: the encoder's Linear layers quantized dynamically (per output channel), float32 around "
                        "them; CPU only, 2.1-2.3x float32's speed and up to 1 F1 lower, measured (bench/RESULTS.md).")
    return p


def model_folder(path, tokenizer: bool = True) -> Path:
    """A model folder given by path: it must exist and hold a config (a hub name is not a folder). A write a
    killed run left unfinished in it is finished first (output_folder.finish_writes), or refused; then its
    config and tokenizer files must be there (never a partial model loaded)."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such model folder")
    if not (folder / "config.json").is_file() and not output_folder.pending_writes(folder):
        raise InputError(f"{folder}: not a model folder (no config.json)")
    finish_writes_in(folder)
    problem = output_folder.model_folder_problem(folder, tokenizer=tokenizer)  # (a tokenizer given apart)
    if problem is not None:
        raise InputError(problem)
    return folder


def _record(name: str, line_no: int, line: str) -> dict:
    """One checked input line; a bad one is an InputError naming the file, the line and the problem."""
    where = f"{name}: line {line_no}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {output_folder.json_type(record)}")
    for key in ("question", "context"):
        if key not in record:
            raise InputError(f"{where}: missing key '{key}'")
        if not isinstance(record[key], str):
            raise InputError(f"{where}: '{key}' must be a string, got {output_folder.json_type(record[key])}")
        if not record[key].strip():
            raise InputError(f"{where}: '{key}' is empty")
    return record


def read_records(path: str) -> list[dict]:
    """Every record of a JSON Lines file ("-": standard input), all checked before any is answered."""
    name = "<stdin>" if path == "-" else path
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 (invalid byte at offset {exc.start})") from None
    # "\n" only: str.splitlines() would also split inside strings at U+2028 and other characters JSON allows.
    records = [_record(name, n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not records:
        raise InputError(f"{name}: empty file (expected JSON Lines: one {{\"question\", \"context\"}} object per line)")
    return records


class PipelineCommand(argparse.Namespace):
    """qa_pipeline.py's parsed flags and its checked input records (read once: standard input cannot be
    read twice)."""


def check_pipeline_command(argv: Sequence[str] | None) -> PipelineCommand:
    """What qa_pipeline.py can tell without torch: the flags, every input line, the model folder."""
    parser = build_pipeline_parser()
    command = parser.parse_args(argv, namespace=PipelineCommand())
    if command.quantize and command.dtype not in (None, "float32"):
        parser.error(f"--quantize {command.quantize} computes float32 around its int8 layers: drop --dtype {command.dtype}")
    if command.quantize and (command.device or "cpu").split(":")[0] != "cpu":
        parser.error(f"--quantize {command.quantize} runs on a CPU: use --device cpu (got --device {command.device})")
    command.records = read_records(command.input)
    model_folder(command.model_dir)
    return command
