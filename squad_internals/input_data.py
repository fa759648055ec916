"""The run's input data: which files (--train_file / --predict_file, or --dataset_name's splits written as
JSON Lines), their questions read and validated, and their features built through the on-disk cache, rank 0
first while the other ranks wait.

Why a module of its own: utils_squad.py reads, validates and featurizes one file for anyone (qa_pipeline
too); what the command line adds around it (which file a flag names, a question without answers to score
against, the cache shared by the ranks) is one concern, kept out of run_squad.py's story.
"""

from __future__ import annotations

import logging
from pathlib import Path

import utils_squad
from squad_internals import cli, process_group
from squad_internals.cli import InputError

# Its lines are the command line's own report (each file's questions, repairs and skips): the command line's
# logger, not this module's name.
logger = logging.getLogger("run_squad")


def data_paths(args, rt) -> tuple[Path | None, Path | None]:
    """--train_file/--predict_file (checked by cli.py) or --dataset_name's splits."""
    train = cli.data_file(args, "--train_file")
    if train is None and args.dataset_name and args.do_train:
        train = dataset_file(args, rt, "train")
    predict = cli.data_file(args, "--predict_file")
    if predict is None and args.dataset_name and cli.evaluating(args):
        predict = dataset_file(args, rt, "validation")
    return train, predict


def dataset_file(args, rt, split: str) -> Path:
    """--dataset_name: rank 0 writes the split as JSON Lines beside the feature cache (not into --output_dir,
    which holds only this run's results), so the normal reader and cache apply."""
    cache = utils_squad.features_cache_dir(args.features_cache_dir)
    target = cache / "datasets" / f"{Path(args.dataset_name).name}-{split}.jsonl"
    if rt.is_main:
        utils_squad.dataset_to_jsonl(args.dataset_name, split, target, args.cache_dir or None)
    process_group.barrier(rt)
    return target


def read_examples(path: Path, args, is_training: bool, require_answers: bool):
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


def build_features(args, rt, tokenizer, path: Path, examples, context_first: bool, is_training: bool):
    """Featurize through the on-disk cache; rank 0 builds it while the other ranks wait."""
    cache_dir = utils_squad.features_cache_dir(args.features_cache_dir)  # created, or done without, there
    if not rt.is_main:
        process_group.barrier(rt)
    features = utils_squad.load_or_build_features(
        path, examples, tokenizer, feature_settings(args, context_first, is_training), cache_dir=cache_dir,
        overwrite_cache=args.overwrite_cache and rt.is_main, threads=args.threads,
    )
    if rt.is_main:
        process_group.barrier(rt)
    return features

