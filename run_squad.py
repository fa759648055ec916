#!/usr/bin/env python
"""Fine-tune and evaluate transformer encoders for extractive question answering (SQuAD v1.1/v2.0).

The command line of the classic HuggingFace ``run_squad.py`` (same flags, same meaning), rebuilt on
transformers 5. The story, in the order of this file:

  parse and check the flags            build_parser, parse_args, check_flag_combinations
  run: file -> examples -> features    run (utils_squad.py reads, validates and featurizes, with a cache)
  train: optimizer steps               train (one loop: micro-batches, step, then log / evaluate / save / stop)
  evaluate: features -> answers        evaluate (qa_model.py runs the model, squad_metrics.py decodes and scores)

The plumbing has one home each: process_group.py (torchrun, Slurm, barriers, the stop signal, random
state), checkpoints.py (what is on disk in --output_dir), atomic_io.py (every write), qa_model.py (the
model, its inputs, padded or packed batches, span or beam heads), packing.py (packed attention).

Exit codes: 0 success, 2 bad input or flags, 3 interrupted with a checkpoint written, 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import atomic_io
import squad_metrics
import utils_squad

# The torch side (torch, transformers and the modules built on them) takes about five seconds to import.
# It is imported once, by import_torch_side(), after the flags are parsed and checked, so that --help and
# a mistyped flag answer at once: this is the one deferred import boundary of the command line.
torch = transformers = checkpoints = process_group = qa_model = None

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3

logger = logging.getLogger("run_squad")


class UsageError(Exception):
    """A bad flag or flag combination; reported as one line with exit code 2."""


class InputError(Exception):
    """A bad input file or output folder; reported as one line with exit code 2."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was written (exit code 3)."""


class NonFiniteError(Exception):
    """Too many consecutive non-finite losses or gradients."""


# --------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Every flag of the classic script (same names, defaults, meaning) plus the newer spellings."""
    p = argparse.ArgumentParser(
        description="Fine-tune and evaluate extractive question answering on SQuAD v1.1 / v2.0.",
        allow_abbrev=False,
    )
    g = p.add_argument_group("model")
    g.add_argument("--model_type", default=None, type=str.lower, help="Model type (bert, xlnet, ...); read from the config when omitted, must agree with it when given.")
    g.add_argument("--model_name_or_path", default=None, help="Path to a pretrained model folder or a model identifier.")
    g.add_argument("--config_name", default="", help="Config name or path if not the same as model_name_or_path.")
    g.add_argument("--tokenizer_name", default="", help="Tokenizer name or path if not the same as model_name_or_path.")
    g.add_argument("--cache_dir", default="", help="Where to store pretrained models downloaded from the hub.")
    g.add_argument("--do_lower_case", action="store_true", help="Set this flag if you are using an uncased model.")
    g.add_argument("--simple_span_head", action="store_true", help="XLNet/XLM: use the plain start/end head instead of the beam-search head.")
    g.add_argument("--attn_implementation", default=None, choices=["sdpa", "eager"], help="Attention kernel (default: SDPA where the model supports it, else eager).")
    g.add_argument("--trust_remote_code", action="store_true", help="Allow model code from the checkpoint folder (off by default).")

    add_data_flags(p.add_argument_group("data"))
    add_training_flags(p)
    return p


