"""Read SQuAD data, validate it, and turn it into sliding-window features for any fast tokenizer, cached on disk.

Data flow: file --read_squad_examples--> SquadExample list --convert_examples_to_features--> SquadFeatures
(ragged numpy arrays), through load_or_build_features' cache. What happens to features next (batches,
tensors) is batching.py's.

Windows follow the classic (Google BERT / classic HuggingFace) rule: the question is truncated to
``max_query_length`` tokens, each window holds ``max_seq_length - len(question) - specials`` context
tokens and consecutive windows start ``doc_stride`` context tokens apart.  This is NOT the fast
tokenizer's overlap ``stride`` (run_qa.py), which gives a different feature set for the same number.

Why a module of its own: training, evaluation and qa_pipeline.py take their windows from this one
featurizer, and it imports no torch, so the command line can read, validate and featurize without it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import multiprocessing
import os
import signal
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers

from squad_internals import atomic_io

logger = logging.getLogger(__name__)

# Bump when the feature layout or the featurization algorithm changes: old caches then never load.
FEATURES_FORMAT_VERSION = 3
# How far (in characters, either side) a mis-placed answer_start is searched for its text.
ANSWER_REPAIR_WINDOW = 20
# Python objects of a parsed JSON file take roughly this many times the file size in memory.
JSON_MEMORY_FACTOR = 12
# Examples per unit of work: bounds intermediate memory and is the multiprocessing chunk size.
CHUNK_EXAMPLES = 2048
# A context longer than this (no SQuAD paragraph is) is tokenized in pieces of about this many characters, one
# at a time: see encode_contexts.
LONG_CONTEXT_CHARS = 1 << 16


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
class SquadDataError(ValueError):
    """Bad input data; str() is one line: 'FILE: record: problem'."""


@dataclass
class SquadExample:
    qas_id: str
    question: str
    context: str
    answers: list[dict]  # every gold answer {"text", "answer_start"} (char offset, repaired)
    is_impossible: bool
    title: str = ""

    @property
    def answer_char_span(self) -> tuple[int, int] | None:
        """(start, end_exclusive) of the first gold answer, or None when there is none."""
        if self.is_impossible or not self.answers:
            return None
        start = self.answers[0]["answer_start"]
        return start, start + len(self.answers[0]["text"])


@dataclass
class ReadReport:
    path: str = ""
    format: str = ""  # "squad-json" | "jsonl"
    questions: int = 0  # examples returned
    answerable: int = 0
    impossible: int = 0
    repaired: int = 0  # answers whose answer_start was moved to where their text really is
    skipped: int = 0  # questions dropped with skip_bad_answers=True
    skipped_ids: list[str] = field(default_factory=list)
    dropped_answers: int = 0  # bad gold answers dropped from evaluation questions that were kept
    dropped_answer_ids: list[str] = field(default_factory=list)  # the questions they were dropped from


@dataclass
class FeatureSettings:
    max_seq_length: int = 384
    doc_stride: int = 128  # the step between window starts (Google's and the classic meaning)
    max_query_length: int = 64
    context_first: bool = False
    is_training: bool = False
    # Instead of doc_stride: consecutive windows share this many context tokens (the fast tokenizers' and
    # transformers 4's pipeline's meaning), so each question's step is its window minus the overlap.
    window_overlap: int | None = None


# --------------------------------------------------------------------------------------------
# Reading and validation
# --------------------------------------------------------------------------------------------
def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None when it cannot be told."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_file_size(path, max_bytes: int | None = None) -> int:
    """Refuse, before reading, a data file whose parsed form would not fit in memory.

    max_bytes defaults to the available memory; the estimate is JSON_MEMORY_FACTOR x file size.
    Returns the file size in bytes.
    """
    size = os.path.getsize(path)
    limit = max_bytes if max_bytes is not None else available_memory_bytes()
    need = size * JSON_MEMORY_FACTOR
    if limit is not None and need > limit:
        raise SquadDataError(
            f"{path}: file is {size / 2**20:.0f} MB; reading it needs about {need / 2**20:.0f} MB "
            f"but only {limit / 2**20:.0f} MB is available (split the file)"
        )
    return size


def _load_text(path) -> str:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SquadDataError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    try:
        # utf-8-sig: a BOM at the start of the file is not part of the JSON.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SquadDataError(f"{path}: not UTF-8 (invalid byte at offset {exc.start})") from None


def _json_error_text(exc: json.JSONDecodeError, with_line: bool = True) -> str:
    """The decoder's message and position as one phrase.

    Some decoder messages already end in "at" ("Unterminated string starting at"): drop it so the
    position reads "starting at line 1 column 7", not "starting at at line ...".
    """
    msg = exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg
    return f"{msg} at line {exc.lineno} column {exc.colno}" if with_line else f"{msg} at column {exc.colno}"


def _looks_truncated(text: str, exc: json.JSONDecodeError) -> bool:
    """The decoder ran out of input: an unterminated string, or nothing but whitespace after the error."""
    return exc.msg.startswith("Unterminated string") or not text[exc.pos:].strip()


def _whole_file_error(path, text: str, exc: json.JSONDecodeError) -> SquadDataError:
    hint = " (truncated?)" if _looks_truncated(text, exc) else ""
    return SquadDataError(f"{path}: not valid JSON{hint}: {_json_error_text(exc)}")


def _first_line_is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _parse_json_or_lines(path, text: str) -> tuple[str, object]:
    """('squad-json', obj) or ('jsonl', [(line_no, obj), ...]); decided by the content."""
    if not text.strip():
        raise SquadDataError(f"{path}: empty file")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        whole_error = exc
    else:
        if isinstance(obj, dict) and "context" in obj and "data" not in obj:
            return "jsonl", [(1, obj)]  # a one-line JSON Lines file
        return "squad-json", obj
    # Split on "\n" only: str.splitlines() would also split inside strings at U+2028, U+0085 and
    # other characters that JSON allows unescaped (json.dumps(..., ensure_ascii=False) writes them).
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    # JSON Lines only when line 1 is a whole object: a truncated or broken pretty-printed file also
    # has several lines starting with "{", and its real error is the whole-file one.
    if len(lines) < 2 or not _first_line_is_object(lines[0][1]):
        raise _whole_file_error(path, text, whole_error)
    records = []
    for line_no, line in lines:
        try:
            records.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise SquadDataError(
                f"{path}: line {line_no}: not valid JSON: {_json_error_text(exc, with_line=False)}"
            ) from None
    return "jsonl", records


def _require(path, where: str, obj, key: str, kind: type | tuple[type, ...]):
    if not isinstance(obj, dict):
        raise SquadDataError(f"{path}: {where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise SquadDataError(f"{path}: {where}: missing key '{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        field = key if where == "top level" else f"{where}.{key}"
        got = "null" if value is None else type(value).__name__  # JSON's name for None
        raise SquadDataError(f"{path}: {field}: expected {names}, got {got}")
    return value


def _find_near(context: str, text: str, start: int) -> int:
    """Start of the occurrence of text nearest to start within ANSWER_REPAIR_WINDOW, or -1."""
    lo = max(0, start - ANSWER_REPAIR_WINDOW)
    hi = min(len(context), start + len(text) + ANSWER_REPAIR_WINDOW)
    best, pos = -1, context.find(text, lo, hi)
    while pos != -1:
        if best == -1 or abs(pos - start) < abs(best - start):
            best = pos
        pos = context.find(text, pos + 1, hi)
    return best


def _check_answer(path, qid: str, context: str, text, start) -> tuple[dict, bool]:
    """Validated (maybe repaired) answer and whether it was repaired; SquadDataError if hopeless."""
    if not isinstance(text, str):
        raise SquadDataError(f"{path}: question {qid}: answer text: expected str, got {type(text).__name__}")
    if not isinstance(start, int) or isinstance(start, bool):
        raise SquadDataError(
            f"{path}: question {qid}: answer_start: expected int, got {type(start).__name__}"
        )
    if not text.strip():
        raise SquadDataError(f"{path}: question {qid}: empty answer text")
    outside = start < 0 or start >= len(context)
    if not outside and context.startswith(text, start):
        return {"text": text, "answer_start": start}, False
    # Offsets shifted by whitespace, punctuation or a BOM: the same text (or stripped of spaces) nearby.
    # A start a few characters past either end of the context is the same kind of slip.
    if -ANSWER_REPAIR_WINDOW <= start < len(context) + ANSWER_REPAIR_WINDOW:
        for candidate in (text, text.strip()):
            pos = _find_near(context, candidate, start)
            if pos != -1:
                return {"text": candidate, "answer_start": pos}, True
    if outside:
        raise SquadDataError(
            f"{path}: question {qid}: answer_start {start} outside the context (length {len(context)})"
        )
    raise SquadDataError(
        f"{path}: question {qid}: answer text {text[:40]!r} not found at answer_start {start} "
        f"nor within {ANSWER_REPAIR_WINDOW} characters (use --skip_bad_answers to drop such answers)"
    )


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


class _Collector:
    """Builds examples from raw records with the checks shared by both file layouts."""

    def __init__(self, path, version_2_with_negative: bool, is_training: bool, skip_bad_answers: bool):
        self.path, self.v2, self.training, self.skip = path, version_2_with_negative, is_training, skip_bad_answers
        self.examples: list[SquadExample] = []
        self.seen: dict[str, str] = {}
        self.report = ReadReport(path=str(path))

    def add(self, where: str, qid, question, context: str, answers_raw, impossible_flag, title: str):
        path = self.path
        if not isinstance(qid, str) or not qid:
            raise SquadDataError(f"{path}: {where}.id: expected a non-empty str, got {qid!r}")
        if qid in self.seen:
            raise SquadDataError(f"{path}: question {qid}: duplicate id (first at {self.seen[qid]}, again at {where})")
        self.seen[qid] = where
        if not isinstance(question, str):
            raise SquadDataError(f"{path}: question {qid}: question: expected str, got {type(question).__name__}")
        if not question.strip():
            raise SquadDataError(f"{path}: question {qid}: empty question")
        if not isinstance(impossible_flag, bool):
            raise SquadDataError(f"{path}: question {qid}: is_impossible: expected bool")
        impossible = impossible_flag or (not answers_raw and (self.training or self.v2))
        if impossible and not self.v2:
            raise SquadDataError(
                f"{path}: question {qid}: unanswerable question (is_impossible or no answers) in data "
                "read without --version_2_with_negative; pass --version_2_with_negative for SQuAD 2.0 data"
            )
        answers, repaired, bad = [], 0, 0
        for text, start in [] if impossible else answers_raw:
            try:
                answer, was_repaired = _check_answer(path, qid, context, text, start)
            except SquadDataError:
                if not self.skip:
                    raise
                bad += 1
                continue
            answers.append(answer)
            repaired += was_repaired
        if bad and not self._keep_with_bad_answers(answers):
            self.report.skipped += 1
            self.report.skipped_ids.append(qid)
            return
        if bad:
            self.report.dropped_answers += bad
            self.report.dropped_answer_ids.append(qid)
        self.report.repaired += repaired
        self.examples.append(SquadExample(qid, question, context, answers, impossible, title))

    def _keep_with_bad_answers(self, good_answers: list[dict]) -> bool:
        """Whether a question some of whose gold answers are bad is kept (they are dropped from it).

        Training labels with the first answer, and a question with a bad annotation is not worth a
        guessed label: the whole question goes.  Evaluation scores against any gold answer: one bad
        answer among several must not drop the question, but one with no good answer left must go
        (it would be scored as unanswerable).
        """
        return not self.training and bool(good_answers)

    def finish(self) -> tuple[list[SquadExample], ReadReport]:
        report = self.report
        if not self.examples and not report.skipped:
            raise SquadDataError(f"{self.path}: no questions found")
        if not self.examples:
            raise SquadDataError(
                f"{self.path}: every question was skipped "
                f"({_count(report.skipped, 'question with a bad answer', 'questions with bad answers')})"
            )
        report.questions = len(self.examples)
        report.impossible = sum(e.is_impossible for e in self.examples)
        report.answerable = report.questions - report.impossible
        return self.examples, report


def _check_context(path, where: str, context: str) -> None:
    if not context.strip():
        raise SquadDataError(f"{path}: {where}: empty context")


def _read_squad_json(path, obj, collector: _Collector) -> None:
    if not isinstance(obj, dict):
        raise SquadDataError(f"{path}: top level: expected an object with 'data', got {type(obj).__name__}")
    data = _require(path, "top level", obj, "data", list)
    for a, article in enumerate(data):
        where_a = f"data[{a}]"
        paragraphs = _require(path, where_a, article, "paragraphs", list)
        title = article.get("title", "")
        title = title if isinstance(title, str) else str(title)
        for p, paragraph in enumerate(paragraphs):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = _require(path, where_p, paragraph, "context", str)
            qas = _require(path, where_p, paragraph, "qas", list)
            _check_context(path, where_p, context)
            for q, qa in enumerate(qas):
                where_q = f"{where_p}.qas[{q}]"
                qid = _require(path, where_q, qa, "id", str)
                question = _require(path, where_q, qa, "question", str)
                impossible = qa.get("is_impossible", False)
                if impossible or (not collector.training and "answers" not in qa):
                    answers = qa.get("answers", [])  # prediction-only data may carry no answers
                else:
                    answers = _require(path, where_q, qa, "answers", list)
                if not isinstance(answers, list):
                    raise SquadDataError(f"{path}: question {qid}: answers: expected list")
                pairs = []
                for answer in answers:
                    if not isinstance(answer, dict) or "text" not in answer or "answer_start" not in answer:
                        raise SquadDataError(f"{path}: question {qid}: answer without 'text'/'answer_start'")
                    pairs.append((answer["text"], answer["answer_start"]))
                collector.add(where_q, qid, question, context, [] if impossible else pairs, impossible, title)


def _read_jsonl(path, records, collector: _Collector) -> None:
    for line_no, rec in records:
        where = f"line {line_no}"
        qid = _require(path, where, rec, "id", str)
        context = _require(path, where, rec, "context", str)
        question = _require(path, where, rec, "question", str)
        _check_context(path, f"question {qid}", context)
        pairs, impossible = _jsonl_answers(path, qid, rec, collector.training)
        title = rec.get("title", "")
        collector.add(where, qid, question, context, pairs, impossible,
                      title if isinstance(title, str) else str(title))


def _jsonl_answers(path, qid: str, rec: dict, is_training: bool) -> tuple[list, bool]:
    """(answer pairs, is_impossible) of a HuggingFace-layout row, read as the SQuAD JSON reader does.

    A row without "answers" is a prediction-only question (like a SQuAD JSON question without
    "answers"), allowed unless training.  Empty answer lists are how squad_v2 marks an unanswerable
    question, the counterpart of SQuAD JSON's is_impossible: they need --version_2_with_negative.
    """
    if "answers" not in rec and not is_training:
        return [], False
    answers = _require(path, f"question {qid}", rec, "answers", dict)
    texts = _require(path, f"question {qid}: answers", answers, "text", list)
    starts = _require(path, f"question {qid}: answers", answers, "answer_start", list)
    if len(texts) != len(starts):
        raise SquadDataError(f"{path}: question {qid}: answers.text and answers.answer_start differ in length")
    return list(zip(texts, starts, strict=True)), not texts


def read_squad_examples(path, version_2_with_negative: bool, is_training: bool, *,
                        skip_bad_answers: bool = False, max_bytes: int | None = None):
    """SQuAD v1.1/v2.0 JSON or HuggingFace JSON Lines (chosen by content) -> (examples, ReadReport).

    Every gold answer is kept (evaluation needs them all); training uses the first.  Raises
    SquadDataError with a one-line message for anything malformed.  skip_bad_answers: an answer
    whose text is not in the context is dropped from an evaluation question (the question goes
    when none is left) and takes its whole question with it in training; all are counted.

    version_2_with_negative and is_training stay positional-or-keyword: bench/featurize.py passes
    them by position.
    """
    check_file_size(path, max_bytes)
    fmt, obj = _parse_json_or_lines(path, _load_text(path))
    collector = _Collector(path, version_2_with_negative, is_training, skip_bad_answers)
    if fmt == "squad-json":
        _read_squad_json(path, obj, collector)
    else:
        _read_jsonl(path, obj, collector)
    examples, report = collector.finish()
    report.format = fmt
    logger.info("Read %d questions (%d answerable, %d unanswerable) from %s [%s]",
                report.questions, report.answerable, report.impossible, path, fmt)
    if report.repaired:
        logger.warning("%s: repaired answer_start of %d answers (text found within %d characters)",
                       path, report.repaired, ANSWER_REPAIR_WINDOW)
    if report.skipped:
        logger.warning("%s: skipped %s (first: %s)", path,
                       _count(report.skipped, "question whose answer is not in the context",
                              "questions whose answers are not in the context"),
                       ", ".join(report.skipped_ids[:5]))
    if report.dropped_answers:
        logger.warning("%s: dropped %s not in the context from questions kept for evaluation (first: %s)", path,
                       _count(report.dropped_answers, "gold answer", "gold answers"),
                       ", ".join(report.dropped_answer_ids[:5]))
    return examples, report


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------
_FLAT_FIELDS = ("input_ids", "token_type_ids", "p_mask", "offsets", "max_context")
_FEATURE_FIELDS = ("example_index", "cls_index", "start_positions", "end_positions", "is_impossible")


@dataclass
class SquadFeatures:
    """All features as ragged (CSR) arrays: feature i is flat[feature_start[i]:feature_start[i+1]]."""

    input_ids: np.ndarray  # int32 [T]
    token_type_ids: np.ndarray  # int8 [T]
    p_mask: np.ndarray  # int8 [T]; 1 = cannot be in an answer, 0 = context token, CLS forced 0
    offsets: np.ndarray  # int32 [T, 2]; char span in example.context for context tokens, -1 otherwise
    max_context: np.ndarray  # bool [T]; context token is in its max-context window
    feature_start: np.ndarray  # int64 [N+1]
    example_index: np.ndarray  # int32 [N]
    cls_index: np.ndarray  # int32 [N], unpadded position
    start_positions: np.ndarray  # int32 [N], unpadded; cls_index when no answer in the window
    end_positions: np.ndarray  # int32 [N]
    is_impossible: np.ndarray  # int8 [N]; 1 when labelled at CLS
    padding_side: str = "right"
    pad_token_id: int = 0
    pad_token_type_id: int = 0

    def __len__(self) -> int:
        return len(self.feature_start) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.feature_start)

    def token_slice(self, i: int) -> slice:
        return slice(int(self.feature_start[i]), int(self.feature_start[i + 1]))

    def select(self, idx) -> SquadFeatures:
        """Features idx (in that order) as a new SquadFeatures; example_index is unchanged."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.lengths()[idx]
        starts = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        flat = ragged_index(self.feature_start[idx], lengths, int(starts[-1]))
        kwargs = {name: getattr(self, name)[flat] for name in _FLAT_FIELDS}
        kwargs.update({name: getattr(self, name)[idx] for name in _FEATURE_FIELDS})
        return SquadFeatures(feature_start=starts, padding_side=self.padding_side, pad_token_id=self.pad_token_id,
                             pad_token_type_id=self.pad_token_type_id, **kwargs)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in (*_FLAT_FIELDS, "feature_start", *_FEATURE_FIELDS)}
        out["meta"] = np.array(json.dumps({"padding_side": self.padding_side, "pad_token_id": self.pad_token_id,
                                           "pad_token_type_id": self.pad_token_type_id}))
        return out

    @classmethod
    def from_arrays(cls, arrays) -> SquadFeatures:
        meta = json.loads(str(arrays["meta"]))
        names = (*_FLAT_FIELDS, "feature_start", *_FEATURE_FIELDS)
        return cls(**{name: np.asarray(arrays[name]) for name in names}, **meta)


