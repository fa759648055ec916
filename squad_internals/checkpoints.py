"""Checkpoints and the final model: the model, tokenizer and trainer state (optimizer, scheduler, scaler, RNG
states, position in the data) written into --output_dir and read back; which checkpoint a resume takes (one
that loads) and whether it belongs to the run resuming it (its settings, data, tokenizer and model config).

Why a module of its own: a checkpoint must survive any kill and load again bit for bit; output_folder.py knows
where things are (and imports no torch), this module writes and reads them with torch and transformers.
run_squad.py decides when to save and which rank does it. Every write goes through atomic_io, so a folder
is either complete under its final name or absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import safetensors
import torch

import utils_squad
from squad_internals import atomic_io, output_folder
from squad_internals.output_folder import (
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

SAFETENSORS_WEIGHTS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
# Config entries that do not change the model: where it came from, what wrote it, the dtype it was saved in
# (training loads float32 whatever the file says), its class name (pretrained BertModel, fine-tuned
# BertForQuestionAnswering).
CONFIG_IGNORED = {"transformers_version", "architectures", "dtype", "torch_dtype"}


class CheckpointWriteError(Exception):
    """A checkpoint or the final model could not be written (disk full, read-only, ...)."""


def load_trainer_state(path: Path, mmap: bool = False) -> dict:
    """A checkpoint's trainer state; a file that does not load is named (exit code 2). mmap: map the tensors
    instead of reading them (a cheap check that the file is whole)."""
    # weights_only: a checkpoint is data, never code (no arbitrary unpickling).
    try:
        return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointInputError(f"{path / TRAINER_STATE}: refused to load, it holds more than tensors and plain "
                                   f"data ({atomic_io.first_line(exc)})") from exc
    except (RuntimeError, ValueError, EOFError, OSError) as exc:  # a cut or damaged file: torch's zip reader
        raise CheckpointInputError(f"{path / TRAINER_STATE}: cannot be read, the file is damaged or cut short "
                                   f"({atomic_io.first_line(exc)})") from exc


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder: one, or the shards its index names."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise WeightsUnreadable(f"{index}: cannot be read ({atomic_io.first_line(exc)})") from exc
        return [folder / name for name in shards]
    return [folder / SAFETENSORS_WEIGHTS] if (folder / SAFETENSORS_WEIGHTS).is_file() else []


class WeightsUnreadable(ValueError):
    """A model folder's config or weights do not load; the message names the file."""


def check_model_files(folder: Path) -> None:
    """Raise WeightsUnreadable naming the file when a local model folder's config.json or safetensors weights do
    not load (cut short, damaged): read their headers only, before transformers reads them and says neither
    which file nor what to do. A folder without safetensors (a hub name, .bin weights) is left to transformers."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    config = folder / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsUnreadable(f"{config}: cannot be read, the file is damaged or cut short "
                                    f"({atomic_io.first_line(exc)})") from exc
    for path in weight_files(folder):
        try:
            with safetensors.safe_open(str(path), framework="pt"):  # validates the header against the file size
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type, not an OSError
            raise WeightsUnreadable(f"{path}: cannot be read, the file is damaged or cut short "
                                    f"({atomic_io.first_line(exc)})") from exc


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint would not load (the file and the reason), or None: its model files and trainer state,
    checked cheaply (headers, and the trainer state memory-mapped)."""
    try:
        check_model_files(path)
        load_trainer_state(path, mmap=True)
    except (WeightsUnreadable, CheckpointInputError) as exc:
        return str(exc)
    return None


def resolve_resume(output_dir: Path, wanted: str | None) -> Path | None:
    """--resume_from_checkpoint PATH|latest, checked to load. `latest` passes over checkpoints that do not load
    (a warning names each) and takes the newest that does; a named checkpoint that does not load is refused."""
    found = output_folder.resolve_resume(output_dir, wanted)
    if found is None:
        return None
    if wanted != "latest":
        problem = checkpoint_problem(found)
        if problem is not None:
            raise CheckpointInputError(problem)  # it names the file
        return found
    problems = []
    for candidate in reversed(output_folder.list_checkpoints(output_dir)):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        logger.warning("--resume_from_checkpoint latest: passing over %s, it does not load: %s", candidate, problem)
        problems.append(problem)
    raise CheckpointInputError(f"--resume_from_checkpoint latest: no checkpoint in {output_dir} loads (newest: "
                               f"{problems[0]}); start again without --resume_from_checkpoint")


# --------------------------------------------------------------------------------------------
# What a resume checks: the checkpoint was made by the run being resumed
# --------------------------------------------------------------------------------------------


def run_identity(train_path: Path | None, tokenizer, world_size: int) -> dict:
    """What training_args.json records beyond the flags, for a resume to compare: the training data's content,
    the tokenizer and the number of processes (the data plan deals batches to them)."""
    identity = {"world_size": world_size,
                "tokenizer_sha256": hashlib.sha256(json.dumps(utils_squad.tokenizer_identity(tokenizer),
                                                              sort_keys=True).encode()).hexdigest()}
    if train_path is not None and Path(train_path).is_file():
        identity["train_file_sha256"] = utils_squad.file_sha256(train_path)
    return identity


def check_resume(resume_from: Path | None, run_args: dict, config, auto_batch: bool) -> None:
    """Refuse (exit code 2) a checkpoint made with other settings than this run's: one line naming each with
    both values, and the way to start fresh from its weights on purpose."""
    if resume_from is None:
        return
    try:
        saved = json.loads((resume_from / TRAINING_ARGS).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointInputError(f"{resume_from / TRAINING_ARGS}: cannot be read ({atomic_io.first_line(exc)})") from exc
    differences = output_folder.resume_mismatches(saved, run_args, auto_batch)
    differences += config_mismatches(resume_from, config)
    if differences:
        raise CheckpointInputError(
            f"--resume_from_checkpoint {resume_from}: made with other settings than this run's: "
            f"{'; '.join(differences)}. Resume with its settings, or start fresh from its weights on purpose: "
            f"--model_name_or_path {resume_from} without --resume_from_checkpoint, into a new --output_dir")


def config_mismatches(resume_from: Path, config) -> list[str]:
    """The model config's entries that differ between the checkpoint and the model this run would build
    (names, paths, versions and dtype aside: they do not change the model)."""
    try:
        saved = type(config).from_pretrained(str(resume_from)).to_dict()
    except (OSError, ValueError) as exc:
        raise CheckpointInputError(f"{resume_from / 'config.json'}: cannot be read ({atomic_io.first_line(exc)})") from exc
    current = config.to_dict()
    keys = sorted(k for k in set(saved) | set(current) if not k.startswith("_") and k not in CONFIG_IGNORED)
    return [f"model config {k} {json.dumps(saved.get(k))} there, {json.dumps(current.get(k))} here"
            for k in keys if saved.get(k) != current.get(k)]


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
    a kill during the swap is finished by the next reader of the folder (output_folder.finish_writes).
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