def add_data_flags(g) -> None:
    g.add_argument("--output_dir", default=None, help="Where predictions, checkpoints and the final model are written.")
    g.add_argument("--data_dir", default=None, help="Folder holding --train_file / --predict_file when they are relative names.")
    g.add_argument("--train_file", default=None, help="SQuAD JSON or JSON Lines training file.")
    g.add_argument("--predict_file", default=None, help="SQuAD JSON or JSON Lines evaluation / prediction file.")
    g.add_argument("--dataset_name", default=None, help="A HuggingFace datasets name or local dataset folder (needs `datasets`).")
    g.add_argument("--version_2_with_negative", action="store_true", help="The data contains unanswerable questions (SQuAD 2.0).")
    g.add_argument("--null_score_diff_threshold", type=float, default=0.0, help="Predict no answer when null_score - best_non_null > this.")
    g.add_argument("--max_seq_length", type=int, default=384, help="Maximum total input length after tokenization.")
    g.add_argument("--doc_stride", type=int, default=128, help="Step between the starts of consecutive context windows (classic meaning).")
    g.add_argument("--max_query_length", type=int, default=64, help="Maximum number of question tokens.")
    g.add_argument("--context_first", action="store_true", help="Put the passage before the question (RoBERTa recipe).")
    g.add_argument("--skip_bad_answers", action="store_true", help="Skip gold answers that cannot be found in their context instead of stopping (training: the question; evaluation: that answer); counted and reported.")
    g.add_argument("--overwrite_cache", action="store_true", help="Rebuild the cached features.")
    g.add_argument("--features_cache_dir", default=None, help="Where features are cached (default $RUN_SQUAD_CACHE or ~/.cache/run_squad/features).")
    g.add_argument("--threads", type=int, default=1, help="Processes used to build features.")
    g.add_argument("--lang_id", type=int, default=0, help="XLM language id for the `langs` input.")


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """What to run, optimization, decoding, checkpoints and processes."""
    g = p.add_argument_group("what to run")
    g.add_argument("--do_train", action="store_true", help="Fine-tune on --train_file.")
    g.add_argument("--do_eval", action="store_true", help="Evaluate on --predict_file (with answers) and score.")
    g.add_argument("--do_predict", action="store_true", help="Write predictions for --predict_file (answers not needed, no scores).")
    g.add_argument("--evaluate_during_training", action="store_true", help="Evaluate at every --eval_steps (default: --logging_steps).")
    g.add_argument("--eval_all_checkpoints", action="store_true", help="Evaluate every checkpoint-<step> folder in --output_dir.")

    g = p.add_argument_group("optimization")
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
    g.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (torch.amp, no scaler).")
    g.add_argument("--max_nonfinite_steps", type=int, default=10, help="Stop after this many consecutive non-finite steps.")
    g.add_argument("--packing", action="store_true", help="Pack several features into fixed-size token streams: no compute on padding (BERT, RoBERTa, ELECTRA).")
    g.add_argument("--pack_tokens", type=int, default=0, help="With --packing: tokens per pack (default: the batch size times the mean feature length, rounded up to 64).")
    g.add_argument("--packed_attention_dropout", default="on", choices=["on", "off"], help="With --packing: attention dropout while training (off: the faster kernel without dropout).")
    g.add_argument("--seed", type=int, default=42, help="Random seed.")

    g = p.add_argument_group("decoding")
    g.add_argument("--n_best_size", type=int, default=20, help="Candidates kept per question in nbest_predictions.")
    g.add_argument("--max_answer_length", type=int, default=30, help="Longest answer, in tokens.")
    g.add_argument("--verbose_logging", action="store_true", help="Debug logs, and tracebacks on errors.")

    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--logging_steps", type=int, default=500, help="Log loss, learning rate and throughput every N optimizer steps.")
    g.add_argument("--eval_steps", type=int, default=0, help="With --evaluate_during_training: evaluate every N steps (default --logging_steps).")
    g.add_argument("--save_steps", type=int, default=500, help="Save a checkpoint every N optimizer steps (0: never).")
    g.add_argument("--save_total_limit", type=int, default=0, help="Keep only the newest K checkpoints (0: keep all).")
    g.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or `latest` (newest in --output_dir).")
    g.add_argument("--overwrite_output_dir", action="store_true", help="Allow writing into a non-empty --output_dir (nothing is deleted).")

    g = p.add_argument_group("devices and processes")
    g.add_argument("--no_cuda", action="store_true", help="Do not use CUDA even when available.")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1, help="Set by torch.distributed.launch; torchrun sets LOCAL_RANK.")
    g.add_argument("--server_ip", default="", help="For remote debugging (debugpy).")
    g.add_argument("--server_port", default="", help="For remote debugging (debugpy).")


class FrozenArgs(argparse.Namespace):
    """The parsed flags, read-only once checked: what is derived from them lives in RunSetup."""

    def __setattr__(self, name, value):
        raise AttributeError(f"the parsed flags are frozen: cannot set {name}")


def parse_args(argv: list[str] | None = None) -> FrozenArgs:
    """Parse and check flag combinations; raises UsageError with one line. Touches no file."""
    parser = build_parser()

    def _error(message: str) -> None:  # argparse would print usage and exit; we want one line
        raise UsageError(message)

    parser.error = _error  # type: ignore[method-assign]
    args = parser.parse_args(argv)
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
    if args.do_train and args.evaluate_during_training and not (args.predict_file or args.dataset_name):
        raise UsageError("--evaluate_during_training needs --predict_file (or --dataset_name)")
    if args.lr_scheduler_type == "polynomial" and args.lr_end >= args.learning_rate:
        raise UsageError(f"--lr_end ({args.lr_end}) must be below --learning_rate ({args.learning_rate}) "
                         "for --lr_scheduler_type polynomial")


def evaluating(args) -> bool:
    """--predict_file is read for --do_eval, --do_predict, and (as the classic script did) for
    --evaluate_during_training even without --do_eval."""
    return args.do_eval or args.do_predict or (args.do_train and args.evaluate_during_training)


