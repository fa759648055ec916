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
model, its inputs, padded or packed batches, span or beam heads, batches built ahead, the memory probe),
packing.py (packed attention), train_log.py (what training reports, read from the device on logging steps).

Exit codes: 0 success, 2 bad input or flags, 3 interrupted with a checkpoint written, 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
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
torch = transformers = checkpoints = process_group = qa_model = train_log = None

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
    g.add_argument("--packing", action="store_true", help="Pack several features into fixed-size token streams: no compute on padding (BERT incl. relative positions, RoBERTa, XLM-RoBERTa, ELECTRA, ALBERT, DistilBERT, ModernBERT).")
    g.add_argument("--pack_tokens", type=int, default=0, help="With --packing: tokens per pack (default: the batch size times the mean feature length, rounded up to 64).")
    g.add_argument("--packed_attention_dropout", default="on", choices=["on", "off"], help="With --packing: attention dropout while training (off: the faster kernel without dropout).")
    g.add_argument("--length_grouping", default="on", choices=["on", "off"], help="Padded training batches of similar lengths (on: little padding, as HF's --group_by_length; off: random batches, as the classic script).")
    g.add_argument("--torch_compile", action="store_true", help="torch.compile the model for training and evaluation (padded widths rounded to 64).")
    g.add_argument("--torch_compile_backend", default="inductor", help="With --torch_compile: the backend (as HuggingFace's Trainer).")
    g.add_argument("--torch_compile_mode", default=None, help="With --torch_compile: the mode (default, reduce-overhead, max-autotune).")
    g.add_argument("--auto_find_batch_size", action="store_true", help="Before training, halve the per-device batch until its longest batch fits in GPU memory, raising --gradient_accumulation_steps to keep the global batch.")
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
    global torch, transformers, checkpoints, process_group, qa_model, train_log
    import checkpoints, process_group, qa_model, torch, train_log, transformers.optimization  # noqa: E401, I001


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
    print(f"{prefix}: {atomic_io.first_line(exc)}", file=sys.stderr)
    return code


@dataclass(frozen=True)
class RunSetup:
    """What is derived from the flags, the environment and the model's config, once, in run()."""

    train_path: Path | None
    predict_path: Path | None
    model_type: str
    beam_head: bool
    context_first: bool
    source: object  # qa_model.ModelSource

    def run_args(self, args, batches=None) -> dict:
        """The flags as training_args.json records them, with the derived paths and model type, and the
        micro-batches training used (--auto_find_batch_size may have changed them; the global batch is the
        same): passed back as flags, they reproduce the run."""
        derived = {"model_type": self.model_type, "train_path": self.train_path, "predict_path": self.predict_path}
        if batches is not None:
            derived.update(per_gpu_train_batch_size=batches.batch_size, gradient_accumulation_steps=batches.accumulation)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in {**vars(args), **derived}.items()}


def run(args) -> int:
    """file -> examples -> features -> training -> evaluation, in that order."""
    rt = process_group.setup(args.local_rank, args.no_cuda)
    process_group.setup_logging(args.verbose_logging, rt.rank)
    process_group.start_debugger(args.server_ip, args.server_port)
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
        resume = checkpoints.resolve_resume(Path(args.output_dir), args.resume_from_checkpoint
                                            or ("latest" if process_group.restarted_by_torchrun() else None))
        model = load_model(args, setup, config, str(resume) if resume else args.model_name_or_path)
        batches = train_batches(args, rt, model, head, config, features, resume)
        summary = train(args, setup, rt, model, tokenizer, features, batches, resume,
                        eval_data if args.evaluate_during_training else None)
        if rt.is_main:
            checkpoints.save_final_model(Path(args.output_dir), model, tokenizer, setup.run_args(args, batches),
                                         summary["global_step"])
        process_group.barrier(rt)
    if args.do_eval or args.do_predict:
        for folder, prefix in checkpoints.models_to_evaluate(Path(args.output_dir), args.eval_all_checkpoints,
                                                             args.do_train, args.model_name_or_path):
            model = load_model(args, setup, config, folder, evaluation=rt.device)
            results = evaluate(args, setup, rt, model, *eval_data, prefix=prefix, score=args.do_eval,
                               model_folder=folder)
            if rt.is_main and args.do_eval:
                print(json.dumps({"step": prefix, **results}), flush=True)
    process_group.shutdown(rt)
    return EXIT_OK