def ragged_index(starts: np.ndarray, lengths: np.ndarray, total: int) -> np.ndarray:
    """Flat indices of the concatenated slices [starts[k], starts[k]+lengths[k])."""
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    out_starts = np.cumsum(lengths) - lengths
    return np.repeat(starts - out_starts, lengths) + np.arange(total, dtype=np.int64)


@dataclass(frozen=True)
class PairTemplate:
    """The tokenizer's own layout of a (first, second) pair, derived once by encoding a probe pair.

    items: ("S", token_id, type_id) for a special token, ("A", type_id) / ("B", type_id) for the
    first / second sequence.  BERT: S A S B S; RoBERTa: S A S S B S; XLNet: A S B S S(cls, type 2).
    """

    items: tuple
    cls_position_from_end: int | None  # XLNet puts CLS last: position counted from the end
    cls_position: int  # position from the start when the CLS precedes both sequences
    num_special: int
    second_offset_specials: int  # specials before sequence B

    def cls_index(self, length: int) -> int:
        if self.cls_position_from_end is not None:
            return length - 1 - self.cls_position_from_end
        return self.cls_position


def derive_pair_template(backend, cls_token_id: int | None) -> PairTemplate:
    """Read the pair template off an encoding of a probe pair (works for any post-processor)."""
    enc = backend.encode("a", "b", add_special_tokens=True)
    items = []
    for tok_id, type_id, seq, mask in zip(enc.ids, enc.type_ids, enc.sequence_ids, enc.attention_mask, strict=True):
        if not mask:
            continue  # padding, should the backend have it switched on
        if seq is None:
            items.append(("S", tok_id, type_id))
        else:
            name = "A" if seq == 0 else "B"
            if not items or items[-1][0] != name:
                items.append((name, type_id))
    if [it[0] for it in items if it[0] != "S"] != ["A", "B"]:
        raise ValueError(f"cannot derive the pair template of this tokenizer: {items}")
    specials = [i for i, it in enumerate(items) if it[0] == "S"]
    cls_items = [i for i in specials if items[i][1] == cls_token_id]
    b_at = next(i for i, it in enumerate(items) if it[0] == "B")
    a_at = next(i for i, it in enumerate(items) if it[0] == "A")
    cls_from_end, cls_pos = None, 0
    if cls_items:
        at = cls_items[0]
        if at < a_at:
            cls_pos = at  # the two sequences follow it: a fixed position
        else:
            cls_from_end = len(items) - 1 - at  # after sequences: all items after are specials
    else:
        logger.warning("tokenizer has no CLS token in its pair template; using position 0 as no-answer")
    return PairTemplate(tuple(items), cls_from_end, cls_pos, len(specials),
                        sum(1 for it in items[:b_at] if it[0] == "S"))


