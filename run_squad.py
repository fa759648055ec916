#!/usr/bin/env python
"""Fine-tune and evaluate transformer encoders for extractive question answering (SQuAD v1.1/v2.0).

The command line of the classic HuggingFace ``run_squad.py`` (same flags, same meaning), rebuilt on
transformers 5: fast-tokenizer features (utils_squad.py), official scoring (squad_metrics.py),
``torch.amp`` mixed precision, ``torchrun`` / Slurm distribution, exact resumption.

This module owns the command line, the device and process group, the training loop, checkpoints
and logging. It holds no data logic: reading and featurization live in utils_squad.py, decoding and
scoring in squad_metrics.py.

Exit codes: 0 success, 2 bad input or flags, 3 interrupted with a checkpoint written, 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.pt"
# Model types whose classic inputs carry no token type ids (the classic script's list).
NO_TOKEN_TYPES = {"xlm", "roberta", "distilbert", "camembert", "bart", "longformer", "xlm-roberta"}
BEAM_HEAD_TYPES = {"xlnet", "xlm"}

logger = logging.getLogger("run_squad")


class UsageError(Exception):
    """A bad flag or flag combination; reported as one line with exit code 2."""


class InputError(Exception):
    """A bad input file or output folder; reported as one line with exit code 2."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was written (exit code 3)."""


class NonFiniteError(Exception):
    """Too many consecutive non-finite losses or gradients."""


class CheckpointWriteError(Exception):
    """A checkpoint or the final model could not be written (disk full, read-only, ...)."""


def write_failure_reason(exc: BaseException) -> str:
    """The OS reason of a failed write, wherever it is buried (torch.save and safetensors wrap it)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return first_line(exc)


# --------------------------------------------------------------------------------------------
# Command line
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

    g = p.add_argument_group("data")
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
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check flag combinations; raises UsageError with one line. Touches no file."""
    parser = build_parser()

    def _error(message: str) -> None:  # argparse would print usage and exit; we want one line
        raise UsageError(message)

    parser.error = _error  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    check_flag_combinations(args)
    return args


def check_flag_combinations(args: argparse.Namespace) -> None:
    """Conflicting or incomplete flags, each with its own message."""
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
    if args.max_seq_length <= args.max_query_length + 3:
        raise UsageError(
            f"--max_seq_length ({args.max_seq_length}) must be larger than --max_query_length "
            f"({args.max_query_length}) + 3 special tokens"
        )
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


def resolve_data_path(data_dir: str | None, name: str | None) -> Path | None:
    """Classic behaviour: --train_file/--predict_file are relative to --data_dir when it is given."""
    if not name:
        return None
    path = Path(name)
    if data_dir and not path.is_absolute():
        path = Path(data_dir) / path
    return path


def evaluating(args: argparse.Namespace) -> bool:
    """--predict_file is read for --do_eval, --do_predict, and (as the classic script did) for
    --evaluate_during_training even without --do_eval."""
    return args.do_eval or args.do_predict or (args.do_train and args.evaluate_during_training)


def check_input_files(args: argparse.Namespace) -> None:
    """Input files exist, checked before any is read (the reader refuses one too large for memory)."""
    for flag, path, wanted in (("--train_file", args.train_path, args.do_train),
                               ("--predict_file", args.predict_path, evaluating(args))):
        if not wanted or path is None:
            continue
        if path.is_dir():
            raise InputError(f"{flag} {path}: is a folder, not a data file")
        if not path.is_file():
            raise InputError(f"{flag} {path}: no such file")