def check_output_dir(args) -> None:
    """--output_dir can be written, and nothing in it is overwritten unless --overwrite_output_dir says so."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir {out}: exists and is not a folder")
    try:
        atomic_io.check_writable(out)
    except OSError as exc:
        raise InputError(f"--output_dir {out}: cannot write there ({exc.strerror or exc})") from exc
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
            path = dataset_file(args, rt, split)
        if wanted and path is not None and path.is_dir():
            raise InputError(f"{flag} {path}: is a folder, not a data file")
        if wanted and path is not None and not path.is_file():
            raise InputError(f"{flag} {path}: no such file")
        paths.append(path)
    return paths[0], paths[1]


def dataset_file(args, rt, split: str) -> Path:
    """--dataset_name: rank 0 writes the split as JSON Lines beside the feature cache (not into --output_dir,
    which holds only this run's results), so the normal reader and cache apply."""
    cache = utils_squad.features_cache_dir(args.features_cache_dir)
    target = cache / "datasets" / f"{Path(args.dataset_name).name}-{split}.jsonl"
    if rt.is_main:
        utils_squad.dataset_to_jsonl(args.dataset_name, split, target, args.cache_dir or None)
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
    cache_dir = utils_squad.features_cache_dir(args.features_cache_dir)
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
                                  version_2=args.version_2_with_negative, lang_id=args.lang_id,
                                  compiled=args.torch_compile, grouped=args.length_grouping == "on")


def load_model(args, setup: RunSetup, config, path: str, evaluation=None):
    """The model, packed and compiled as asked. A model loaded only to evaluate on a GPU (``evaluation``
    is its device) gets --bf16/--fp16 weights: half the memory and no autocast casts."""
    half = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    dtype = half if half is not None and evaluation is not None and evaluation.type == "cuda" else torch.float32
    model = qa_model.load_model(path, config, setup.source, setup.beam_head, args.attn_implementation, dtype)
    if args.packing:
        qa_model.enable_packing(model, attention_dropout=args.packed_attention_dropout == "on")
    if args.torch_compile:
        # In place: parameters, state_dict and save_pretrained stay those of the model.
        model.compile(backend=args.torch_compile_backend, mode=args.torch_compile_mode)
    return model


def train_batches(args, rt, model, head, config, features, resume: Path | None) -> TrainBatches:
    """The flags' micro-batches, or with --auto_find_batch_size the largest that fits (a resumed run keeps
    its checkpoint's: the data plan must not change under it)."""
    size, accum = args.per_gpu_train_batch_size, args.gradient_accumulation_steps
    if args.auto_find_batch_size and resume is not None:
        saved = json.loads((resume / checkpoints.TRAINING_ARGS).read_text())
        size, accum = saved["per_gpu_train_batch_size"], saved["gradient_accumulation_steps"]
    elif args.auto_find_batch_size:
        def fits(batch_size: int) -> bool:
            batching = make_batching(args, head, config, features, batch_size)
            return qa_model.probe_memory(model.to(rt.device), batching, features, rt.device,
                                         amp_context(args, rt.device), extra_copies=int(rt.distributed))
        size, accum = qa_model.find_batch_size(fits, size, accum, rt.distributed and rt.cpu_group)
        if size == 0:
            raise OutOfMemory(f"out of GPU memory with one feature per device of up to --max_seq_length "
                              f"{args.max_seq_length} tokens: shorten --max_seq_length or use a bigger GPU")
    return TrainBatches(size, accum, make_batching(args, head, config, features, size))


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