def _whitespace_codepoints() -> np.ndarray:
    return np.array([c for c in range(0x3100) if chr(c).isspace()] + [0xFEFF], dtype=np.int32)


_WS = _whitespace_codepoints()


def trim_offsets_whitespace(context: str, offsets: np.ndarray) -> np.ndarray:
    """Offsets without leading/trailing whitespace (byte-level BPE and Metaspace include the space)."""
    if len(offsets) == 0:
        return offsets
    codes = np.frombuffer(context.encode("utf-32-le"), dtype=np.int32)
    is_ws = np.isin(codes, _WS)
    if not is_ws.any():
        return offsets
    n = len(codes)
    pos = np.arange(n + 1, dtype=np.int64)
    # next_non_ws[i]: first non-whitespace position >= i (n if none)
    marks = np.where(np.append(~is_ws, True), pos, n)
    next_non_ws = np.minimum.accumulate(marks[::-1])[::-1]
    # end_after_last_non_ws[e]: 1 + last non-whitespace position < e (0 if none)
    ends = np.where(np.insert(~is_ws, 0, False), pos, 0)
    prev_end = np.maximum.accumulate(ends)
    start = np.minimum(next_non_ws[offsets[:, 0]], offsets[:, 1])
    end = np.maximum(prev_end[offsets[:, 1]], start)
    return np.stack([start, end], axis=1).astype(np.int32)


