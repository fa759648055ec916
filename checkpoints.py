"""Checkpoints and the other folders a run leaves: list, resolve, save, load, prune, the final model and
eval_results.json.

Why a module of its own: what is on disk must survive any kill and be found again by a later run
(``--resume_from_checkpoint latest``, ``--eval_all_checkpoints``, a torchrun restart). This module knows the
layout of --output_dir; run_squad.py decides when to save and which rank does it. Every write goes
through atomic_io, so a folder is either complete under its final name or absent.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
import time
from pathlib import Path

import torch

import atomic_io

logger = logging.getLogger("run_squad")

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.pt"  # optimizer, scheduler, scaler, RNG states, position in the data
TRAINING_ARGS = "training_args.json"
TRAINING_STATE = "training_state.json"  # the optimizer step of the final model
EVAL_RESULTS = "eval_results.json"
FINAL_MODEL_TMP = "final-model"
THRESHOLD_FILE = "null_score_diff_threshold.json"  # the tuned no-answer threshold of a model folder
# What run_squad writes into --output_dir, whose temporaries a killed run may leave behind.
OUTPUT_GLOBS = (f"{CHECKPOINT_PREFIX}*", FINAL_MODEL_TMP, "*.json", "*.txt", "*.png")


class CheckpointInputError(ValueError):
    """A checkpoint that cannot be resumed from (a usage error: exit code 2)."""


class CheckpointWriteError(Exception):
    """A checkpoint or the final model could not be written (disk full, read-only, ...)."""


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


def last_good(output_dir: Path) -> str:
    found = list_checkpoints(output_dir)
    return str(found[-1]) if found else "none"


def resolve_resume(output_dir: Path, wanted: str | None) -> Path | None:
    """--resume_from_checkpoint PATH|latest (None: start from the beginning)."""
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
        raise CheckpointInputError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {TRAINER_STATE})")
    return path


def load_trainer_state(path: Path) -> dict:
    # weights_only: a checkpoint is data, never code (no arbitrary unpickling).
    try:
        return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointInputError(f"{path / TRAINER_STATE}: refused to load, it holds more than tensors and plain "
                                   f"data ({atomic_io.first_line(exc)})") from exc


def write_failure_reason(exc: BaseException) -> str:
    """The OS reason of a failed write, wherever it is buried (torch.save and safetensors wrap it)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return atomic_io.first_line(exc)


def write_model_folder(folder: Path, model, tokenizer, run_args: dict) -> None:
    """Model (safetensors), tokenizer and the run's flags, into an empty folder."""
    getattr(model, "module", model).save_pretrained(folder, safe_serialization=True)  # DDP wraps the model
    tokenizer.save_pretrained(folder)
    (folder / TRAINING_ARGS).write_text(json.dumps(run_args, indent=2, sort_keys=True))


def save_checkpoint(output_dir: Path, model, tokenizer, run_args: dict, state: dict) -> Path:
    """checkpoint-<step>/ with the model and trainer_state.pt, complete or absent (a kill never leaves half).

    A folder of that name is an earlier run's (or an incomplete one): this run's state replaces it.
    """
    final = output_dir / f"{CHECKPOINT_PREFIX}{state['position']['global_step']}"
    try:
        with atomic_io.folder_atomic(final) as tmp:
            write_model_folder(tmp, model, tokenizer, run_args)
            with open(tmp / TRAINER_STATE, "wb") as handle:  # a Python file: a failed write keeps its errno
                torch.save(state, handle)
    except Exception as exc:  # noqa: BLE001 - torch.save raises RuntimeError, safetensors its own type
        raise CheckpointWriteError(f"could not write checkpoint {final} ({write_failure_reason(exc)}); "
                                   f"last good checkpoint: {last_good(output_dir)}") from exc
    logger.info("saved %s", final)
    return final


def save_final_model(output_dir: Path, model, tokenizer, run_args: dict, global_step: int) -> None:
    """The model and tokenizer in <output_dir> (HuggingFace layout), each file renamed into place."""
    # The threshold tuned for the model this one replaces must never meet the new weights: it is moved
    # aside before they arrive, put back if they do not, and deleted once they have.
    stale, aside = output_dir / THRESHOLD_FILE, atomic_io.temporary_path(output_dir / THRESHOLD_FILE)
    if stale.is_file():
        stale.replace(aside)
    try:
        with atomic_io.files_atomic(output_dir, FINAL_MODEL_TMP) as tmp:
            write_model_folder(tmp, model, tokenizer, run_args)
            (tmp / TRAINING_STATE).write_text(json.dumps({"global_step": global_step}))
    except Exception as exc:  # noqa: BLE001 - as in save_checkpoint
        if aside.is_file():
            aside.replace(stale)
        raise CheckpointWriteError(f"could not write the final model to {output_dir} ({write_failure_reason(exc)}); "
                                   f"last good checkpoint: {last_good(output_dir)}") from exc
    if aside.is_file():
        aside.unlink()
        logger.info("removed %s, tuned for the model this run replaced", stale)
    logger.info("saved the final model and tokenizer in %s", output_dir)