@dataclass(frozen=True)
class TrainBatches:
    """Micro-batches per device and per optimizer step: the flags', a resumed checkpoint's, or what
    --auto_find_batch_size found (the same global batch either way), and the batching built for them."""

    batch_size: int
    accumulation: int
    batching: object

    def describe(self, max_seq_length: int) -> str:
        if self.batching.packed:
            return f"packs of {self.batching.tokens} tokens (--per_gpu_train_batch_size {self.batch_size})"
        return f"--per_gpu_train_batch_size {self.batch_size} and --max_seq_length {max_seq_length}"


def train(args, setup: RunSetup, rt, model, tokenizer, features, batches: TrainBatches, resume_from: Path | None,
          eval_data) -> dict:
    """The training loop: optimizer steps, each over its micro-batches, then step, then log / evaluate /
    save / stop. No host synchronisation inside a step: what the host must read waits for those steps.
    Returns the summary (wall time, sequences/s, real tokens/s, peak GPU memory, the last step)."""
    ddp, accum, batching = wrap_for_processes(model, rt, setup), batches.accumulation, batches.batching
    total_steps, prefetch = plan_steps(args, setup, rt, features, batches)
    opt = start_optimization(args, model, rt, total_steps)
    position = start = resume(resume_from, opt, rt)
    writer, stop, meter, progress = start_logs(args, rt, resume_from, batches, len(features), start, total_steps)
    steps = prefetch(start)
    clip = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")  # 0: no clipping
    try:
        model.train()
        for position, group in steps:
            for micro, (batch, seqs, tokens) in enumerate(group):
                batch = qa_model.to_device(batch, rt.device)
                # Gradients are all-reduced once per optimizer step, on its last micro-batch.
                with ddp.no_sync() if rt.distributed and micro < len(group) - 1 else contextlib.nullcontext():
                    with amp_context(args, rt.device):
                        loss = batching.forward(ddp, batch, training=True).loss / accum
                    (opt.scaler.scale(loss) if opt.scaler is not None else loss).backward()
                meter.add(loss.detach(), seqs, tokens)
            # The step: unscale, clip, finiteness, step, zero. A non-finite gradient skips the update on the
            # device: the fused AdamW kernel takes found_inf (from the scaler with --fp16), so nothing waits.
            if opt.scaler is not None:
                opt.scaler.unscale_(opt.optimizer)
            skipped = ~torch.isfinite(torch.nn.utils.clip_grad_norm_(ddp.parameters(), clip))
            if opt.scaler is not None:
                opt.scaler.step(opt.optimizer)
                opt.scaler.update()
            else:
                opt.optimizer.found_inf = skipped.float()
                opt.optimizer.step()
            opt.scheduler.step()
            opt.optimizer.zero_grad(set_to_none=True)
            step = position["global_step"]
            meter.end_step(step, skipped, opt.scaler)
            progress.update(1)
            if step == start["global_step"] + 1 and args.torch_compile:
                log_first_step(rt, meter)
            # Logging, evaluation, saving and the stop signal: the steps where the host reads the device.
            log_now, interrupted = step % args.logging_steps == 0, stop.agreed()
            eval_now = eval_data is not None and step % (args.eval_steps or args.logging_steps) == 0 and not interrupted
            save_now = (args.save_steps and step % args.save_steps == 0) or interrupted
            if log_now or eval_now or save_now:
                check_skips(args, meter)
            if log_now:
                meter.log(writer, opt.scheduler, step)
            if save_now:
                save_checkpoint(args, setup, rt, model, tokenizer, opt, position, resume_from, batches)
            if eval_now:  # after saving: the tuned threshold goes into that checkpoint
                evaluate_during_training(args, setup, rt, model, eval_data, step, bool(save_now), writer)
            if save_now or eval_now:
                meter.t0 = time.perf_counter()  # the next window's throughput is the training's own
            if interrupted:
                raise TrainingInterrupted(
                    f"signal {stop.signum or 'on another rank'}: stopped at step {step}, checkpoint written to "
                    f"{Path(args.output_dir) / (checkpoints.CHECKPOINT_PREFIX + str(step))}")
        check_skips(args, meter)
    except torch.cuda.OutOfMemoryError as exc:
        failing = position["global_step"] + (position is start)  # the loop's position is the step it computes
        raise OutOfMemory(out_of_memory_advice(args, batches, failing)) from exc
    finally:
        for closing in (steps.close, stop.restore, progress.close):
            closing()
        train_log.close_quietly(writer)
    return {**meter.summary(position["global_step"] - start["global_step"]), "global_step": position["global_step"],
            "last_window": meter.last_window}