def _window_starts(n_tokens: int, window: int, doc_stride: int) -> list[tuple[int, int]]:
    """Classic (start, length) of each window; at least one (possibly empty) window."""
    spans, start = [], 0
    while True:
        length = min(n_tokens - start, window)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, doc_stride)


def _max_context_owner(n_tokens: int, spans) -> np.ndarray:
    """Index of the window where each context token has the most context (first window on ties)."""
    best = np.full(n_tokens, -np.inf)
    owner = np.zeros(n_tokens, dtype=np.int32)
    for w, (start, length) in enumerate(spans):
        pos = np.arange(start, start + length)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        better = score > best[start:start + length]
        best[start:start + length][better] = score[better]
        owner[start:start + length][better] = w
    return owner


def _answer_token_span(ex: SquadExample, offsets: np.ndarray) -> tuple[int, int] | None:
    """Context token span (inclusive) covering the first gold answer, via character offsets."""
    span = ex.answer_char_span
    if span is None or len(offsets) == 0:
        return None
    s_char, e_char = span
    tok_start = int(np.searchsorted(offsets[:, 1], s_char, side="right"))  # first token ending after s_char
    tok_end = int(np.searchsorted(offsets[:, 0], e_char, side="left")) - 1  # last token starting before e_char
    if tok_start >= len(offsets) or tok_end < tok_start:
        return None
    return tok_start, tok_end