def prune(output_dir: Path, limit: int, protect: Path | None, step: int) -> None:
    """--save_total_limit: keep the newest K up to this step; the checkpoint being resumed from is never
    deleted, nor one of a later step (an earlier run's, left in the folder: it never pushes out this run's)."""
    if limit <= 0:
        return
    for old in [c for c in list_checkpoints(output_dir) if checkpoint_step(c) <= step][:-limit]:
        if protect is not None and old.resolve() == protect.resolve():
            continue
        shutil.rmtree(old, ignore_errors=True)
        logger.info("deleted %s (--save_total_limit %d)", old, limit)


def clean_output_dir(output_dir: Path, resume_from: Path | None) -> None:
    """At the start of training: drop a killed run's temporaries, name an earlier run's checkpoints.

    The output folder belongs to this run (it was refused unless empty, resumed or overwritten on purpose),
    so every temporary in it is a leftover. A fresh run replaces the checkpoints of the steps it saves;
    the others stay, and `--resume_from_checkpoint latest` or --eval_all_checkpoints would use them.
    """
    for pattern in OUTPUT_GLOBS:
        atomic_io.remove_stale_temporaries(output_dir, pattern, owned=True)
    earlier = list_checkpoints(output_dir)
    if resume_from is None and earlier:
        logger.warning("%s already holds %d checkpoints of an earlier run (%s to %s): this run replaces those "
                       "of the steps it saves and leaves the others", output_dir, len(earlier),
                       earlier[0].name, earlier[-1].name)


def final_prefix(folder: Path) -> str:
    """The <step> of a model folder's evaluation files: its training step, else `final`."""
    state = folder / TRAINING_STATE
    if state.is_file():
        try:
            return str(json.loads(state.read_text())["global_step"])
        except (OSError, ValueError, KeyError):
            pass
    step = checkpoint_step(folder)
    return str(step) if step is not None else "final"


def models_to_evaluate(output_dir: Path, all_checkpoints: bool, trained: bool, model_path: str) -> list[tuple[str, str]]:
    """(model folder, prefix) pairs, as the classic script chose them; checkpoints sorted by step."""
    if all_checkpoints:
        pairs = [(str(p), str(checkpoint_step(p))) for p in list_checkpoints(output_dir)]
        if (output_dir / "config.json").is_file():
            pairs.append((str(output_dir), final_prefix(output_dir)))
        return pairs
    folder = output_dir if trained else Path(model_path)
    return [(str(folder), final_prefix(folder))]


def write_eval_results(output_dir: Path, prefix: str, results: dict) -> None:
    """eval_results.json: every evaluation by step; eval_results.txt: the latest as `key = value`."""
    path = output_dir / EVAL_RESULTS
    everything = {}
    if path.is_file():
        try:
            everything = json.loads(path.read_text())
            if not isinstance(everything, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError):
            # Never drop earlier results silently: keep the unreadable file beside the new one.
            kept = atomic_io.move_aside(path, f"eval_results.unreadable-{int(time.time())}.json")
            logger.warning("%s could not be read; kept as %s, starting a new one", path, kept.name)
            everything = {}
    everything[prefix] = results
    atomic_io.write_json_atomic(path, everything, indent=2)
    lines = [f"step = {prefix}"] + [f"{k} = {v}" for k, v in results.items()]
    atomic_io.write_text_atomic(output_dir / "eval_results.txt", "\n".join(lines) + "\n")


def write_threshold(folder: Path, results: dict, prefix: str, predict_path: Path | None, decoding: dict) -> None:
    """The tuned no-answer threshold (best F1's), into the model folder it was tuned for, so that the model
    answers as it was scored (qa_pipeline.py applies it), with the decoder settings the null odds came from.
    Only a folder this tool trained (it holds training_args.json) is written: a pretrained or installed model
    given to --model_name_or_path is input, never modified. A folder that cannot be written is warned about."""
    if "best_f1_thresh" not in results:
        return
    if not (folder / TRAINING_ARGS).is_file():
        logger.info("tuned threshold %g kept in eval_results.json only: %s was not trained by run_squad.py",
                    results["best_f1_thresh"], folder)
        return
    record = {"null_score_diff_threshold": results["best_f1_thresh"], "best_f1": results["best_f1"],
              "best_exact": results["best_exact"], "best_exact_thresh": results["best_exact_thresh"],
              **decoding, "step": prefix, "predict_file": str(predict_path) if predict_path else None}
    try:
        atomic_io.write_json_atomic(folder / THRESHOLD_FILE, record, indent=2)
    except OSError as exc:
        logger.warning("could not write the tuned threshold into %s (%s)", folder, exc.strerror or exc)
        return
    logger.info("tuned threshold %g (best F1 %.2f) written to %s", record["null_score_diff_threshold"],
                record["best_f1"], folder / THRESHOLD_FILE)
