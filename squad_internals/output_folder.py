"""What a run leaves in --output_dir, and the checks before a run writes there: the names of its files and
folders, its checkpoints listed and resolved, the settings a resume compares, which models to evaluate,
eval_results.json and the tuned no-answer threshold (written by evaluation, read by qa_pipeline.py).

Why a module of its own: the command line must refuse a folder it would overwrite before it imports torch
(cli.py's checks, at once), and a later run (--resume_from_checkpoint latest, --eval_all_checkpoints, a
torchrun restart) must find again what an earlier one left. This module knows the layout and imports no
torch; checkpoints.py writes and reads the model and trainer state in it. Every write goes through
atomic_io, so a file or folder is either complete under its final name or absent, and every reader of a
folder first finishes (or refuses) what a killed writer left between two renames (finish_writes).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from squad_internals import atomic_io, folder_lock

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.pt"  # optimizer, scheduler, scaler, RNG states, position in the data
TRAINING_ARGS = "training_args.json"
TRAINING_STATE = "training_state.json"  # the optimizer step of the final model
EVAL_RESULTS = "eval_results.json"
FINAL_MODEL_TMP = "final-model"
PREVIOUS_MODEL_TMP = "previous-model"  # a replaced final model's files, kept until the new one is in place
THRESHOLD_FILE = "null_score_diff_threshold.json"  # the tuned no-answer threshold of a model folder
# A model folder that cannot be written (read-only, not ours): its threshold is only warned about.
READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
# The weights of a saved model, whole or sharded (safetensors, or the older pytorch_model.bin).
WEIGHTS_GLOBS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
# The files of the final model in --output_dir (HuggingFace layout): replaced together, never mixed.
FINAL_MODEL_GLOBS = (*WEIGHTS_GLOBS, "model-*-of-*.safetensors", "pytorch_model-*-of-*.bin", "config.json",
                     "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "added_tokens.json", "chat_template.jinja", "vocab.txt", "vocab.json", "merges.txt",
                     "spiece.model", "sentencepiece.bpe.model", TRAINING_ARGS, TRAINING_STATE, THRESHOLD_FILE)
# The files a tokenizer loads from (fast, or a family's vocabulary to convert): a model folder without any of
# them loads in transformers 5 as an empty tokenizer of 5 special tokens, every word [UNK].
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "spm.model",
                   "vocab.json", "tokenizer.model")
# What run_squad writes into --output_dir, whose temporaries a killed run may leave behind.
OUTPUT_GLOBS = (f"{CHECKPOINT_PREFIX}*", FINAL_MODEL_TMP, "*.json", "*.txt", "*.png")


class CheckpointInputError(ValueError):
    """A checkpoint that cannot be resumed from (a usage error: exit code 2)."""


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


# What a resume compares between the checkpoint's training_args.json and this run (checkpoints.check_resume):
# the model's head, the features (windows, casing, data, tokenizer), the batches (their sizes, order and number
# of processes), and the schedule and optimizer settings (those the restored optimizer state would override).
RESUME_SETTINGS = (
    "model_type", "simple_span_head", "max_seq_length", "doc_stride", "max_query_length", "do_lower_case",
    "context_first", "version_2_with_negative", "skip_bad_answers", "train_file_sha256", "tokenizer_sha256",
    "per_gpu_train_batch_size", "gradient_accumulation_steps", "world_size", "packed", "pack_tokens",
    "length_grouping", "seed", "learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "lr_end",
    "lr_power", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "layerwise_lr_decay",
)
SETTING_NAMES = {"train_file_sha256": "the training data (sha256)", "tokenizer_sha256": "the tokenizer (sha256)",
                 "world_size": "processes", "model_type": "model type",
                 "packed": "packed batches (--packing)"}  # the path taken: --packing auto packs on a GPU only


def _setting(name: str, value) -> str:
    if name.endswith("_sha256") and isinstance(value, str):
        return value[:12]
    return json.dumps(value)


def resume_mismatches(saved: dict, current: dict, auto_batch: bool) -> list[str]:
    """Each setting that differs between a checkpoint's training_args.json and this run, as `--flag A there, B
    here`. A setting the checkpoint does not record (an older one) is not compared. With
    --auto_find_batch_size the checkpoint's micro-batches are kept, so only the global batch must agree; the
    length of the run is --max_steps when either sets it, else --num_train_epochs."""
    if "packed" not in saved and isinstance(saved.get("packing"), bool):
        saved = {**saved, "packed": saved["packing"]}  # before --packing auto, the flag was the path taken
    names = [n for n in RESUME_SETTINGS if n in saved and n in current]
    if auto_batch:
        names = [n for n in names if n not in ("per_gpu_train_batch_size", "gradient_accumulation_steps")]
    found = [(SETTING_NAMES.get(n, f"--{n}"), saved[n], current[n], n) for n in names if saved[n] != current[n]]
    if auto_batch and all(k in d for d in (saved, current) for k in ("per_gpu_train_batch_size", "gradient_accumulation_steps")):
        there = saved["per_gpu_train_batch_size"] * saved["gradient_accumulation_steps"]
        here = current["per_gpu_train_batch_size"] * current["gradient_accumulation_steps"]
        if there != here:
            found.append(("batch per process (--per_gpu_train_batch_size x --gradient_accumulation_steps)",
                          there, here, "batch"))
    length = "max_steps" if max(saved.get("max_steps", -1), current.get("max_steps", -1)) > 0 else "num_train_epochs"
    if length in saved and length in current and saved[length] != current[length]:
        found.append((f"--{length}", saved[length], current[length], length))
    return [f"{label} {_setting(name, there)} there, {_setting(name, here)} here" for label, there, here, name in found]


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

    The output folder belongs to this run (it holds the folder's lock), so a temporary in it is a leftover
    unless its writer, named in its name, still lives on this host; the tuned threshold's temporaries inside
    checkpoint folders too. A fresh run replaces the checkpoints of the steps it saves; the others stay, and
    `--resume_from_checkpoint latest` or --eval_all_checkpoints would use them.
    """
    for done in atomic_io.finish_journals(output_dir):  # first: never a new set dropped as a stray temporary
        logger.warning("%s: %s", output_dir, done)
    for pattern in OUTPUT_GLOBS:
        atomic_io.remove_stale_temporaries(output_dir, pattern, owned=True)
    for checkpoint in list_checkpoints(output_dir):
        atomic_io.remove_stale_temporaries(checkpoint, THRESHOLD_FILE, owned=True)
    finished = finished_model(output_dir)
    if finished is not None:
        logger.warning("%s holds %s: this run replaces it once its own final model is written (until then it "
                       "stays, and a failed run leaves it in place)", output_dir, finished.describe())
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


@dataclass(frozen=True)
class FinishedModel:
    """A final model a run left in --output_dir: its step and, when it was evaluated there, its scores."""

    folder: Path
    step: str
    results: dict | None

    def describe(self) -> str:
        """e.g. `a finished model (step 30; EM 28.94, F1 35.21)`, for the one-line refusals."""
        headline = em_f1(self.results or {})
        if headline is None:
            return f"a finished model (step {self.step}, not evaluated there)"
        return f"a finished model (step {self.step}; {headline})"

    def evaluated_files(self) -> bool:
        """Whether its predictions are there already (an evaluation into this folder needs another one)."""
        return (self.folder / f"predictions_{self.step}.json").is_file()


def finished_model(output_dir: Path) -> FinishedModel | None:
    """The final model of a finished training run in ``output_dir`` (config, weights, the run's flags and
    its step: what save_final_model writes last), else None. A pretrained model folder is not one (it has
    no training_state.json), nor a checkpoint."""
    output_dir = Path(output_dir)
    needed = ("config.json", TRAINING_ARGS, TRAINING_STATE)
    if not all((output_dir / name).is_file() for name in needed):
        return None
    if not any((output_dir / name).is_file() for name in WEIGHTS_GLOBS):
        return None
    step = final_prefix(output_dir)
    return FinishedModel(output_dir, step, read_eval_results(output_dir).get(step))


def read_eval_results(output_dir: Path) -> dict:
    """eval_results.json as a dict by step ({} when absent or unreadable: only for describing a folder)."""
    try:
        everything = json.loads((Path(output_dir) / EVAL_RESULTS).read_text())
    except (OSError, ValueError):
        return {}
    return everything if isinstance(everything, dict) else {}


def finish_interrupted_swap(output_dir: Path) -> list[str]:
    """A final model's replacement cut short by a kill (checkpoints.save_final_model) is finished before
    anything else reads --output_dir: back to the previous model when the new one was not yet being moved
    in, forward to the new one (complete on disk) when it was. Returns one sentence per repair."""
    if not Path(output_dir).is_dir():
        return []
    said = {"restored": "restored the previous final model: its replacement was cut short before the new model "
                        "was moved in",
            "completed": "completed the replacement of the final model, cut short while the new model was moved in"}
    return [f"{output_dir}: {said[done]}" for done in
            atomic_io.finish_replacements(Path(output_dir), FINAL_MODEL_TMP, PREVIOUS_MODEL_TMP)]


class UnfinishedWrite(Exception):
    """A folder holds a set of files cut short between two renames that cannot be finished here (exit code 2);
    the message says what is unfinished and how to finish it."""


def pending_writes(folder: Path) -> list[Path]:
    """What makes a folder partial until it is finished: journals of sets being renamed in (an evaluation's
    results, a checkpoint rewritten at its step) and aside folders of a final model being replaced."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    asides = sorted(p for p in folder.glob(f"{PREVIOUS_MODEL_TMP}.*.tmp") if p.is_dir())
    return atomic_io.pending_journals(folder) + asides


def _stale_temporaries(folder: Path) -> bool:
    return any(True for pattern in OUTPUT_GLOBS for _ in folder.glob(f"{pattern}.*.tmp"))


def finish_writes(folder: Path, owned: bool = False) -> list[str]:
    """What every reader of a model or output folder runs first: the sets a killed writer left between two
    renames are finished (forward when the new set is complete on disk, back otherwise), holding the folder's
    lock, so that the reader sees one whole set. ``owned`` (the run's own --output_dir): the temporaries of a
    killed run are removed too. Returns one sentence per repair; raises UnfinishedWrite (one line: what is
    unfinished, and how to finish it) when the folder is in use by a live run or cannot be written."""
    folder = Path(folder)
    pending = pending_writes(folder)
    if not pending and not (owned and folder.is_dir() and _stale_temporaries(folder)):
        return []
    if folder_lock.holds(folder):
        return _finish_writes(folder, owned)
    what = f"an interrupted write is unfinished ({', '.join(p.name for p in pending)})" if pending else ""
    lock = folder_lock.FolderLock(folder, folder_lock.this_command(None))
    try:
        lock.acquire()
    except folder_lock.FolderLocked:
        if not pending:
            return []  # only temporaries, perhaps the live holder's: they are its to remove
        holder = folder_lock.read_holder(folder / folder_lock.LOCK_NAME)
        raise UnfinishedWrite(f"{folder}: {what}, and another run holds the folder "
                              f"({holder.describe() if holder else 'its record is not written yet'}): try again "
                              "once it has ended (it finishes its own writes)") from None
    except OSError as exc:
        if not pending:
            return []
        raise UnfinishedWrite(f"{folder}: {what} and cannot be finished here ({exc.strerror or exc}): open it "
                              "once where the folder can be written (run_squad.py --model_name_or_path or "
                              "--output_dir, or qa_pipeline.py, on it finishes it)") from None
    try:
        return _finish_writes(folder, owned)
    finally:
        lock.release()


def _finish_writes(folder: Path, owned: bool) -> list[str]:
    """finish_writes with the folder's lock held."""
    try:
        done = [f"{folder}: {sentence}" for sentence in atomic_io.finish_journals(folder)]
    except atomic_io.UnfinishedSet as exc:
        raise UnfinishedWrite(str(exc)) from None
    done += finish_interrupted_swap(folder)
    if owned:
        for pattern in OUTPUT_GLOBS:
            atomic_io.remove_stale_temporaries(folder, pattern, owned=True)
    return done


def model_folder_problem(folder: Path, config: bool = True, tokenizer: bool = True) -> str | None:
    """Why a local model folder cannot be loaded whole, naming the missing or damaged file (None: it can, as
    far as its file names and config tell): config.json missing or not a JSON object; no tokenizer file
    (transformers 5 would make an empty tokenizer of it and every answer would be empty)."""
    folder = Path(folder)
    if config:
        path = folder / "config.json"
        if not path.is_file():
            return f"{path}: missing, so {folder} is not a whole model folder"
        try:
            if not isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            return f"{path}: cannot be read, the file is damaged or cut short ({atomic_io.first_line(exc)})"
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return (f"{folder / 'tokenizer.json'}: missing, and no other tokenizer file is in {folder} (none of "
                f"{', '.join(TOKENIZER_FILES[1:])}): copy the model's tokenizer files into it")
    return None


def models_to_evaluate(output_dir: Path, all_checkpoints: bool, trained: bool, model_path: str) -> list[tuple[str, str]]:
    """(model folder, prefix) pairs, as the classic script chose them; checkpoints sorted by step."""
    if all_checkpoints:
        pairs = [(str(p), str(checkpoint_step(p))) for p in list_checkpoints(output_dir)]
        if (output_dir / "config.json").is_file():
            pairs.append((str(output_dir), final_prefix(output_dir)))
        return pairs
    folder = output_dir if trained else Path(model_path)
    return [(str(folder), final_prefix(folder))]


def em_f1(results: dict) -> str | None:
    """`EM 28.94, F1 35.21` of one evaluation's results (None without them): the headline every report leads with."""
    exact = results.get("exact", results.get("exact_match"))  # SQuAD 2.0's name, 1.1's (the official scripts')
    if exact is None or "f1" not in results:
        return None
    return f"EM {exact:.2f}, F1 {results['f1']:.2f}"


def write_eval_results(output_dir: Path, prefix: str, results: dict, files: atomic_io.FileSet | None = None) -> None:
    """eval_results.json: every evaluation by step; eval_results.txt: the latest as `key = value`. Each written
    atomically, or staged in ``files`` (the evaluation's set): eval_results.json last, so that a step it lists
    has all its files in place."""
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
    lines = [f"step = {prefix}"] + [f"{k} = {v}" for k, v in results.items()]
    if files is not None:
        files.write_text(output_dir / "eval_results.txt", "\n".join(lines) + "\n")
        files.write_json(path, everything, indent=2)
        return
    atomic_io.write_text_atomic(output_dir / "eval_results.txt", "\n".join(lines) + "\n")
    atomic_io.write_json_atomic(path, everything, indent=2)


def write_threshold(folder: Path, results: dict, prefix: str, predict_path: Path | None, decoding: dict,
                    files: atomic_io.FileSet) -> None:
    """The tuned no-answer threshold (best F1's), into the model folder it was tuned for, so that the model
    answers as it was scored (qa_pipeline.py applies it), with the decoder settings the null odds came from.
    Only a folder this tool trained (it holds training_args.json) is written: a pretrained or installed model
    given to --model_name_or_path is input, never modified. Staged in ``files`` (the evaluation's set). A
    folder that cannot be written is warned about (the threshold stays in eval_results.json)."""
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
        files.write_json(folder / THRESHOLD_FILE, record, indent=2)
    except OSError as exc:
        if exc.errno not in READ_ONLY_ERRNOS:
            raise  # a full disk: the evaluation's set is not written
        logger.warning("could not write the tuned threshold into %s (%s)", folder, exc.strerror or exc)
        return
    logger.info("tuned threshold %g (best F1 %.2f) written to %s", record["null_score_diff_threshold"],
                record["best_f1"], folder / THRESHOLD_FILE)


# The classic decoder's settings behind a tuned threshold when its file does not record them: run_squad.py's
# --n_best_size and --max_answer_length defaults (a test ties them to the parser).
THRESHOLD_N_BEST_SIZE, THRESHOLD_MAX_ANSWER_LENGTH = 20, 30


class ThresholdFileError(ValueError):
    """A tuned-threshold file that cannot be used: one line naming it and what is wrong."""


@dataclass(frozen=True)
class NullThreshold:
    """A null-odds threshold and the classic decoder settings it was tuned with."""

    value: float
    n_best_size: int = THRESHOLD_N_BEST_SIZE
    max_answer_length: int = THRESHOLD_MAX_ANSWER_LENGTH


def read_threshold(path: Path) -> NullThreshold:
    """The tuned threshold write_threshold wrote (qa_pipeline.py applies it); a bad file is a
    ThresholdFileError naming it and what is wrong."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ThresholdFileError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ThresholdFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ThresholdFileError(f"{path}: expected a JSON object, got {json_type(record)}")
    if "null_score_diff_threshold" not in record:
        raise ThresholdFileError(f"{path}: missing key 'null_score_diff_threshold'")
    extra = {key: _threshold_number(path, record, key, int) for key in ("n_best_size", "max_answer_length")
             if key in record}
    return NullThreshold(_threshold_number(path, record, "null_score_diff_threshold", float), **extra)


def _threshold_number(path: Path, record: dict, key: str, kind: type):
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ThresholdFileError(f"{path}: '{key}' must be a finite number, got {json.dumps(value)}")
    if kind is int and (value != int(value) or value < 1):
        raise ThresholdFileError(f"{path}: '{key}' must be a positive integer, got {json.dumps(value)}")
    return kind(value)


def trained_context_first(folder: Path | None) -> bool:
    """Whether run_squad.py fine-tuned the model in `folder` with --context_first (its training_args.json)."""
    try:
        return bool(json.loads((folder / TRAINING_ARGS).read_text()).get("context_first"))
    except (TypeError, OSError, ValueError, AttributeError):
        return False  # no folder, no record, or not ours: the tokenizer decides


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def json_type(value) -> str:
    """The JSON name of a parsed value's type, for the one-line errors about JSON files."""
    return _JSON_TYPES.get(type(value), type(value).__name__)