@dataclass
class _Spec:
    """What a worker needs to featurize: picklable, no transformers objects."""

    backend_json: str
    template: PairTemplate
    settings: FeatureSettings | None  # None: a tokenizer's spec before spec_for
    padding_side: str
    pad_token_id: int
    pad_token_type_id: int


def plain_backend(backend_json: str) -> Tokenizer:
    """A tokenizer backend (its JSON) without truncation or padding: how the featurizer tokenizes text."""
    backend = Tokenizer.from_str(backend_json)
    backend.no_truncation()
    backend.no_padding()
    return backend


class _FeatureBuilder:
    """Accumulates per-window pieces of one chunk of examples and concatenates them once."""

    def __init__(self, spec: _Spec):
        self.spec = spec
        self.ids, self.types, self.pmask, self.offs, self.maxctx, self.lengths = [], [], [], [], [], []
        self.example_index, self.cls_index, self.starts, self.ends, self.impossible = [], [], [], [], []

    def add_window(self, ex_index, q_ids, c_ids, c_offs, c_maxctx, answer_span_in_window):
        spec, tmpl = self.spec, self.spec.template
        first_is_ctx = spec.settings.context_first
        n_q, n_c = len(q_ids), len(c_ids)
        for item in tmpl.items:
            kind = item[0]
            if kind == "S":
                self._piece(np.array([item[1]], np.int32), item[2], 1, None, 1)
            elif (kind == "A") == first_is_ctx:
                self._piece(c_ids, item[1], 0, c_offs, n_c, c_maxctx)
            else:
                self._piece(q_ids, item[1], 1, None, n_q)
        length = n_q + n_c + tmpl.num_special
        cls = tmpl.cls_index(length)
        ctx_pos = self._context_position(n_q)
        if answer_span_in_window is None:
            start = end = cls
        else:
            start, end = ctx_pos + answer_span_in_window[0], ctx_pos + answer_span_in_window[1]
        self.lengths.append(length)
        self.example_index.append(ex_index)
        self.cls_index.append(cls)
        self.starts.append(start)
        self.ends.append(end)
        self.impossible.append(start == cls)

    def _context_position(self, n_q: int) -> int:
        """Unpadded position of the first context token in a window."""
        pos = 0
        for item in self.spec.template.items:
            if item[0] == "S":
                pos += 1
            elif (item[0] == "A") == self.spec.settings.context_first:
                return pos
            else:
                pos += n_q
        return pos

    def _piece(self, ids, type_id, pmask, offs, n, maxctx=None):
        self.ids.append(ids)
        self.types.append(np.full(n, type_id, np.int8))
        self.pmask.append(np.full(n, pmask, np.int8))
        self.offs.append(offs if offs is not None else np.full((n, 2), -1, np.int32))
        self.maxctx.append(maxctx if maxctx is not None else np.zeros(n, np.bool_))

    def finish(self) -> SquadFeatures:
        spec = self.spec
        feature_start = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=feature_start[1:])
        cls_index = np.array(self.cls_index, dtype=np.int32)
        p_mask = _concat(self.pmask, np.int8)
        p_mask[feature_start[:-1] + cls_index] = 0  # the CLS token is the no-answer target
        return SquadFeatures(
            input_ids=_concat(self.ids, np.int32), token_type_ids=_concat(self.types, np.int8), p_mask=p_mask,
            offsets=_concat(self.offs, np.int32).reshape(-1, 2), max_context=_concat(self.maxctx, np.bool_),
            feature_start=feature_start, example_index=np.array(self.example_index, dtype=np.int32),
            cls_index=cls_index, start_positions=np.array(self.starts, dtype=np.int32),
            end_positions=np.array(self.ends, dtype=np.int32), is_impossible=np.array(self.impossible, np.int8),
            padding_side=spec.padding_side, pad_token_id=spec.pad_token_id, pad_token_type_id=spec.pad_token_type_id,
        )


def _concat(pieces, dtype) -> np.ndarray:
    return np.concatenate(pieces).astype(dtype, copy=False) if pieces else np.zeros(0, dtype)