def evaluate_during_training(args, setup: RunSetup, rt, model, eval_data, step: int, saved: bool, writer) -> None:
    folder = Path(args.output_dir) / f"{checkpoints.CHECKPOINT_PREFIX}{step}"
    results = evaluate(args, setup, rt, model, *eval_data, prefix=str(step), score=not args.do_predict,
                       model_folder=str(folder) if saved else None)
    train_log.write_scalars(writer, "eval", results, step)
    model.train()


class OutOfMemory(Exception):
    """The GPU ran out of memory (one line, with the flags that keep the same global batch)."""


def out_of_memory_advice(args, batches: TrainBatches, step: int) -> str:
    smaller = qa_model.smaller_batch(batches.batch_size)
    advice = ("shorten --max_seq_length or use a bigger GPU" if smaller == batches.batch_size else
              f"keep the same global batch with --per_gpu_train_batch_size {smaller} --gradient_accumulation_steps "
              f"{batches.accumulation * batches.batch_size // smaller}, or let --auto_find_batch_size find it")
    return f"out of GPU memory at step {step} with {batches.describe(args.max_seq_length)}: {advice}"


def plan_steps(args, setup: RunSetup, rt, features, batches: TrainBatches):
    """The number of optimizer steps, and a function giving those from a position on, their batches built
    (and on a GPU pinned, for a non-blocking copy) in a background thread while the steps before run."""
    lengths, batching = features.lengths(), batches.batching

    def plan_of_epoch(epoch: int) -> list[list]:
        return epoch_plan(batching, lengths, args.seed + epoch, rt.rank, rt.world_size, batches.accumulation)

    def build(job):
        position, group = job
        return position, [(qa_model.pinned(batching.tensors(features, idx, with_labels=True), rt.device), len(idx),
                           int(lengths[idx].sum())) for idx in group]

    total = total_optimizer_steps(args, setup, rt, len(plan_of_epoch(0)), len(features), batches)
    return total, lambda start: qa_model.Prefetcher(optimizer_steps(plan_of_epoch, start, total), build)


def wrap_for_processes(model, rt, setup: RunSetup):
    """DDP across processes (the model itself in one process)."""
    model.to(rt.device)
    if not rt.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
        # XLNet's mask_emb (both heads) and the beam head's unused branches get no gradient.
        find_unused_parameters=setup.model_type in qa_model.BEAM_HEAD_TYPES)


def total_optimizer_steps(args, setup: RunSetup, rt, steps_per_epoch: int, num_features: int,
                          batches: TrainBatches) -> int:
    """--max_steps, else --num_train_epochs times the first epoch's steps (packs per epoch vary a little)."""
    if steps_per_epoch == 0:
        raise InputError(f"{setup.train_path}: too few features ({num_features}) for one optimizer step of "
                         f"{batches.batch_size} x {batches.accumulation} x {rt.world_size} processes")
    total = args.max_steps if args.max_steps > 0 else int(steps_per_epoch * args.num_train_epochs)
    return max(total, 1)


