"""Checkpoints and the final model: the model, tokenizer and trainer state (optimizer, scheduler, scaler, RNG
states, position in the data) written into --output_dir and read back.

Why a module of its own: a checkpoint must survive any kill and load again bit for bit; output_folder.py knows
where things are (and imports no torch), this module writes and reads them with torch and transformers.
run_squad.py decides when to save and which rank does it. Every write goes through atomic_io, so a folder
is either complete under its final name or absent.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch

import atomic_io
from output_folder import (
    CHECKPOINT_PREFIX,
    FINAL_MODEL_GLOBS,
    FINAL_MODEL_TMP,
    PREVIOUS_MODEL_TMP,
    TRAINER_STATE,
    TRAINING_ARGS,
    TRAINING_STATE,
    CheckpointInputError,
    finished_model,
    last_good,
)

logger = logging.getLogger(__name__)


class CheckpointWriteError(Exception):
    """A checkpoint or the final model could not be written (disk full, read-only, ...)."""


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
    """The model and tokenizer in <output_dir> (HuggingFace layout), each file renamed into place.

    A final model already there (an earlier run's, replaced with --overwrite_output_dir, or the one a resumed
    run continues) is replaced as a whole: its files, the threshold tuned for it included, are moved aside
    only once the new files are all written, put back if the swap fails, deleted once the new ones are in;
    a kill during the swap is finished on the next start (output_folder.finish_interrupted_swap).
    """
    previous = finished_model(output_dir)
    try:
        with atomic_io.files_replacing(output_dir, FINAL_MODEL_TMP, PREVIOUS_MODEL_TMP, FINAL_MODEL_GLOBS) as tmp:
            write_model_folder(tmp, model, tokenizer, run_args)
            (tmp / TRAINING_STATE).write_text(json.dumps({"global_step": global_step}))
    except Exception as exc:  # noqa: BLE001 - as in save_checkpoint
        raise CheckpointWriteError(f"could not write the final model to {output_dir} ({write_failure_reason(exc)}); "
                                   f"last good checkpoint: {last_good(output_dir)}") from exc
    if previous is not None:
        logger.info("replaced %s in %s (kept until this one was written)", previous.describe(), output_dir)
    logger.info("saved the final model and tokenizer in %s", output_dir)
