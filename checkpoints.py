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
    FINAL_MODEL_TMP,
    THRESHOLD_FILE,
    TRAINER_STATE,
    TRAINING_ARGS,
    TRAINING_STATE,
    CheckpointInputError,
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