def build_optimizer(model, args, device):
    """AdamW, fused: one kernel for the whole update, which also skips it on the device when told found_inf."""
    groups = qa_model.parameter_groups(model, args.learning_rate, args.weight_decay, args.layerwise_lr_decay)
    for g in groups:
        depth = f" (depth {g['depth']})" if args.layerwise_lr_decay < 1.0 else ""
        logger.info("parameter group%s: lr %.3g, weight decay %g, %d tensors, e.g. %s",
                    depth, g["lr"], g["weight_decay"], len(g["params"]), g["names"][0])
    params = [{k: v for k, v in g.items() if k not in ("names", "depth")} for g in groups]
    return torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, fused=True)


def build_scheduler(optimizer, args, total_steps: int):
    """The learning rate as a function of the optimizer step (skipped updates count as steps)."""
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
                    protect: Path | None, batches: TrainBatches) -> None:
    rng = process_group.gather_rng_states(rt)  # every rank's stream, so each resumes its own dropout masks
    if rt.is_main:
        output_dir = Path(args.output_dir)
        state = {**opt.state(), "rng": rng, "position": position}
        checkpoints.save_checkpoint(output_dir, model, tokenizer, setup.run_args(args, batches), state)
        checkpoints.prune(output_dir, args.save_total_limit, protect, position["global_step"])
    process_group.barrier(rt)


def check_skips(args, meter) -> None:
    """Log the updates skipped as non-finite; after --max_nonfinite_steps in a row, stop (NonFiniteError).

    With --fp16 a few skips are routine: the gradient scaler halves its scale after each overflow.
    """
    limit = meter.skips(args.max_nonfinite_steps)
    if limit is not None:
        raise NonFiniteError(f"{limit[1]} consecutive non-finite steps ending at step {limit[0]}; "
                             f"last good checkpoint: {checkpoints.last_good(Path(args.output_dir))}")


def log_first_step(rt, meter) -> None:
    """--torch_compile: the first step's time, compilation included (read once: one host sync)."""
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    logger.info("torch.compile: the first optimizer step took %.1f s (compilation included)",
                time.perf_counter() - meter.start)


def start_logs(args, rt, resume_from: Path | None, batches: TrainBatches, num_features: int, start: dict,
               total_steps: int):
    """Clean the output folder of a killed run's leftovers and say what will run. Returns the TensorBoard
    writer, the stop flag (installed), the meter and the progress bar."""
    logger.info("training: %d features, %d processes x %d per device x %d accumulation, %d optimizer steps%s",
                num_features, rt.world_size, batches.batch_size, batches.accumulation, total_steps,
                f"; packs of {batches.batching.tokens} tokens" if batches.batching.packed else "")
    writer = None
    if rt.is_main:
        checkpoints.clean_output_dir(Path(args.output_dir), resume_from)
        writer = train_log.open_tensorboard(args.output_dir)
    stop = process_group.StopFlag(rt)
    stop.install()
    progress = tqdm(total=total_steps, initial=start["global_step"], desc="train", disable=not rt.is_main,
                    dynamic_ncols=True)
    return writer, stop, train_log.Meter(rt.device, rt.world_size), progress


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(args, setup: RunSetup, rt, model, examples, features, batching, prefix: str, score: bool = True,
             model_folder: str | None = None) -> dict:
    """Distributed inference, then decoding, files and scores on rank 0. Returns the metrics (rank 0).

    SQuAD 2.0: the decoder gives every question's best span and its null odds; the predictions file is
    those spans at --null_score_diff_threshold, and EM/F1/HasAns/NoAns score exactly that file, while the
    best_* sweep runs over the spans themselves (a threshold already applied would hide spans from it).
    The tuned threshold is written into the evaluated model folder, and with matplotlib the sweep and the
    official precision-recall curves into no_answer_<step>.png.
    """
    started = time.perf_counter()
    parts = process_group.gather_to_main(rt, infer(args, rt, model, features, batching))
    results: dict = {}
    if rt.is_main:
        inferred, v2, threshold = time.perf_counter(), args.version_2_with_negative, args.null_score_diff_threshold
        decoding = qa_model.Decoding(args.n_best_size, args.max_answer_length, v2, math.inf)
        spans, nbest, null_odds = batching.head.decode(examples, features, parts, decoding)
        predictions = squad_metrics.apply_null_threshold(spans, null_odds, threshold) if v2 and not setup.beam_head else spans
        logger.info("inference on %d features: %.1f s; decoding %d questions: %.2f s", len(features),
                    inferred - started, len(examples), time.perf_counter() - inferred)
        paths = squad_metrics.write_prediction_files(args.output_dir, prefix, predictions, nbest,
                                                     null_odds if v2 or setup.beam_head else None)
        logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
        if score:
            results = score_predictions(args, examples, predictions, spans, null_odds, prefix)
            if v2 and model_folder is not None:
                checkpoints.write_threshold(Path(model_folder), results, prefix, setup.predict_path, {
                    name: getattr(args, name) for name in ("n_best_size", "max_answer_length", "max_seq_length",
                                                           "doc_stride", "max_query_length")})
        logger.info("evaluated %d features in %.1f s", len(features), time.perf_counter() - started)
    process_group.barrier(rt)
    return results