def check_output_dir(args: argparse.Namespace) -> None:
    """--output_dir can be written, and nothing in it is overwritten unless --overwrite_output_dir says so."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir {out}: exists and is not a folder")
    check_writable(out)
    if args.overwrite_output_dir or not out.is_dir():
        return
    resuming = args.resume_from_checkpoint is not None or restarted_by_torchrun()
    if args.do_train and any(out.iterdir()) and not resuming:
        raise InputError(
            f"--output_dir {out}: exists and is not empty; pass --overwrite_output_dir to write into it "
            "(nothing is deleted) or --resume_from_checkpoint latest to continue"
        )
    if not args.do_train:
        for _, prefix in checkpoints_to_evaluate(args):
            existing = out / f"predictions_{prefix}.json"
            if existing.exists():
                raise InputError(f"--output_dir {out}: {existing.name} exists; pass --overwrite_output_dir "
                                 "to replace it, or choose another --output_dir")


def check_writable(folder: Path) -> None:
    """Try a write where the folder is (or would be created): a read-only target fails now, not after
    an hour of featurization. Permission bits alone do not tell (root ignores them)."""
    import tempfile

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


# --------------------------------------------------------------------------------------------
# Processes, devices, logging
# --------------------------------------------------------------------------------------------


@dataclass
class Runtime:
    """Where this process runs: rank, world size and device (derived once from the environment)."""

    rank: int
    world_size: int
    local_rank: int
    device: object  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(args: argparse.Namespace) -> Runtime:
    """torchrun (RANK/WORLD_SIZE/LOCAL_RANK), torch.distributed.launch (--local_rank) or Slurm (srun)."""
    import torch

    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        # srun with one task per GPU: translate Slurm's variables into torch's.
        env.setdefault("RANK", env["SLURM_PROCID"])
        env.setdefault("WORLD_SIZE", env["SLURM_NTASKS"])
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
        env.setdefault("MASTER_PORT", "29500")
        if "MASTER_ADDR" not in env:
            env["MASTER_ADDR"] = first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
    local_rank = int(env.get("LOCAL_RANK", args.local_rank))
    world_size = int(env.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and not args.no_cuda
    if world_size > 1 or local_rank != -1:
        if "RANK" not in env:  # torch.distributed.launch without --use_env
            raise UsageError("--local_rank given but RANK/WORLD_SIZE are not set: start with torchrun")
        if use_cuda:
            torch.cuda.set_device(max(local_rank, 0))
        backend = "nccl" if use_cuda else "gloo"
        store, rank, world_size = process_group_store()
        torch.distributed.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world_size = 0, 1
    if use_cuda:
        device = torch.device("cuda", max(local_rank, 0))
    else:
        device = torch.device("cpu")
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: "gpu[007-010,012],cpu1" -> "gpu007" (zero padding kept)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return nodelist
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def process_group_store():
    """The env:// rendezvous store, its keys prefixed with torchrun's restart count.

    torchrun's static rendezvous (--master_port, the default) keeps one TCPStore across restarts and
    torch adds no per-attempt prefix, so a restarted worker can read a dead peer's address from the
    previous attempt and fail with "Connection refused" (seen under --max-restarts on gloo).
    """
    import torch

    store, rank, world_size = next(torch.distributed.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return torch.distributed.PrefixStore(f"run_squad/attempt-{attempt}/", store), rank, world_size


def setup_logging(args: argparse.Namespace, rank: int) -> None:
    level = logging.DEBUG if args.verbose_logging else logging.INFO
    logging.basicConfig(
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=level if rank == 0 else logging.WARNING,
        force=True,
    )
    # transformers is chatty at INFO about every file it reads.
    logging.getLogger("transformers").setLevel(logging.WARNING)


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        import torch

        torch.distributed.barrier()


def start_debugger(args: argparse.Namespace) -> None:
    """Classic --server_ip/--server_port remote debugging, through debugpy (the successor of ptvsd)."""
    if not (args.server_ip and args.server_port):
        return
    try:
        import debugpy
    except ImportError as exc:
        raise UsageError("--server_ip/--server_port need the debugpy package (pip install debugpy)") from exc
    debugpy.listen((args.server_ip, int(args.server_port)))
    logger.info("Waiting for a debugger to attach on %s:%s", args.server_ip, args.server_port)
    debugpy.wait_for_client()


# --------------------------------------------------------------------------------------------
# Model and tokenizer
# --------------------------------------------------------------------------------------------


def load_config_and_tokenizer(args: argparse.Namespace):
    from transformers import AutoConfig, AutoTokenizer

    common = {"cache_dir": args.cache_dir or None, "trust_remote_code": args.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(args.config_name or args.model_name_or_path, **common)
    except (OSError, ValueError) as exc:
        raise InputError(f"--model_name_or_path {args.model_name_or_path}: cannot load a config ({first_line(exc)})") from exc
    if args.model_type and args.model_type != config.model_type:
        raise UsageError(
            f"--model_type {args.model_type} disagrees with the config of {args.model_name_or_path} "
            f"(model_type {config.model_type})"
        )
    args.model_type = config.model_type
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path, **common)
    except (OSError, ValueError) as exc:
        raise InputError(f"--tokenizer_name {args.tokenizer_name or args.model_name_or_path}: cannot load a tokenizer ({first_line(exc)})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"{args.tokenizer_name or args.model_name_or_path}: a fast tokenizer (tokenizer.json) is required for character offsets")
    import utils_squad

    # Casing through the tokenizer's normalizer, never by lower-casing text: offsets stay exact.
    tokenizer = utils_squad.apply_do_lower_case(tokenizer, args.do_lower_case)
    return config, tokenizer


def uses_beam_head(args: argparse.Namespace) -> bool:
    return args.model_type in BEAM_HEAD_TYPES and not args.simple_span_head


def load_model(args: argparse.Namespace, config, path: str | None = None):
    """The QA model for this config: beam head for XLNet/XLM, relative positions for such BERTs."""
    import torch

    path = path or args.model_name_or_path
    # float32 master weights whatever the checkpoint's dtype: torch.amp computes in half precision.
    kwargs = {"cache_dir": args.cache_dir or None, "trust_remote_code": args.trust_remote_code,
              "dtype": torch.float32}
    try:
        if uses_beam_head(args):
            from transformers import XLMForQuestionAnswering, XLNetForQuestionAnswering

            cls = XLNetForQuestionAnswering if args.model_type == "xlnet" else XLMForQuestionAnswering
            return cls.from_pretrained(path, config=config, **kwargs)
        import modeling_relative

        return modeling_relative.load_question_answering_model(
            path, config=config, attn_implementation=args.attn_implementation, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot load the model ({first_line(exc)})") from exc


def model_inputs(args: argparse.Namespace, batch: dict, training: bool) -> dict:
    """The tensors this model family takes (the classic script's per-type rules)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if args.model_type not in NO_TOKEN_TYPES:
        inputs["token_type_ids"] = batch["token_type_ids"]
    if training:
        inputs["start_positions"] = batch["start_positions"]
        inputs["end_positions"] = batch["end_positions"]
    if uses_beam_head(args):
        inputs["cls_index"] = batch["cls_index"]
        inputs["p_mask"] = batch["p_mask"]
        if training and args.version_2_with_negative:
            inputs["is_impossible"] = batch["is_impossible"]
    if args.model_type == "xlm":
        inputs["langs"] = torch_full_like(batch["input_ids"], args.lang_id)
    return inputs


def torch_full_like(tensor, value):
    import torch

    return torch.full_like(tensor, value)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def context_first(args: argparse.Namespace, tokenizer) -> bool:
    """--context_first, or a tokenizer that pads on the left (XLNet): the classic processor put the
    passage first for those, and XLNet's published SQuAD numbers were trained that way."""
    return bool(args.context_first or getattr(tokenizer, "padding_side", "right") == "left")


def feature_settings(args: argparse.Namespace, tokenizer, is_training: bool):
    import utils_squad

    return utils_squad.FeatureSettings(
        max_seq_length=args.max_seq_length,
        doc_stride=args.doc_stride,
        max_query_length=args.max_query_length,
        context_first=context_first(args, tokenizer),
        is_training=is_training,
    )


def dataset_to_file(args: argparse.Namespace, rt: Runtime, split: str) -> Path:
    """--dataset_name: rank 0 writes the split as HF-layout JSON Lines so the normal reader and cache apply.

    The file goes beside the feature cache, not into --output_dir, which holds only this run's results.
    """
    import squad_metrics

    target = features_cache_dir(args) / "datasets" / f"{Path(args.dataset_name).name}-{split}.jsonl"
    if rt.is_main:
        try:
            import datasets
        except ImportError as exc:
            raise UsageError("--dataset_name needs the optional `datasets` package (pip install datasets)") from exc
        try:
            ds = datasets.load_dataset(args.dataset_name, split=split, cache_dir=args.cache_dir or None)
        except Exception as exc:  # noqa: BLE001 - any loading failure (offline, unknown name) is one line
            raise InputError(f"--dataset_name {args.dataset_name}: cannot load split {split!r} ({first_line(exc)})") from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        fields = ("id", "title", "context", "question", "answers")
        lines = [json.dumps({k: row[k] for k in fields if k in row}, ensure_ascii=False) for row in ds]
        squad_metrics.write_text_atomic(target, "\n".join(lines) + "\n")
    barrier(rt)
    return target


def read_examples(args, path: Path, is_training: bool, require_answers: bool):
    """Read and validate one file (every problem is found here, before any model or feature)."""
    import utils_squad

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


def features_cache_dir(args) -> Path:
    """Features are cached per user, not beside the data: data folders are often shared or read-only.

    Cache names are content and settings hashes, so sweeps with other output folders reuse them safely.
    """
    if args.features_cache_dir:
        return Path(args.features_cache_dir)
    if os.environ.get("RUN_SQUAD_CACHE"):
        return Path(os.environ["RUN_SQUAD_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "run_squad" / "features"


def build_features(args, rt: Runtime, tokenizer, path: Path, examples, is_training: bool):
    """Featurize through the on-disk cache; rank 0 builds it while the other ranks wait."""
    import utils_squad

    cache_dir = features_cache_dir(args)
    if rt.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
    else:
        barrier(rt)
    features = utils_squad.load_or_build_features(
        path, examples, tokenizer, feature_settings(args, tokenizer, is_training), cache_dir=cache_dir,
        overwrite_cache=args.overwrite_cache and rt.is_main, threads=args.threads,
    )
    if rt.is_main:
        barrier(rt)
    logger.info("%s: %d features", path, len(features))
    return features


# --------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------

# Encoder layer i in the naming of every supported family (BERT-likes, XLNet, DistilBERT: layer;
# ALBERT: albert_layer_groups; XLM: attentions/ffns/layer_norm1/layer_norm2).
LAYER_RE = re.compile(r"\.(?:layer|layers|albert_layer_groups|attentions|ffns|layer_norm1|layer_norm2)\.(\d+)\.")
# Below the first layer: embeddings and what only transforms them (ALBERT's and ELECTRA's projections,
# XLNet's mask_emb, XLM's layer_norm_emb, DeBERTa's relative-position table and its encoder.LayerNorm).
EMBEDDING_RE = re.compile(r"embed|_emb\b|_emb\.|\bencoder\.LayerNorm\.")


def decays_weight(name: str) -> bool:
    """The classic rule (no decay on biases and LayerNorm weights), for every family's norm naming."""
    return not (name.endswith("bias") or "norm" in name.lower())


def decay_depths(model) -> int:
    """Distinct layer stacks: ALBERT's layers share the weights of num_hidden_groups groups."""
    config = model.config
    if config.model_type == "albert":
        return int(config.num_hidden_groups)
    return int(getattr(config, "num_hidden_layers", getattr(config, "n_layer", 0)) or 0)


def parameter_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i+1 for encoder layer i, num_layers+1 for everything above (pooler, QA head)."""
    match = LAYER_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    if EMBEDDING_RE.search(name):
        return 0
    return num_layers + 1


def optimizer_groups(model, args: argparse.Namespace) -> list[dict]:
    """No decay on biases and LayerNorm weights; layer-wise LR decay by depth when asked."""
    num_layers = decay_depths(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = parameter_depth(name, num_layers) if args.layerwise_lr_decay < 1.0 else num_layers + 1
        no_decay = not decays_weight(name)
        key = (depth, no_decay)
        if key not in groups:
            scale = args.layerwise_lr_decay ** (num_layers + 1 - depth)
            groups[key] = {
                "params": [], "names": [], "weight_decay": 0.0 if no_decay else args.weight_decay,
                "lr": args.learning_rate * scale, "depth": depth,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model, args: argparse.Namespace, device):
    import torch

    groups = optimizer_groups(model, args)
    for g in groups:
        depth = f" (depth {g['depth']})" if args.layerwise_lr_decay < 1.0 else ""
        logger.info("parameter group%s: lr %.3g, weight decay %g, %d tensors, e.g. %s",
                    depth, g["lr"], g["weight_decay"], len(g["params"]), g["names"][0])
    params = [{k: v for k, v in g.items() if k not in ("names", "depth")} for g in groups]
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, fused=fused)


def build_scheduler(optimizer, args: argparse.Namespace, total_steps: int):
    from transformers import optimization as opt

    warmup = args.warmup_steps or int(math.ceil(args.warmup_ratio * total_steps))
    if args.lr_scheduler_type == "linear":
        return opt.get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if args.lr_scheduler_type == "polynomial":
        return opt.get_polynomial_decay_schedule_with_warmup(
            optimizer, warmup, total_steps, lr_end=args.lr_end, power=args.lr_power)
    if args.lr_scheduler_type == "cosine":
        return opt.get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return opt.get_constant_schedule_with_warmup(optimizer, warmup)


def amp_context(args: argparse.Namespace, device):
    import torch

    if args.fp16:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if args.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints sorted by step as numbers (the classic script sorted them as text)."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir()
             if p.is_dir() and checkpoint_step(p) is not None and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=checkpoint_step)


def restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def resolve_resume(args: argparse.Namespace) -> Path | None:
    """--resume_from_checkpoint PATH|latest; a torchrun restart resumes from the latest by itself."""
    output_dir = Path(args.output_dir)
    wanted = args.resume_from_checkpoint
    if wanted is None and restarted_by_torchrun():
        wanted = "latest"  # a worker was lost and the group restarted: continue, do not start over
    if wanted is None:
        return None
    if wanted == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("no checkpoint in %s yet: starting from the beginning", output_dir)
            return None
        return found[-1]
    path = Path(wanted)
    if not (path / TRAINER_STATE).is_file():
        raise InputError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {TRAINER_STATE})")
    return path


def rng_state() -> dict:
    import torch

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(rt: Runtime) -> list[dict]:
    if not rt.distributed:
        return [rng_state()]
    import torch

    states: list = [None] * rt.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def restore_rng_states(states: list[dict], rt: Runtime) -> None:
    if len(states) != rt.world_size:
        logger.warning("checkpoint has RNG states of %d processes, this run has %d: dropout masks will differ "
                       "from an unbroken run", len(states), rt.world_size)
    set_rng_state(states[rt.rank % len(states)])


TMP_PREFIX = ".tmp-"


def remove_stale_temporaries(output_dir: Path) -> None:
    """Half-written checkpoints and final models of a killed run: never complete, never loaded."""
    for pattern in (f"{TMP_PREFIX}{CHECKPOINT_PREFIX}*", f"{TMP_PREFIX}final-*", f"{TMP_PREFIX}old-*"):
        for tmp in output_dir.glob(pattern):
            shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, final: Path) -> None:
    """Rename a complete folder into place; a folder already there (an earlier run's) is swapped out first."""
    if not final.exists():
        os.replace(new, final)
        return
    old = final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(args, rt: Runtime, model, tokenizer, optimizer, scheduler, scaler, position: dict,
                    protect: Path | None) -> Path | None:
    """Write checkpoint-<step>/ under a temporary name, then rename: a kill never leaves a half one."""
    import torch

    output_dir = Path(args.output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{position['global_step']}"
    rng_states = gather_rng_states(rt)  # every rank's stream, so each resumes its own dropout masks
    if rt.is_main:
        tmp = output_dir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
        try:
            write_model_folder(tmp, args, model, tokenizer)
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_states,
                "position": position,
            }
            with open(tmp / TRAINER_STATE, "wb") as handle:  # a Python file: a failed write keeps its errno
                torch.save(state, handle)
            # A folder of that name is an earlier run's (or an incomplete one): this run's state wins.
            replace_folder(tmp, final)
        except Exception as exc:  # noqa: BLE001 - torch.save raises RuntimeError, safetensors its own type
            raise write_failed(f"checkpoint {final}", tmp, exc) from exc
        logger.info("saved %s", final)
        prune_checkpoints(output_dir, args.save_total_limit, protect)
    barrier(rt)
    return final


def write_model_folder(folder: Path, args, model, tokenizer) -> None:
    """Model (safetensors), tokenizer and the run's flags, into a fresh folder."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    unwrap(model).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "training_args.json").write_text(json.dumps(vars_for_json(args), indent=2, sort_keys=True))


def write_failed(what: str, tmp: Path, exc: BaseException) -> CheckpointWriteError:
    """Drop the half-written folder; the error names what failed, why, and what is still good."""
    shutil.rmtree(tmp, ignore_errors=True)
    last = list_checkpoints(tmp.parent)
    return CheckpointWriteError(f"could not write {what} ({write_failure_reason(exc)}); "
                                f"last good checkpoint: {last[-1] if last else 'none'}")


def prune_checkpoints(output_dir: Path, limit: int, protect: Path | None) -> None:
    """--save_total_limit: keep the newest K; the checkpoint being resumed from is never deleted."""
    if limit <= 0:
        return
    found = list_checkpoints(output_dir)
    for old in found[:-limit]:
        if protect is not None and old.resolve() == protect.resolve():
            continue
        shutil.rmtree(old, ignore_errors=True)
        logger.info("deleted %s (--save_total_limit %d)", old, limit)


def load_trainer_state(path: Path) -> dict:
    import pickle

    import torch

    # weights_only: a checkpoint is data, never code (no arbitrary unpickling).
    try:
        return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path / TRAINER_STATE}: refused to load, it holds more than tensors and plain data "
                         f"({first_line(exc)})") from exc


def vars_for_json(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def save_final_model(args, rt: Runtime, model, tokenizer, global_step: int) -> None:
    """The model and tokenizer in <output_dir> (HuggingFace format), each file renamed into place."""
    if not rt.is_main:
        barrier(rt)
        return
    output_dir = Path(args.output_dir)
    tmp = output_dir / f"{TMP_PREFIX}final-{os.getpid()}"
    try:
        write_model_folder(tmp, args, model, tokenizer)
        (tmp / "training_state.json").write_text(json.dumps({"global_step": global_step}))
    except Exception as exc:  # noqa: BLE001 - as in save_checkpoint
        raise write_failed(f"the final model to {output_dir}", tmp, exc) from exc
    # Every file is complete before the first rename; each rename is atomic.
    for item in tmp.iterdir():
        os.replace(item, output_dir / item.name)
    tmp.rmdir()
    logger.info("saved the final model and tokenizer in %s", output_dir)
    barrier(rt)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes its optimizer step, checkpoints and exits with 3."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def agreed(self, rt: Runtime) -> bool:
        """All ranks stop at the same step when any of them was signalled."""
        local = self.signum is not None
        if not rt.distributed:
            return local
        import torch

        flag = torch.tensor([1.0 if local else 0.0], device=rt.device if rt.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)


@dataclass(frozen=True)
class Batching:
    """How features become model inputs: length-grouped padded batches, or (--packing) packs of a fixed
    number of tokens holding whole features, so no compute goes to padding and shapes never change."""

    batch_size: int
    packed: bool = False
    tokens: int = 0  # tokens per pack
    slots: int = 0  # feature slots per pack
    max_seqlen: int = 0  # longest feature
    position_offset: int = 0  # RoBERTa's positions start after the padding index

    def batches(self, lengths: np.ndarray, seed: int | None = None) -> list[np.ndarray]:
        """Feature indices per batch: shuffled by seed for training, deterministic (sorted) without."""
        import packing
        import utils_squad

        if not self.packed:
            if seed is None:
                return eval_batches(lengths, self.batch_size)
            return utils_squad.length_grouped_batches(lengths, self.batch_size, shuffle=True, seed=seed)
        if seed is None:
            return packing.pack_features(lengths, self.tokens, max_features=self.slots)
        rng = np.random.default_rng(seed)
        packs = packing.pack_features(lengths, self.tokens, max_features=self.slots,
                                      order=rng.permutation(len(lengths)))
        return [packs[i] for i in rng.permutation(len(packs))]  # first-fit fills later packs with leftovers

    def tensors(self, features, idx: np.ndarray, with_labels: bool, device) -> dict:
        import packing
        import utils_squad

        if self.packed:
            batch = packing.make_packed_batch(features, idx, self.tokens, self.slots, self.max_seqlen,
                                              with_labels=with_labels, position_offset=self.position_offset)
        else:
            batch = utils_squad.collate(features, idx, with_labels=with_labels)
        return packing.batch_to_device(batch, device)


def make_batching(args: argparse.Namespace, model, features, batch_size: int) -> Batching:
    """Padded batches, or for --packing a pack size fixed for the whole run from the features' lengths."""
    import packing

    if not args.packing:
        return Batching(batch_size)
    lengths = features.lengths()
    longest = int(lengths.max())
    tokens = args.pack_tokens or max(args.max_seq_length, int(math.ceil(batch_size * lengths.mean() / 64)) * 64)
    return Batching(batch_size, packed=True, tokens=tokens, slots=tokens // int(lengths.min()),
                    max_seqlen=longest, position_offset=packing.position_offset(model))


def check_packing(args: argparse.Namespace, config, model=None) -> None:
    """--packing needs a model whose attention can be swapped for the packed kernels: said before any
    feature is built (from the config), and checked again on the loaded model."""
    import modeling_relative
    import packing

    supported = (config.model_type in packing.SUPPORTED_MODEL_TYPES
                 and not modeling_relative.is_relative_position_config(config)
                 and (model is None or packing.supports_packing(model)))
    if args.packing and not supported:
        raise UsageError(f"--packing supports {', '.join(packing.SUPPORTED_MODEL_TYPES)} with absolute position "
                         f"embeddings, not {config.model_type} "
                         f"({modeling_relative.position_embedding_type(config)}): drop --packing")


def enable_packing(args: argparse.Namespace, model) -> None:
    """--packing: switch the model's attention to the packed kernels."""
    import packing

    if args.packing:
        check_packing(args, model.config, model)
        packing.enable_packed_attention(model, attention_dropout=args.packed_attention_dropout == "on")


def epoch_batches(features, batching: Batching, args: argparse.Namespace, rt: Runtime, epoch: int) -> list[np.ndarray]:
    """This rank's micro-batches for one epoch: a deterministic function of (seed, epoch)."""
    batches = batching.batches(features.lengths(), seed=args.seed + epoch)
    usable = len(batches) - len(batches) % rt.world_size  # every rank takes the same number of steps
    return batches[rt.rank:usable:rt.world_size]


def training_loss(args: argparse.Namespace, model, batch: dict, batching: Batching):
    """Mean start/end cross-entropy of the batch's features (for packs, each over its own tokens only)."""
    import packing

    if batching.packed:
        start, end = packing.packed_forward(model, batch)
        return packing.packed_qa_loss(start, end, batch)
    return model(**model_inputs(args, batch, training=True)).loss


def train(args, rt: Runtime, model, tokenizer, features, resume_from: Path | None, eval_data) -> int:
    """The training loop: one straight line from batches to optimizer steps. Returns the global step."""
    import torch


    model.to(rt.device)
    raw_model = model
    if rt.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            # XLNet's mask_emb (both heads) and the beam head's unused branches get no gradient.
            find_unused_parameters=args.model_type in BEAM_HEAD_TYPES)

    accum = args.gradient_accumulation_steps
    batching = make_batching(args, raw_model, features, args.per_gpu_train_batch_size)
    steps_per_epoch = len(epoch_batches(features, batching, args, rt, 0)) // accum
    if steps_per_epoch == 0:
        raise InputError(f"{args.train_path}: too few features ({len(features)}) for one optimizer step "
                         f"of {args.per_gpu_train_batch_size} x {accum} x {rt.world_size} processes")
    total_steps = args.max_steps if args.max_steps > 0 else int(steps_per_epoch * args.num_train_epochs)
    total_steps = max(total_steps, 1)
    optimizer = build_optimizer(raw_model, args, rt.device)
    scheduler = build_scheduler(optimizer, args, total_steps)
    scaler = torch.amp.GradScaler(rt.device.type) if args.fp16 else None
    if args.fp16:
        logger.info("--fp16: torch.amp with a gradient scaler (--fp16_opt_level %s is ignored: apex is not used)",
                    args.fp16_opt_level)

    position = {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
    if resume_from is not None:
        state = load_trainer_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        position = dict(state["position"])
        restore_rng_states(state["rng"], rt)
        logger.info("resumed from %s at step %d (epoch %d, step %d of the epoch)", resume_from,
                    position["global_step"], position["epoch"], position["step_in_epoch"])

    if rt.is_main:
        remove_stale_temporaries(Path(args.output_dir))
        warn_about_earlier_checkpoints(Path(args.output_dir), resume_from)
    writer = tensorboard_writer(args, rt)
    stop = StopFlag()
    stop.install()
    logger.info("training: %d features, %d processes x %d per device x %d accumulation, %d optimizer steps%s",
                len(features), rt.world_size, args.per_gpu_train_batch_size, accum, total_steps,
                f"; packs of {batching.tokens} tokens" if batching.packed else "")
    global_step = position["global_step"]
    log = {"loss": torch.zeros((), device=rt.device), "steps": 0, "seqs": 0, "tokens": 0, "t0": time.perf_counter()}
    nonfinite_run = 0
    progress = progress_bar(rt, total_steps, global_step)
    lengths = features.lengths()
    try:
        model.train()
        while global_step < total_steps:
            epoch = position["epoch"]
            batches = epoch_batches(features, batching, args, rt, epoch)
            epoch_steps = len(batches) // accum  # packs per epoch vary a little with the shuffle
            first = position["step_in_epoch"] * accum  # skip optimizer steps, not micro-batches
            for micro, idx in enumerate(batches[first:epoch_steps * accum], start=first):
                batch = batching.tensors(features, idx, with_labels=True, device=rt.device)
                last_micro = (micro + 1) % accum == 0
                sync = contextlib.nullcontext() if (last_micro or not rt.distributed) else model.no_sync()
                with sync:
                    with amp_context(args, rt.device):
                        loss = training_loss(args, model, batch, batching) / accum
                    if scaler is not None:
                        scaler.scale(loss).backward()
                    else:
                        loss.backward()
                log["loss"] += loss.detach()
                log["seqs"] += len(idx)
                log["tokens"] += int(lengths[idx].sum())
                if not last_micro:
                    continue
                finite = optimizer_step(args, model, optimizer, scheduler, scaler)
                global_step += 1
                position = {"global_step": global_step, "epoch": epoch, "step_in_epoch": (micro + 1) // accum}
                if position["step_in_epoch"] == epoch_steps:
                    position = {"global_step": global_step, "epoch": epoch + 1, "step_in_epoch": 0}
                nonfinite_run = 0 if finite else nonfinite_run + 1
                if not finite:
                    report_nonfinite(args, log, scaler, global_step, nonfinite_run)
                log["steps"] += 1
                progress.update(1)
                if global_step % args.logging_steps == 0:
                    log_training(args, rt, writer, scheduler, log, global_step)
                eval_every = args.eval_steps or args.logging_steps
                if args.evaluate_during_training and eval_data is not None and global_step % eval_every == 0:
                    results = evaluate(args, rt, raw_model, tokenizer, *eval_data, prefix=str(global_step),
                                       score=scores_predictions(args))
                    write_scalars(writer, "eval", results, global_step)
                    model.train()
                interrupted = stop.agreed(rt)
                if (args.save_steps and global_step % args.save_steps == 0) or interrupted:
                    save_checkpoint(args, rt, model, tokenizer, optimizer, scheduler, scaler, position, resume_from)
                if interrupted:
                    raise TrainingInterrupted(
                        f"signal {stop.signum or 'on another rank'}: stopped at step {global_step}, "
                        f"checkpoint written to {Path(args.output_dir) / (CHECKPOINT_PREFIX + str(global_step))}")
                if global_step >= total_steps:
                    break
            else:
                position = {"global_step": global_step, "epoch": epoch + 1, "step_in_epoch": 0}
    finally:
        stop.restore()
        progress.close()
        close_quietly(writer)
    return global_step


def close_quietly(writer) -> None:
    """Close the TensorBoard writer; its failure (a full disk) must not hide the error being raised."""
    if writer is None:
        return
    try:
        writer.close()
    except Exception as exc:  # noqa: BLE001 - logs are secondary to the run's own outcome
        logger.warning("could not close the TensorBoard writer: %s", first_line(exc))


def warn_about_earlier_checkpoints(output_dir: Path, resume_from: Path | None) -> None:
    """A fresh run in a folder with checkpoints (--overwrite_output_dir) replaces those of the steps it
    saves; the others stay, and `--resume_from_checkpoint latest` or --eval_all_checkpoints would use them."""
    earlier = list_checkpoints(output_dir)
    if resume_from is None and earlier:
        logger.warning("%s already holds %d checkpoints of an earlier run (%s to %s): this run replaces those "
                       "of the steps it saves and leaves the others", output_dir, len(earlier),
                       earlier[0].name, earlier[-1].name)


def report_nonfinite(args, log: dict, scaler, global_step: int, in_a_row: int) -> None:
    """Count and log a skipped update; after --max_nonfinite_steps in a row, stop (NonFiniteError).

    With --fp16 a few skips are routine: the gradient scaler halves its scale after each overflow.
    """
    log["skipped"] = log.get("skipped", 0) + 1
    scale = f"; fp16 loss scale lowered to {scaler.get_scale():g}" if scaler is not None else ""
    logger.warning("step %d: non-finite loss or gradient, update skipped (%d in a row%s)", global_step,
                   in_a_row, scale)
    if in_a_row >= args.max_nonfinite_steps:
        last = list_checkpoints(Path(args.output_dir))
        raise NonFiniteError(f"{in_a_row} consecutive non-finite steps ending at step {global_step}; "
                             f"last good checkpoint: {last[-1] if last else 'none'}")


def optimizer_step(args, model, optimizer, scheduler, scaler) -> bool:
    """Clip, step and schedule; returns False when the update was skipped as non-finite.

    One host synchronisation per optimizer step (the finiteness test) is the price of never applying
    a NaN update; the scaler path does the same test inside GradScaler.step.
    """
    import torch

    if scaler is not None:
        scaler.unscale_(optimizer)
    # --max_grad_norm 0 means no clipping (a limit of 0 would zero every gradient); the norm is
    # still computed for the finiteness test.
    limit = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
    finite = bool(torch.isfinite(norm))
    if scaler is not None:
        scaler.step(optimizer)  # skips the update itself when gradients are not finite
        scaler.update()
    elif finite:
        optimizer.step()
    if finite:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return finite


def progress_bar(rt: Runtime, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", disable=not rt.is_main, dynamic_ncols=True)


def tensorboard_writer(args, rt: Runtime):
    if not rt.is_main:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        logger.warning("tensorboardX is not installed: no TensorBoard logs (pip install tensorboardX)")
        return None
    return SummaryWriter(logdir=str(Path(args.output_dir) / "runs"))


def write_scalars(writer, tag: str, values: dict, step: int) -> None:
    if writer is None or not values:
        return
    for key, value in values.items():
        if isinstance(value, (int, float)):
            writer.add_scalar(f"{tag}/{key}", value, step)


def log_training(args, rt: Runtime, writer, scheduler, log: dict, global_step: int) -> None:
    """Loss, learning rate and throughput since the last log (the only host sync for the loss)."""
    elapsed = max(time.perf_counter() - log["t0"], 1e-9)
    seqs, tokens = log["seqs"] * rt.world_size, log["tokens"] * rt.world_size
    values = {
        "loss": log["loss"].item() / max(log["steps"], 1),
        "lr": scheduler.get_last_lr()[-1],
        "seq_per_s": seqs / elapsed,
        "tokens_per_s": tokens / elapsed,
        "skipped_nonfinite": log.get("skipped", 0),
    }
    logger.info("step %d: loss %.4f, lr %.3g, %.1f seq/s, %.0f tokens/s%s", global_step, values["loss"],
                values["lr"], values["seq_per_s"], values["tokens_per_s"],
                f", {values['skipped_nonfinite']} non-finite steps skipped" if values["skipped_nonfinite"] else "")
    write_scalars(writer, "train", values, global_step)
    log["loss"].zero_()
    log.update(steps=0, seqs=0, tokens=0, t0=time.perf_counter(), skipped=0)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Length-sorted batches: little padding, and the same batches whatever the number of processes."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def run_inference(args, rt: Runtime, model, features) -> dict:
    """Model outputs for this rank's share of the batches, keyed by feature index (unpadded).

    The batches (or packs) are those of one process, dealt out to the ranks, so every feature sees the
    same neighbours and arithmetic whatever the number of processes.
    """
    import torch

    model.to(rt.device)
    model.eval()
    batching = make_batching(args, unwrap(model), features, args.per_gpu_eval_batch_size)
    lengths = features.lengths()
    batches = batching.batches(lengths)[rt.rank::rt.world_size]
    beam = uses_beam_head(args)
    outputs: dict[int, tuple] = {}
    with torch.inference_mode():
        for idx in batches:
            batch = batching.tensors(features, idx, with_labels=False, device=rt.device)
            if batching.packed:
                outputs.update(packed_outputs(args, rt, model, batch, idx, lengths))
                continue
            with amp_context(args, rt.device):
                out = model(**model_inputs(args, batch, training=False))
            left = batch["left_pad"].cpu().numpy()
            if beam:
                arrays = [out.start_top_log_probs, out.start_top_index, out.end_top_log_probs,
                          out.end_top_index, out.cls_logits]
                arrays = [a.float().cpu().numpy() if a.is_floating_point() else a.cpu().numpy() for a in arrays]
                for row, f in enumerate(idx):
                    shift = left[row]
                    outputs[int(f)] = (arrays[0][row], arrays[1][row] - shift, arrays[2][row],
                                       arrays[3][row] - shift, arrays[4][row])
            else:
                start = out.start_logits.float().cpu().numpy()
                end = out.end_logits.float().cpu().numpy()
                for row, f in enumerate(idx):
                    a, n = left[row], lengths[f]
                    outputs[int(f)] = (start[row, a:a + n], end[row, a:a + n])
    return outputs


def packed_outputs(args, rt: Runtime, model, batch: dict, idx: np.ndarray, lengths: np.ndarray) -> dict:
    """Start/end logits of each feature of one pack, cut out of the token stream."""
    import packing

    with amp_context(args, rt.device):
        start, end = packing.packed_forward(model, batch)
    start = start.float().cpu().numpy().reshape(-1)
    end = end.float().cpu().numpy().reshape(-1)
    token_start = batch["token_start"].cpu().numpy()
    outputs = {}
    for slot, f in enumerate(idx):  # make_packed_batch keeps idx's order in the slots
        a, n = token_start[slot], lengths[f]
        outputs[int(f)] = (start[a:a + n], end[a:a + n])
    return outputs


def gather_outputs(rt: Runtime, outputs: dict) -> dict | None:
    """Rank 0 receives every rank's outputs; the others get None."""
    if not rt.distributed:
        return outputs
    import torch

    everything: list = [None] * rt.world_size
    torch.distributed.all_gather_object(everything, outputs)
    if not rt.is_main:
        return None
    merged: dict = {}
    for part in everything:
        merged.update(part)
    return merged


def decode(args, examples, features, outputs: dict):
    """Model outputs (by feature index) -> predictions, n-best lists and null odds."""
    import squad_metrics

    n = len(features)
    if uses_beam_head(args):
        start_lp, start_idx, end_lp, end_idx, cls = (np.stack([outputs[i][k] for i in range(n)]) for k in range(5))
        start_n_top = start_lp.shape[1]
        return squad_metrics.compute_predictions_log_probs(
            examples, features, start_lp, start_idx, end_lp, end_idx, cls,
            n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
            start_n_top=start_n_top, end_n_top=end_lp.shape[1] // start_n_top,
        )
    start = np.concatenate([outputs[i][0] for i in range(n)])
    end = np.concatenate([outputs[i][1] for i in range(n)])
    return squad_metrics.compute_predictions_logits(
        examples, features, start, end, n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length, version_2_with_negative=args.version_2_with_negative,
        null_score_diff_threshold=args.null_score_diff_threshold,
    )


def evaluate(args, rt: Runtime, model, tokenizer, examples, features, prefix: str, score: bool = True) -> dict:
    """Distributed inference, then decoding, files and scores on rank 0. Returns the metrics (rank 0)."""
    import squad_metrics

    started = time.perf_counter()
    outputs = gather_outputs(rt, run_inference(args, rt, model, features))
    results: dict = {}
    if rt.is_main:
        predictions, nbest, null_odds = decode(args, examples, features, outputs)
        with_nulls = args.version_2_with_negative or uses_beam_head(args)
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
            write_eval_results(Path(args.output_dir), prefix, results)
            logger.info("evaluation %s: %s", prefix, json.dumps(results))
        logger.info("evaluated %d features in %.1f s", len(features), time.perf_counter() - started)
    barrier(rt)
    return results


def write_eval_results(output_dir: Path, prefix: str, results: dict) -> None:
    """eval_results.json: every evaluation by step; eval_results.txt: the latest as `key = value`."""
    import squad_metrics

    path = output_dir / "eval_results.json"
    everything = {}
    if path.is_file():
        try:
            everything = json.loads(path.read_text())
            if not isinstance(everything, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError):
            # Never drop earlier results silently: keep the unreadable file beside the new one.
            kept = path.with_name(f"eval_results.unreadable-{int(time.time())}.json")
            os.replace(path, kept)
            logger.warning("%s could not be read; kept as %s, starting a new one", path, kept.name)
            everything = {}
    everything[prefix] = results
    squad_metrics.write_json_atomic(path, everything, indent=2)
    lines = [f"step = {prefix}"] + [f"{k} = {v}" for k, v in results.items()]
    squad_metrics.write_text_atomic(output_dir / "eval_results.txt", "\n".join(lines) + "\n")


def checkpoints_to_evaluate(args) -> list[tuple[str, str]]:
    """(model folder, prefix) pairs, as the classic script chose them; checkpoints sorted by step."""
    output_dir = Path(args.output_dir)
    if args.eval_all_checkpoints:
        pairs = [(str(p), str(checkpoint_step(p))) for p in list_checkpoints(output_dir)]
        if (output_dir / "config.json").is_file():
            pairs.append((str(output_dir), final_prefix(output_dir)))
        return pairs
    folder = output_dir if args.do_train else Path(args.model_name_or_path)
    return [(str(folder), final_prefix(folder))]


def final_prefix(folder: Path) -> str:
    state = folder / "training_state.json"
    if state.is_file():
        try:
            return str(json.loads(state.read_text())["global_step"])
        except (OSError, ValueError, KeyError):
            pass
    step = checkpoint_step(folder)
    return str(step) if step is not None else "final"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def scores_predictions(args: argparse.Namespace) -> bool:
    """Evaluations score against gold answers unless --do_predict says the file has none."""
    return not args.do_predict


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run(args: argparse.Namespace) -> int:
    """file -> examples -> features -> training -> evaluation, in that order."""
    rt = setup_runtime(args)
    setup_logging(args, rt.rank)
    start_debugger(args)
    args.train_path = resolve_data_path(args.data_dir, args.train_file)
    args.predict_path = resolve_data_path(args.data_dir, args.predict_file)
    check_output_dir(args)
    barrier(rt)  # every rank has checked --output_dir before rank 0 writes anything into it
    if args.dataset_name and args.do_train and args.train_path is None:
        args.train_path = dataset_to_file(args, rt, "train")
    if args.dataset_name and evaluating(args) and args.predict_path is None:
        args.predict_path = dataset_to_file(args, rt, "validation")
    check_input_files(args)
    # Every input file is read and validated before any model is loaded or feature computed.
    train_examples = read_examples(args, args.train_path, True, True) if args.do_train else None
    eval_examples = (read_examples(args, args.predict_path, False, scores_predictions(args))
                     if evaluating(args) else None)
    if rt.is_main:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    logger.info("process %d of %d on %s; fp16 %s, bf16 %s", rt.rank, rt.world_size, rt.device, args.fp16, args.bf16)

    config, tokenizer = load_config_and_tokenizer(args)
    check_packing(args, config)
    eval_data = None
    if evaluating(args):
        eval_data = (eval_examples, build_features(args, rt, tokenizer, args.predict_path, eval_examples, False))
    if args.do_train:
        train_features = build_features(args, rt, tokenizer, args.train_path, train_examples, True)
        resume = resolve_resume(args)
        model = load_model(args, config, str(resume) if resume else None)
        enable_packing(args, model)
        global_step = train(args, rt, model, tokenizer, train_features, resume,
                            eval_data if args.evaluate_during_training else None)
        save_final_model(args, rt, model, tokenizer, global_step)

    if args.do_eval or args.do_predict:
        for folder, prefix in checkpoints_to_evaluate(args):
            model = load_model(args, config, folder)
            enable_packing(args, model)
            results = evaluate(args, rt, model, tokenizer, *eval_data, prefix=prefix, score=args.do_eval)
            if rt.is_main and args.do_eval:
                print(json.dumps({"step": prefix, **results}), flush=True)
    if rt.distributed:
        import torch

        torch.distributed.destroy_process_group()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    verbose = "--verbose_logging" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parse_args(argv)
        return run(args)
    except UsageError as exc:
        return report_error(exc, EXIT_USAGE, verbose)
    except TrainingInterrupted as exc:
        return report_error(exc, EXIT_INTERRUPTED, verbose, prefix="interrupted")
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line (traceback with --verbose_logging)
        return report_error(exc, exit_code_for(exc), verbose)


def exit_code_for(exc: BaseException) -> int:
    import squad_metrics
    import utils_squad

    bad_input = (InputError, utils_squad.SquadDataError, squad_metrics.ScoringInputError)
    return EXIT_USAGE if isinstance(exc, bad_input) else EXIT_FAILURE


def report_error(exc: BaseException, code: int, verbose: bool, prefix: str = "error") -> int:
    if verbose:
        import traceback

        traceback.print_exc()
    print(f"{prefix}: {first_line(exc)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