def _encoding_arrays(enc, first_char: int = 0,
                     words: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ids, offsets (shifted by first_char) and word ids (-1 for none; None unless ``words``: a Python loop over
    the tokens) of one tokenizers Encoding."""
    ids = np.asarray(enc.ids, dtype=np.int32)
    offsets = np.asarray(enc.offsets, dtype=np.int32).reshape(-1, 2) + first_char
    word_ids = np.array([-1 if w is None else w for w in enc.word_ids], dtype=np.int64) if words else None
    return ids, offsets, word_ids


def piece_starts(text: str, piece_chars: int) -> list[int]:
    """Where to cut a long text for tokenizing it in pieces: before a space that follows a non-space character,
    at least piece_chars after the previous cut. Every tokenizer here splits words there (whitespace,
    Metaspace, byte-level BPE), and a piece starting with that space gets no extra prefix, so the pieces give the
    whole text's tokens (tested for every family). A text without such a space stays whole."""
    starts = [0]
    while len(text) - starts[-1] > piece_chars:
        cut = text.find(" ", starts[-1] + piece_chars)
        while cut != -1 and text[cut - 1].isspace():
            cut = text.find(" ", cut + 1)
        if cut == -1:
            break
        starts.append(cut)
    return starts


def encode_contexts(backend, contexts: Sequence[str],
                    words: bool = True) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(ids, offsets, word ids: None unless ``words``) of each context, without special tokens. Contexts up to
    LONG_CONTEXT_CHARS are encoded in one batch; a longer one in pieces (piece_starts), one at a time, so that its
    cost is its tokens' arrays, not the tokenizer's working memory for the whole string (measured with a BERT
    tokenizer on a 2 MB context: 370 MB above the loaded tokenizer whole, 130 MB in pieces; bench/RESULTS.md)."""
    short = [c for c in contexts if len(c) <= LONG_CONTEXT_CHARS]
    encoded = iter(backend.encode_batch(short, add_special_tokens=False)) if short else iter(())
    return [_encoding_arrays(next(encoded), words=words) if len(c) <= LONG_CONTEXT_CHARS
            else _encode_long(backend, c, words) for c in contexts]


def _encode_long(backend, text: str, words: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    bounds = [*piece_starts(text, LONG_CONTEXT_CHARS), len(text)]
    parts, next_word = [], 0
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        ids, offsets, word_ids = _encoding_arrays(backend.encode(text[start:end], add_special_tokens=False), start,
                                                  words)
        if word_ids is not None:
            word_ids[word_ids >= 0] += next_word  # word ids count on across pieces
            next_word = int(word_ids.max()) + 1 if len(word_ids) and word_ids.max() >= 0 else next_word
        parts.append((ids, offsets, word_ids))
    ids, offsets = (np.concatenate([p[k] for p in parts]) for k in range(2))
    return ids, offsets, np.concatenate([p[2] for p in parts]) if words else None


def _tokenize_contexts(backend, contexts: list[str]):
    """(ids, trimmed offsets) per distinct context, tokenized once without special tokens (no word ids)."""
    return [(ids, trim_offsets_whitespace(context, offsets)) for context, (ids, offsets, _)
            in zip(contexts, encode_contexts(backend, contexts, words=False), strict=True)]


def _featurize_chunk(spec: _Spec, examples: Sequence[SquadExample], first_index: int, backend=None):
    """Features of examples[...] whose example_index starts at first_index."""
    backend = backend or plain_backend(spec.backend_json)
    settings = spec.settings
    context_ids: dict[str, int] = {}
    for ex in examples:
        context_ids.setdefault(ex.context, len(context_ids))
    contexts = _tokenize_contexts(backend, list(context_ids))
    questions = backend.encode_batch([ex.question.lstrip() for ex in examples], add_special_tokens=False)
    builder = _FeatureBuilder(spec)
    for k, (ex, q_enc) in enumerate(zip(examples, questions, strict=True)):
        q_ids = np.asarray(q_enc.ids[: settings.max_query_length], dtype=np.int32)
        c_ids, c_offs = contexts[context_ids[ex.context]]
        window = settings.max_seq_length - len(q_ids) - spec.template.num_special
        step = settings.doc_stride if settings.window_overlap is None else max(window - settings.window_overlap, 1)
        spans = _window_starts(len(c_ids), window, step)
        owner = _max_context_owner(len(c_ids), spans)
        answer = _answer_token_span(ex, c_offs) if settings.is_training else None
        for w, (start, length) in enumerate(spans):
            end = start + length
            in_window = None
            if answer is not None and answer[0] >= start and answer[1] < end:
                in_window = (answer[0] - start, answer[1] - start)
            builder.add_window(first_index + k, q_ids, c_ids[start:end], c_offs[start:end],
                               owner[start:end] == w, in_window)
    return builder.finish()


def labelled_answer_texts(features: SquadFeatures, examples: Sequence[SquadExample]) -> list[str | None]:
    """Per feature the context text its (start, end) label covers, None when labelled at CLS."""
    texts: list[str | None] = []
    for i in range(len(features)):
        if features.is_impossible[i]:
            texts.append(None)
            continue
        base = int(features.feature_start[i])
        start = features.offsets[base + features.start_positions[i], 0]
        end = features.offsets[base + features.end_positions[i], 1]
        texts.append(examples[features.example_index[i]].context[start:end])
    return texts


def concat_features(parts: Sequence[SquadFeatures]) -> SquadFeatures:
    """One SquadFeatures from several (example_index values are kept as they are)."""
    first = parts[0]
    lengths = np.concatenate([p.lengths() for p in parts])
    feature_start = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=feature_start[1:])
    kwargs = {name: np.concatenate([getattr(p, name) for p in parts]) for name in (*_FLAT_FIELDS, *_FEATURE_FIELDS)}
    return SquadFeatures(feature_start=feature_start, padding_side=first.padding_side,
                         pad_token_id=first.pad_token_id, pad_token_type_id=first.pad_token_type_id, **kwargs)


class FeatureSettingsError(ValueError):
    """Window settings that no feature can satisfy with this tokenizer's special tokens (a usage error)."""

    def __init__(self, settings: FeatureSettings, num_special: int):
        self.settings, self.num_special = settings, num_special
        super().__init__(f"max_seq_length ({settings.max_seq_length}) must exceed max_query_length "
                         f"({settings.max_query_length}) + {num_special} special tokens")


def _check_settings(settings: FeatureSettings, template: PairTemplate) -> None:
    # Google's check: a window must be able to hold at least one context token after a full question,
    # with this tokenizer's own number of special tokens (BERT 3, RoBERTa 4).
    if settings.max_seq_length <= settings.max_query_length + template.num_special:
        raise FeatureSettingsError(settings, template.num_special)
    if settings.doc_stride < 1 or settings.max_query_length < 1:
        raise ValueError("doc_stride and max_query_length must be positive")


def check_sequence_lengths(tokenizer, settings: FeatureSettings) -> None:
    """The one check of the window settings (raises FeatureSettingsError), before any featurization."""
    feature_spec(tokenizer, settings)


def feature_spec(tokenizer, settings: FeatureSettings) -> _Spec:
    """Everything about the tokenizer the featurizer needs, checked once."""
    return spec_for(tokenizer_spec(tokenizer), settings)


def tokenizer_spec(tokenizer) -> _Spec:
    """What the featurizer needs of a tokenizer, without window settings (spec_for adds them)."""
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; character offsets are required")
    backend_json = tokenizer.backend_tokenizer.to_str()
    template = derive_pair_template(plain_backend(backend_json), tokenizer.cls_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _Spec(backend_json, template, None, tokenizer.padding_side, int(pad_id),
                 int(getattr(tokenizer, "pad_token_type_id", 0) or 0))


def spec_for(spec: _Spec, settings: FeatureSettings) -> _Spec:
    """The same tokenizer's spec for other window settings, checked, without reading the tokenizer again
    (feature_spec parses its JSON: ~0.1 s for a BERT vocabulary, which a pipeline would pay on every call)."""
    _check_settings(settings, spec.template)
    return replace(spec, settings=settings)


_WORKER: dict = {}


def _worker_init(spec: _Spec) -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent stops the pool, workers say nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Each worker is one process on one core: the Rust thread pool would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # The spec (with the tokenizer JSON) travels once per worker, not once per chunk.
    _WORKER["spec"], _WORKER["backend"] = spec, plain_backend(spec.backend_json)


def _worker_run(args):
    examples, first_index = args
    return _featurize_chunk(_WORKER["spec"], examples, first_index, _WORKER["backend"])


def convert_examples_to_features(examples: Sequence[SquadExample], tokenizer, settings: FeatureSettings,
                                 threads: int = 1, spec: _Spec | None = None,
                                 backend: Tokenizer | None = None) -> SquadFeatures:
    """Sliding-window features of all examples (classic window rule, max-context flags, labels). spec and
    backend: the tokenizer's, prepared once by a caller that featurizes many times (spec_for, plain_backend)."""
    spec = spec_for(spec, settings) if spec is not None else feature_spec(tokenizer, settings)
    chunks = [(i, examples[i:i + CHUNK_EXAMPLES]) for i in range(0, len(examples), CHUNK_EXAMPLES)]
    if threads > 1 and len(chunks) > 1:
        # spawn, not fork: forking after the Rust thread pool has run can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(threads, len(chunks)), initializer=_worker_init, initargs=(spec,)) as pool:
            parts = pool.map(_worker_run, [(chunk, first) for first, chunk in chunks], chunksize=1)
    else:
        backend = backend or plain_backend(spec.backend_json)
        parts = [_featurize_chunk(spec, chunk, first, backend) for first, chunk in chunks]
    if not parts:
        raise ValueError("no examples to featurize")
    features = concat_features(parts)
    if settings.is_training:
        labelled = int((features.is_impossible == 0).sum())
        logger.info("Built %d training features from %d questions (%d with the answer span in the window)",
                    len(features), len(examples), labelled)
    else:  # evaluation features carry no labels: the answers are scored on the text, after decoding
        logger.info("Built %d evaluation features from %d questions", len(features), len(examples))
    return features


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Token ids the featurizer or collate writes into features: the pair template is found by the CLS
# id, padding uses the pad ids.  They live on the Python tokenizer, not in the backend JSON, so
# setting tokenizer.pad_token (or another special token) must change the cache key by itself.
_BAKED_IN_IDS = ("pad_token_id", "pad_token_type_id", "cls_token_id", "sep_token_id", "bos_token_id",
                 "eos_token_id", "unk_token_id", "mask_token_id")


def tokenizer_identity(tokenizer) -> dict:
    """What makes two tokenizers featurize alike: class, vocabulary, pipeline JSON, padding, special ids."""
    backend_json = tokenizer.backend_tokenizer.to_str()
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "backend_sha256": hashlib.sha256(backend_json.encode("utf-8")).hexdigest(),
        "padding_side": tokenizer.padding_side,
        "special_ids": {name: getattr(tokenizer, name, None) for name in _BAKED_IN_IDS},
    }


def examples_digest(examples: Sequence[SquadExample]) -> str:
    """Covers reader flags (v2, skipped/repaired answers) that the file hash alone does not."""
    digest = hashlib.sha256()
    for ex in examples:
        span = ex.answer_char_span
        digest.update(f"{ex.qas_id}\x00{int(ex.is_impossible)}\x00{span}\x00{len(ex.context)}\n".encode())
    return digest.hexdigest()


def features_cache_key(data_path, examples, tokenizer, settings: FeatureSettings) -> str:
    payload = {
        "format_version": FEATURES_FORMAT_VERSION,
        "data_sha256": file_sha256(data_path),
        "examples": examples_digest(examples),
        "tokenizer": tokenizer_identity(tokenizer),
        "settings": asdict(settings),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path_for(cache_dir, data_path, settings: FeatureSettings, key: str) -> Path:
    split = "train" if settings.is_training else "eval"
    return Path(cache_dir) / f"cached_{Path(data_path).stem}_{split}_{key[:20]}.npz"


def features_cache_dir(flag: str | None = None) -> Path:
    """--features_cache_dir, else $RUN_SQUAD_CACHE, else ~/.cache/run_squad/features.

    Features are cached per user, not beside the data: data folders are often shared or read-only. Cache
    names are content and settings hashes, so sweeps with other output folders reuse them safely.
    """
    if flag:
        return Path(flag)
    if os.environ.get("RUN_SQUAD_CACHE"):
        return Path(os.environ["RUN_SQUAD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "run_squad" / "features"


def dataset_to_jsonl(name: str, split: str, target: Path, cache_dir: str | None = None) -> None:
    """A HuggingFace `datasets` split (--dataset_name) as HF-layout JSON Lines, for the normal reader and cache."""
    try:
        datasets = importlib.import_module("datasets")  # optional: only --dataset_name needs it
    except ImportError as exc:
        raise SquadDataError("--dataset_name needs the optional `datasets` package (pip install datasets)") from exc
    try:
        rows = datasets.load_dataset(name, split=split, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - any loading failure (offline, unknown name) is one line
        reason = atomic_io.first_line(exc)
        raise SquadDataError(f"--dataset_name {name}: cannot load split {split!r} ({reason})") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    fields = ("id", "title", "context", "question", "answers")
    lines = [json.dumps({k: row[k] for k in fields if k in row}, ensure_ascii=False) for row in rows]
    atomic_io.write_text_atomic(target, "\n".join(lines) + "\n")


def remove_orphan_temporaries(folder) -> int:
    """Delete cache temporaries left by killed runs (see atomic_io.remove_stale_temporaries)."""
    removed = atomic_io.remove_stale_temporaries(folder, "cached_*.npz")
    if removed:
        logger.info("Removed %d orphan temporary cache files from %s", removed, folder)
    return removed


def save_features(path, features: SquadFeatures, key: str) -> None:
    """Written atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Killed runs leave temporaries (often GBs) behind: clear old ones whenever a cache entry is written.
    remove_orphan_temporaries(path.parent)
    atomic_io.write_file_atomic(path, lambda fh: np.savez(fh, cache_key=np.array(key), **features.arrays()),
                                binary=True)


def _verify(features: SquadFeatures, n_examples: int) -> None:
    n, t = len(features), int(features.feature_start[-1])
    if features.feature_start[0] != 0 or np.any(np.diff(features.feature_start) < 0):
        raise ValueError("feature_start is not increasing")
    for name in _FLAT_FIELDS:
        if len(getattr(features, name)) != t:
            raise ValueError(f"{name} has the wrong length")
    for name in _FEATURE_FIELDS:
        if len(getattr(features, name)) != n:
            raise ValueError(f"{name} has the wrong length")
    if n and (features.example_index.max() >= n_examples or features.example_index.min() < 0):
        raise ValueError("example_index out of range")


def load_features(path, key: str, n_examples: int) -> SquadFeatures | None:
    """Features from a cache file, or None when missing, for another key, truncated or corrupt."""
    if not Path(path).is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["cache_key"]) != key:
                return None
            arrays = {name: data[name] for name in data.files}  # reading checks each member's CRC
        features = SquadFeatures.from_arrays(arrays)
        _verify(features, n_examples)
        return features
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("Ignoring unreadable feature cache %s (%s); rebuilding", path, exc)
        return None


def _cache_problem(exc: OSError, folder: Path) -> str:
    if isinstance(exc, (FileExistsError, NotADirectoryError)) or (folder.exists() and not folder.is_dir()):
        return "a file is where the folder should be"
    return exc.strerror or atomic_io.first_line(exc)


def usable_cache_dir(cache_dir) -> Path | None:
    """The cache folder, created if needed; None (with one warning naming it and why) when it cannot be: the
    cache only saves time, so the run goes on without it."""
    folder = Path(cache_dir)
    try:
        atomic_io.make_folder(folder)  # remembered: a run that fails leaves no empty cache folder
    except OSError as exc:
        logger.warning("feature cache %s cannot be used (%s): features are built without it", folder,
                       _cache_problem(exc, folder))
        return None
    return folder


def load_or_build_features(data_path, examples, tokenizer, settings: FeatureSettings, cache_dir,
                           overwrite_cache: bool = False, threads: int = 1) -> SquadFeatures:
    """Cached features keyed by data content, examples, tokenizer identity, settings and format. A cache that
    cannot be read or written (a file in its place, read-only, full) is warned about once and done without."""
    cache_dir = usable_cache_dir(cache_dir) if cache_dir is not None else None
    if cache_dir is None:
        return convert_examples_to_features(examples, tokenizer, settings, threads)
    key = features_cache_key(data_path, examples, tokenizer, settings)
    path = cache_path_for(cache_dir, data_path, settings, key)
    if not overwrite_cache:
        features = load_features(path, key, len(examples))
        if features is not None:
            logger.info("Loaded %d %s features for %d questions from the cache %s", len(features),
                        "training" if settings.is_training else "evaluation", len(examples), path)
            return features
    features = convert_examples_to_features(examples, tokenizer, settings, threads)
    try:
        save_features(path, features, key)
    except OSError as exc:  # the temporary is already removed: nothing half-written stays in the cache
        logger.warning("feature cache %s cannot be written (%s): going on without it", cache_dir,
                       _cache_problem(exc, cache_dir))
        return features
    logger.info("Saved features to cache %s", path)
    return features


# --------------------------------------------------------------------------------------------
# Lower-casing
# --------------------------------------------------------------------------------------------
def tokenizer_lowercases(tokenizer) -> bool:
    normalizer = tokenizer.backend_tokenizer.normalizer
    return normalizer is not None and normalizer.normalize_str("AbC") == "abc"


def apply_do_lower_case(tokenizer, do_lower_case: bool):
    """Honour --do_lower_case through the tokenizer's normalizer, never by lowercasing the text.

    The normalizer keeps its alignment to the original characters, so offsets stay exact and the
    text is lowercased once.  For an uncased tokenizer without the flag nothing changes (its
    vocabulary has no capitals); for a cased tokenizer with the flag a Lowercase step is prepended
    to its normalizer, with a warning, since that vocabulary was trained on cased text.
    """
    lowers = tokenizer_lowercases(tokenizer)
    if do_lower_case and not lowers:
        backend = tokenizer.backend_tokenizer
        current = backend.normalizer
        steps = [normalizers.Lowercase()] + ([current] if current is not None else [])
        backend.normalizer = normalizers.Sequence(steps)
        logger.warning("--do_lower_case given for a cased tokenizer (%s): lower-casing its input",
                       type(tokenizer).__name__)
    elif not do_lower_case and lowers:
        logger.info("tokenizer %s lower-cases its input itself (uncased vocabulary)", type(tokenizer).__name__)
    return tokenizer