# --------------------------------------------------------------------------------------------
# main and run: file -> examples -> features -> training -> evaluation
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    verbose = "--verbose_logging" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parse_args(argv)
        import_torch_side()
        return run(args)
    except UsageError as exc:
        return report_error(exc, EXIT_USAGE, verbose)
    except TrainingInterrupted as exc:
        return report_error(exc, EXIT_INTERRUPTED, verbose, prefix="interrupted")
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line (traceback with --verbose_logging)
        return report_error(exc, exit_code_for(exc), verbose)


def import_torch_side() -> None:
    """The deferred import boundary (see the comment at the top of this file)."""
    global torch, transformers, checkpoints, process_group, qa_model
    import checkpoints, process_group, qa_model, torch, transformers.optimization  # noqa: E401, I001 - the one boundary


def exit_code_for(exc: BaseException) -> int:
    bad_input = (InputError, utils_squad.SquadDataError, utils_squad.FeatureSettingsError,
                 squad_metrics.ScoringInputError)
    if qa_model is not None:
        bad_input += (qa_model.ModelLoadError, qa_model.PackingUnsupported, checkpoints.CheckpointInputError,
                      process_group.LaunchError)
    return EXIT_USAGE if isinstance(exc, bad_input) else EXIT_FAILURE


def report_error(exc: BaseException, code: int, verbose: bool, prefix: str = "error") -> int:
    if verbose:
        traceback.print_exc()
    print(f"{prefix}: {first_line(exc)}", file=sys.stderr)
    return code


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass(frozen=True)
class RunSetup:
    """What is derived from the flags, the environment and the model's config, once, in run()."""

    train_path: Path | None
    predict_path: Path | None
    model_type: str
    beam_head: bool
    context_first: bool
    source: object  # qa_model.ModelSource

    def run_args(self, args) -> dict:
        """The flags as training_args.json records them, with the derived paths and model type."""
        derived = {"model_type": self.model_type, "train_path": self.train_path, "predict_path": self.predict_path}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in {**vars(args), **derived}.items()}


def run(args) -> int:
    """file -> examples -> features -> training -> evaluation, in that order."""
    rt = process_group.setup(args.local_rank, args.no_cuda)
    setup_logging(args.verbose_logging, rt.rank)
    start_debugger(args.server_ip, args.server_port)
    check_output_dir(args)
    process_group.barrier(rt)  # every rank has checked --output_dir before rank 0 writes anything into it
    train_path, predict_path = data_paths(args, rt)
    # Every input file is read and validated before any model is loaded or feature computed.
    train_examples = read_examples(args, train_path, True, True) if args.do_train else None
    eval_examples = read_examples(args, predict_path, False, not args.do_predict) if evaluating(args) else None
    if rt.is_main:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    process_group.set_seed(args.seed)
    logger.info("process %d of %d on %s; fp16 %s, bf16 %s", rt.rank, rt.world_size, rt.device, args.fp16, args.bf16)

    source = qa_model.ModelSource(args.model_name_or_path, args.config_name, args.tokenizer_name, args.cache_dir,
                                  args.trust_remote_code)
    config = qa_model.load_config(source, args.model_type)
    tokenizer = qa_model.load_tokenizer(source, args.do_lower_case)
    setup = RunSetup(train_path, predict_path, config.model_type,
                     qa_model.uses_beam_head(config.model_type, args.simple_span_head),
                     bool(args.context_first or tokenizer.padding_side == "left"), source)
    check_model_settings(args, setup, config, tokenizer)
    head = qa_model.make_head(setup.beam_head)
    eval_data = None
    if evaluating(args):
        features = build_features(args, rt, tokenizer, predict_path, eval_examples, setup.context_first, False)
        eval_data = (eval_examples, features, make_batching(args, head, config, features, args.per_gpu_eval_batch_size))
    if args.do_train:
        features = build_features(args, rt, tokenizer, train_path, train_examples, setup.context_first, True)
        batching = make_batching(args, head, config, features, args.per_gpu_train_batch_size)
        resume = checkpoints.resolve_resume(Path(args.output_dir), args.resume_from_checkpoint
                                            or ("latest" if process_group.restarted_by_torchrun() else None))
        model = load_model(args, setup, config, str(resume) if resume else args.model_name_or_path)
        global_step = train(args, setup, rt, model, tokenizer, features, batching, resume,
                            eval_data if args.evaluate_during_training else None)
        if rt.is_main:
            checkpoints.save_final_model(Path(args.output_dir), model, tokenizer, setup.run_args(args), global_step)
        process_group.barrier(rt)
    if args.do_eval or args.do_predict:
        for folder, prefix in checkpoints.models_to_evaluate(Path(args.output_dir), args.eval_all_checkpoints,
                                                             args.do_train, args.model_name_or_path):
            model = load_model(args, setup, config, folder)
            results = evaluate(args, setup, rt, model, *eval_data, prefix=prefix, score=args.do_eval)
            if rt.is_main and args.do_eval:
                print(json.dumps({"step": prefix, **results}), flush=True)
    process_group.shutdown(rt)
    return EXIT_OK