def score_predictions(args, examples, predictions, spans, null_odds, prefix: str) -> dict:
    """Official scores of the predictions file; for SQuAD 2.0 the sweep over the spans, and plots."""
    gold, v2 = squad_metrics.gold_answers_from_examples(examples), args.version_2_with_negative
    # The scorer's --na-prob-thresh is the decoding threshold: a question whose null odds exceed it was
    # predicted "" already, so EM/F1 describe exactly the predictions file just written (the official
    # default of 1.0 would blank correct spans when the threshold is above 1).
    results = dict(squad_metrics.squad_evaluate(
        gold, predictions, na_probs=null_odds if v2 else None, na_prob_thresh=args.null_score_diff_threshold,
        version_2=v2, sweep_preds=spans if v2 else None))
    if v2 and squad_metrics.plots_available():
        squad_metrics.plot_no_answer(gold, spans, null_odds, args.null_score_diff_threshold,
                                     str(Path(args.output_dir) / f"no_answer_{prefix}.png"))
    checkpoints.write_eval_results(Path(args.output_dir), prefix, results)
    logger.info("evaluation %s: %s", prefix, json.dumps(results))
    return results


def infer(args, rt, model, features, batching) -> dict:
    """The head's arrays for this rank's share of the batches, copied to the host once at the end.

    The batches (or packs) are those of one process, dealt out to the ranks, so every feature sees the
    same neighbours and arithmetic whatever the number of processes. Float32 weights (the training model)
    compute under --bf16/--fp16 autocast; a model loaded for evaluation on a GPU has half-precision weights.
    """
    model.to(rt.device)
    model.eval()
    weights = next(model.parameters()).dtype
    amp = amp_context(args, rt.device) if weights == torch.float32 else contextlib.nullcontext()
    batches = qa_model.Prefetcher(batching.plan(features.lengths())[rt.rank::rt.world_size],
                                  lambda idx: qa_model.pinned(batching.tensors(features, idx, with_labels=False), rt.device))
    outputs = []
    try:
        with torch.inference_mode():
            for batch in batches:
                batch = qa_model.to_device(batch, rt.device)
                with amp:
                    outputs.append(batching.head.outputs(batching.forward(model, batch, training=False), batch))
        return batching.head.collect(outputs)
    except torch.cuda.OutOfMemoryError as exc:
        raise OutOfMemory(f"out of GPU memory evaluating with --per_gpu_eval_batch_size {batching.batch_size}: "
                          f"pass --per_gpu_eval_batch_size {max(1, batching.batch_size // 2)}") from exc
    finally:
        batches.close()


if __name__ == "__main__":
    sys.exit(main())