def setup_logging(verbose: bool, rank: int) -> None:
    logging.basicConfig(
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=(logging.DEBUG if verbose else logging.INFO) if rank == 0 else logging.WARNING,
        force=True,
    )
    # transformers is chatty at INFO about every file it reads.
    logging.getLogger("transformers").setLevel(logging.WARNING)


def optional_import(module: str, what: str):
    """An optional package (datasets, debugpy, tensorboardX), or a UsageError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"{what} needs the optional `{module}` package (pip install {module})") from exc


def start_debugger(server_ip: str, server_port: str) -> None:
    """Classic --server_ip/--server_port remote debugging, through debugpy (the successor of ptvsd)."""
    if not (server_ip and server_port):
        return
    debugpy = optional_import("debugpy", "--server_ip/--server_port")
    debugpy.listen((server_ip, int(server_port)))
    logger.info("Waiting for a debugger to attach on %s:%s", server_ip, server_port)
    debugpy.wait_for_client()


def check_output_dir(args) -> None:
    """--output_dir can be written, and nothing in it is overwritten unless --overwrite_output_dir says so."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir {out}: exists and is not a folder")
    check_writable(out)
    if args.overwrite_output_dir or not out.is_dir():
        return
    resuming = args.resume_from_checkpoint is not None or process_group.restarted_by_torchrun()
    if args.do_train and any(out.iterdir()) and not resuming:
        raise InputError(
            f"--output_dir {out}: exists and is not empty; pass --overwrite_output_dir to write into it "
            "(nothing is deleted) or --resume_from_checkpoint latest to continue"
        )
    if not args.do_train:
        for _, prefix in checkpoints.models_to_evaluate(out, args.eval_all_checkpoints, False, args.model_name_or_path):
            existing = out / f"predictions_{prefix}.json"
            if existing.exists():
                raise InputError(f"--output_dir {out}: {existing.name} exists; pass --overwrite_output_dir "
                                 "to replace it, or choose another --output_dir")


def check_writable(folder: Path) -> None:
    """Try a write where the folder is (or would be created): a read-only target fails now, not after
    an hour of featurization. Permission bits alone do not tell (root ignores them)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise InputError(f"--output_dir {folder}: cannot write there ({exc.strerror or exc})") from exc


def data_paths(args, rt) -> tuple[Path | None, Path | None]:
    """--train_file/--predict_file (relative to --data_dir, as in the classic script) or --dataset_name's
    splits, checked to exist before any is read (the reader refuses one too large for memory)."""
    paths = []
    for flag, name, wanted, split in (("--train_file", args.train_file, args.do_train, "train"),
                                      ("--predict_file", args.predict_file, evaluating(args), "validation")):
        path = Path(name) if name else None
        if path is not None and args.data_dir and not path.is_absolute():
            path = Path(args.data_dir) / path
        if path is None and args.dataset_name and wanted:
            path = dataset_to_file(args, rt, split)
        if wanted and path is not None and path.is_dir():
            raise InputError(f"{flag} {path}: is a folder, not a data file")
        if wanted and path is not None and not path.is_file():
            raise InputError(f"{flag} {path}: no such file")
        paths.append(path)
    return paths[0], paths[1]


def features_cache_dir(args) -> Path:
    """Features are cached per user, not beside the data: data folders are often shared or read-only.

    Cache names are content and settings hashes, so sweeps with other output folders reuse them safely.
    """
    if args.features_cache_dir:
        return Path(args.features_cache_dir)
    if os.environ.get("RUN_SQUAD_CACHE"):
        return Path(os.environ["RUN_SQUAD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "run_squad" / "features"


def dataset_to_file(args, rt, split: str) -> Path:
    """--dataset_name: rank 0 writes the split as HF-layout JSON Lines so the normal reader and cache apply.

    The file goes beside the feature cache, not into --output_dir, which holds only this run's results.
    """
    target = features_cache_dir(args) / "datasets" / f"{Path(args.dataset_name).name}-{split}.jsonl"
    if rt.is_main:
        datasets = optional_import("datasets", "--dataset_name")
        try:
            ds = datasets.load_dataset(args.dataset_name, split=split, cache_dir=args.cache_dir or None)
        except Exception as exc:  # noqa: BLE001 - any loading failure (offline, unknown name) is one line
            raise InputError(f"--dataset_name {args.dataset_name}: cannot load split {split!r} ({first_line(exc)})") from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        fields = ("id", "title", "context", "question", "answers")
        lines = [json.dumps({k: row[k] for k in fields if k in row}, ensure_ascii=False) for row in ds]
        atomic_io.write_text_atomic(target, "\n".join(lines) + "\n")
    process_group.barrier(rt)
    return target


def read_examples(args, path: Path, is_training: bool, require_answers: bool):
    """Read and validate one file (every problem is found here, before any model or feature)."""
    examples, report = utils_squad.read_squad_examples(
        path, version_2_with_negative=args.version_2_with_negative, is_training=is_training,
        skip_bad_answers=args.skip_bad_answers,
    )
    if require_answers and not args.version_2_with_negative and not all(e.answers for e in examples):
        missing = next(e.qas_id for e in examples if not e.answers)
        raise InputError(f"{path}: question {missing}: no answers to score against (use --do_predict "
                         "for predictions only, or --version_2_with_negative for SQuAD 2.0 data)")
    logger.info("%s: %d questions, %d repaired answer offsets, %d skipped", path, len(examples),
                report.repaired, report.skipped)
    return examples


def feature_settings(args, context_first: bool, is_training: bool) -> utils_squad.FeatureSettings:
    return utils_squad.FeatureSettings(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                                       max_query_length=args.max_query_length, context_first=context_first,
                                       is_training=is_training)


def check_model_settings(args, setup: RunSetup, config, tokenizer) -> None:
    """What needs the config and tokenizer, said before any feature is built."""
    try:
        utils_squad.check_sequence_lengths(tokenizer, feature_settings(args, setup.context_first, False))
    except utils_squad.FeatureSettingsError as exc:
        raise UsageError(f"--max_seq_length ({args.max_seq_length}) must be larger than --max_query_length "
                         f"({args.max_query_length}) + {exc.num_special} special tokens of this tokenizer") from exc
    if args.packing:
        qa_model.check_packing(config)


def build_features(args, rt, tokenizer, path: Path, examples, context_first: bool, is_training: bool):
    """Featurize through the on-disk cache; rank 0 builds it while the other ranks wait."""
    cache_dir = features_cache_dir(args)
    if rt.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
    else:
        process_group.barrier(rt)
    features = utils_squad.load_or_build_features(
        path, examples, tokenizer, feature_settings(args, context_first, is_training), cache_dir=cache_dir,
        overwrite_cache=args.overwrite_cache and rt.is_main, threads=args.threads,
    )
    if rt.is_main:
        process_group.barrier(rt)
    logger.info("%s: %d features", path, len(features))
    return features


def make_batching(args, head, config, features, batch_size: int):
    return qa_model.make_batching(head, config, features, batch_size, packed=args.packing,
                                  pack_tokens=args.pack_tokens, max_seq_length=args.max_seq_length,
                                  version_2=args.version_2_with_negative, lang_id=args.lang_id)


def load_model(args, setup: RunSetup, config, path: str):
    model = qa_model.load_model(path, config, setup.source, setup.beam_head, args.attn_implementation)
    if args.packing:
        qa_model.enable_packing(model, attention_dropout=args.packed_attention_dropout == "on")
    return model


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def epoch_plan(batching, lengths: np.ndarray, seed: int, rank: int, world_size: int, accum: int) -> list[list]:
    """One epoch as optimizer steps, each a list of `accum` micro-batches of this rank: a deterministic
    function of the seed, so resuming at step k of an epoch is plan[k:]. Every rank gets the same number
    of steps; leftover micro-batches (fewer than `accum`) are dropped, not carried into the next epoch."""
    batches = batching.plan(lengths, seed=seed)
    usable = len(batches) - len(batches) % world_size
    mine = batches[rank:usable:world_size]
    return [mine[i * accum:(i + 1) * accum] for i in range(len(mine) // accum)]


def optimizer_steps(plan_of_epoch, position: dict, total_steps: int):
    """(position after the step, its micro-batches) for every optimizer step from `position` on."""
    step, epoch, start = position["global_step"], position["epoch"], position["step_in_epoch"]
    while step < total_steps:
        plan = plan_of_epoch(epoch)  # packs per epoch vary a little with the shuffle
        for i in range(start, len(plan)):
            step += 1
            done = i + 1 == len(plan)
            yield {"global_step": step, "epoch": epoch + done, "step_in_epoch": 0 if done else i + 1}, plan[i]
            if step >= total_steps:
                return
        epoch, start = epoch + 1, 0


def build_optimizer(model, args, device):
    groups = qa_model.parameter_groups(model, args.learning_rate, args.weight_decay, args.layerwise_lr_decay)
    for g in groups:
        depth = f" (depth {g['depth']})" if args.layerwise_lr_decay < 1.0 else ""
        logger.info("parameter group%s: lr %.3g, weight decay %g, %d tensors, e.g. %s",
                    depth, g["lr"], g["weight_decay"], len(g["params"]), g["names"][0])
    params = [{k: v for k, v in g.items() if k not in ("names", "depth")} for g in groups]
    return torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, fused=device.type == "cuda")


def build_scheduler(optimizer, args, total_steps: int):
    opt = transformers.optimization
    warmup = args.warmup_steps or int(math.ceil(args.warmup_ratio * total_steps))
    if args.lr_scheduler_type == "linear":
        return opt.get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if args.lr_scheduler_type == "polynomial":
        return opt.get_polynomial_decay_schedule_with_warmup(
            optimizer, warmup, total_steps, lr_end=args.lr_end, power=args.lr_power)
    if args.lr_scheduler_type == "cosine":
        return opt.get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return opt.get_constant_schedule_with_warmup(optimizer, warmup)


def amp_context(args, device):
    if args.fp16:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if args.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Optimization:
    """The optimizer, its schedule and (--fp16) the gradient scaler: what a checkpoint saves of them."""

    optimizer: object
    scheduler: object
    scaler: object | None

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


@dataclass
class Meter:
    """Loss and throughput since the last log line; the loss stays on the device until it is logged."""

    loss: object  # a 0-dim tensor on the training device
    steps: int = 0
    seqs: int = 0
    tokens: int = 0
    skipped: int = 0
    t0: float = 0.0

    def add(self, loss, seqs: int, tokens: int) -> None:
        self.loss += loss
        self.seqs += seqs
        self.tokens += tokens


def train(args, setup: RunSetup, rt, model, tokenizer, features, batching, resume_from: Path | None,
          eval_data) -> int:
    """The training loop: optimizer steps, each over its micro-batches, then step, then log / evaluate /
    save / stop. Returns the global step."""
    model.to(rt.device)
    ddp = wrap_for_processes(model, rt, setup.model_type)
    accum, lengths = args.gradient_accumulation_steps, features.lengths()

    def plan_of_epoch(epoch: int) -> list[list]:
        return epoch_plan(batching, lengths, args.seed + epoch, rt.rank, rt.world_size, accum)

    total_steps = total_optimizer_steps(args, setup, rt, len(plan_of_epoch(0)), len(features))
    opt = start_optimization(args, model, rt, total_steps)
    position = start = resume(resume_from, opt, rt)
    writer = start_logs(args, rt, resume_from, batching, len(features), total_steps)
    stop, meter = process_group.StopFlag(), Meter(torch.zeros((), device=rt.device), t0=time.perf_counter())
    stop.install()
    progress = tqdm(total=total_steps, initial=start["global_step"], desc="train", disable=not rt.is_main,
                    dynamic_ncols=True)
    clip, nonfinite_run = (args.max_grad_norm if args.max_grad_norm > 0 else float("inf")), 0
    try:
        model.train()
        for position, group in optimizer_steps(plan_of_epoch, start, total_steps):
            for micro, idx in enumerate(group):
                batch = qa_model.to_device(batching.tensors(features, idx, with_labels=True), rt.device)
                # Gradients are all-reduced once per optimizer step, on its last micro-batch.
                skip_sync = rt.distributed and micro < len(group) - 1
                with ddp.no_sync() if skip_sync else contextlib.nullcontext():
                    with amp_context(args, rt.device):
                        loss = batching.forward(ddp, batch, training=True).loss / accum
                    (opt.scaler.scale(loss) if opt.scaler is not None else loss).backward()
                meter.add(loss.detach(), len(idx), int(lengths[idx].sum()))
            # The step: unscale, clip, finiteness (a NaN update is never applied), step, zero.
            if opt.scaler is not None:
                opt.scaler.unscale_(opt.optimizer)
            # --max_grad_norm 0 means no clipping; the norm is still computed for the finiteness test.
            finite = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(ddp.parameters(), clip)))
            if opt.scaler is not None:
                opt.scaler.step(opt.optimizer)  # skips the update itself when gradients are not finite
                opt.scaler.update()
            elif finite:
                opt.optimizer.step()
            if finite:
                opt.scheduler.step()
            opt.optimizer.zero_grad(set_to_none=True)
            step, nonfinite_run = position["global_step"], 0 if finite else nonfinite_run + 1
            if not finite:
                report_nonfinite(args, meter, opt.scaler, step, nonfinite_run)
            meter.steps += 1
            progress.update(1)
            # Logging, evaluation, saving and the stop signal.
            if step % args.logging_steps == 0:
                log_training(writer, meter, opt.scheduler, step, rt.world_size)
            if eval_data is not None and step % (args.eval_steps or args.logging_steps) == 0:
                write_scalars(writer, "eval", evaluate(args, setup, rt, model, *eval_data, prefix=str(step),
                                                       score=not args.do_predict), step)
                model.train()
            interrupted = stop.agreed(rt)
            if (args.save_steps and step % args.save_steps == 0) or interrupted:
                save_checkpoint(args, setup, rt, model, tokenizer, opt, position, resume_from)
            if interrupted:
                raise TrainingInterrupted(
                    f"signal {stop.signum or 'on another rank'}: stopped at step {step}, checkpoint written to "
                    f"{Path(args.output_dir) / (checkpoints.CHECKPOINT_PREFIX + str(step))}")
    finally:
        stop.restore()
        progress.close()
        close_quietly(writer)
    return position["global_step"]


def wrap_for_processes(model, rt, model_type: str):
    """DDP across processes (the model itself in one process)."""
    if not rt.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
        # XLNet's mask_emb (both heads) and the beam head's unused branches get no gradient.
        find_unused_parameters=model_type in qa_model.BEAM_HEAD_TYPES)


def total_optimizer_steps(args, setup: RunSetup, rt, steps_per_epoch: int, num_features: int) -> int:
    """--max_steps, else --num_train_epochs times the first epoch's steps (packs per epoch vary a little)."""
    if steps_per_epoch == 0:
        raise InputError(f"{setup.train_path}: too few features ({num_features}) for one optimizer step of "
                         f"{args.per_gpu_train_batch_size} x {args.gradient_accumulation_steps} x "
                         f"{rt.world_size} processes")
    total = args.max_steps if args.max_steps > 0 else int(steps_per_epoch * args.num_train_epochs)
    return max(total, 1)


def start_optimization(args, model, rt, total_steps: int) -> Optimization:
    optimizer = build_optimizer(model, args, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type) if args.fp16 else None
    if args.fp16:
        logger.info("--fp16: torch.amp with a gradient scaler (--fp16_opt_level %s is ignored: apex is not used)",
                    args.fp16_opt_level)
    return Optimization(optimizer, build_scheduler(optimizer, args, total_steps), scaler)


def resume(resume_from: Path | None, opt: Optimization, rt) -> dict:
    """The position in the data to continue from, with the optimizer and every rank's random state."""
    if resume_from is None:
        return {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
    state = checkpoints.load_trainer_state(resume_from)
    opt.load(state)
    position = dict(state["position"])
    if not process_group.restore_rng_states(state["rng"], rt):
        logger.warning("checkpoint has RNG states of %d processes, this run has %d: dropout masks will differ "
                       "from an unbroken run", len(state["rng"]), rt.world_size)
    logger.info("resumed from %s at step %d (epoch %d, step %d of the epoch)", resume_from,
                position["global_step"], position["epoch"], position["step_in_epoch"])
    return position


def save_checkpoint(args, setup: RunSetup, rt, model, tokenizer, opt: Optimization, position: dict,
                    protect: Path | None) -> None:
    rng = process_group.gather_rng_states(rt)  # every rank's stream, so each resumes its own dropout masks
    if rt.is_main:
        output_dir = Path(args.output_dir)
        state = {**opt.state(), "rng": rng, "position": position}
        checkpoints.save_checkpoint(output_dir, model, tokenizer, setup.run_args(args), state)
        checkpoints.prune(output_dir, args.save_total_limit, protect)
    process_group.barrier(rt)


def report_nonfinite(args, meter: Meter, scaler, step: int, in_a_row: int) -> None:
    """Count and log a skipped update; after --max_nonfinite_steps in a row, stop (NonFiniteError).

    With --fp16 a few skips are routine: the gradient scaler halves its scale after each overflow.
    """
    meter.skipped += 1
    scale = f"; fp16 loss scale lowered to {scaler.get_scale():g}" if scaler is not None else ""
    logger.warning("step %d: non-finite loss or gradient, update skipped (%d in a row%s)", step, in_a_row, scale)
    if in_a_row >= args.max_nonfinite_steps:
        raise NonFiniteError(f"{in_a_row} consecutive non-finite steps ending at step {step}; "
                             f"last good checkpoint: {checkpoints.last_good(Path(args.output_dir))}")


def start_logs(args, rt, resume_from: Path | None, batching, num_features: int, total_steps: int):
    """Clean the output folder of a killed run's leftovers, say what will run; the TensorBoard writer."""
    logger.info("training: %d features, %d processes x %d per device x %d accumulation, %d optimizer steps%s",
                num_features, rt.world_size, args.per_gpu_train_batch_size, args.gradient_accumulation_steps,
                total_steps, f"; packs of {batching.tokens} tokens" if batching.packed else "")
    if not rt.is_main:
        return None
    checkpoints.clean_output_dir(Path(args.output_dir), resume_from)
    try:
        tensorboard = optional_import("tensorboardX", "TensorBoard logging")
    except UsageError:
        logger.warning("tensorboardX is not installed: no TensorBoard logs (pip install tensorboardX)")
        return None
    return tensorboard.SummaryWriter(logdir=str(Path(args.output_dir) / "runs"))


def write_scalars(writer, tag: str, values: dict, step: int) -> None:
    if writer is None or not values:
        return
    for key, value in values.items():
        if isinstance(value, (int, float)):
            writer.add_scalar(f"{tag}/{key}", value, step)


def log_training(writer, meter: Meter, scheduler, step: int, world_size: int) -> None:
    """Loss, learning rate and throughput since the last log (the only host sync for the loss)."""
    elapsed = max(time.perf_counter() - meter.t0, 1e-9)
    values = {
        "loss": meter.loss.item() / max(meter.steps, 1),
        "lr": scheduler.get_last_lr()[-1],
        "seq_per_s": meter.seqs * world_size / elapsed,
        "tokens_per_s": meter.tokens * world_size / elapsed,
        "skipped_nonfinite": meter.skipped,
    }
    logger.info("step %d: loss %.4f, lr %.3g, %.1f seq/s, %.0f tokens/s%s", step, values["loss"],
                values["lr"], values["seq_per_s"], values["tokens_per_s"],
                f", {values['skipped_nonfinite']} non-finite steps skipped" if values["skipped_nonfinite"] else "")
    write_scalars(writer, "train", values, step)
    meter.loss.zero_()
    meter.steps = meter.seqs = meter.tokens = meter.skipped = 0
    meter.t0 = time.perf_counter()


def close_quietly(writer) -> None:
    """Close the TensorBoard writer; its failure (a full disk) must not hide the error being raised."""
    if writer is None:
        return
    try:
        writer.close()
    except Exception as exc:  # noqa: BLE001 - logs are secondary to the run's own outcome
        logger.warning("could not close the TensorBoard writer: %s", first_line(exc))


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(args, setup: RunSetup, rt, model, examples, features, batching, prefix: str, score: bool = True) -> dict:
    """Distributed inference, then decoding, files and scores on rank 0. Returns the metrics (rank 0)."""
    started = time.perf_counter()
    parts = process_group.gather_to_main(rt, infer(args, rt, model, features, batching))
    results: dict = {}
    if rt.is_main:
        decoding = qa_model.Decoding(args.n_best_size, args.max_answer_length, args.version_2_with_negative,
                                     args.null_score_diff_threshold)
        predictions, nbest, null_odds = batching.head.decode(examples, features, [p for rank in parts for p in rank],
                                                                 decoding)
        with_nulls = args.version_2_with_negative or setup.beam_head
        paths = squad_metrics.write_prediction_files(args.output_dir, prefix, predictions, nbest,
                                                     null_odds if with_nulls else None)
        logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
        if score:
            # The scorer's --na-prob-thresh is the decoding threshold: a question whose null odds exceed
            # it was predicted "" already, so EM/F1 describe exactly the predictions file just written
            # (the official default of 1.0 would blank correct spans when the threshold is above 1).
            results = dict(squad_metrics.squad_evaluate(
                squad_metrics.gold_answers_from_examples(examples), predictions,
                na_probs=null_odds if args.version_2_with_negative else None,
                na_prob_thresh=args.null_score_diff_threshold, version_2=args.version_2_with_negative))
            checkpoints.write_eval_results(Path(args.output_dir), prefix, results)
            logger.info("evaluation %s: %s", prefix, json.dumps(results))
        logger.info("evaluated %d features in %.1f s", len(features), time.perf_counter() - started)
    process_group.barrier(rt)
    return results


def infer(args, rt, model, features, batching) -> list[dict]:
    """The head's arrays for this rank's share of the batches.

    The batches (or packs) are those of one process, dealt out to the ranks, so every feature sees the
    same neighbours and arithmetic whatever the number of processes.
    """
    model.to(rt.device)
    model.eval()
    parts = []
    with torch.inference_mode():
        for idx in batching.plan(features.lengths())[rt.rank::rt.world_size]:
            batch = qa_model.to_device(batching.tensors(features, idx, with_labels=False), rt.device)
            with amp_context(args, rt.device):
                out = batching.forward(model, batch, training=False)
            parts.append(batching.head.arrays(out, batch))
    return parts


if __name__ == "__main__":
    sys.exit(main())
