#!/usr/bin/env python
"""Answer questions about raw text with a fine-tuned model: transformers 4's question-answering pipeline,
rebuilt for transformers 5, which removed ``pipeline("question-answering")`` in 5.3::

    from qa_pipeline import QuestionAnsweringPipeline      # was: from transformers import pipeline
    qa = QuestionAnsweringPipeline("path/to/model")         # was: pipeline("question-answering", model=...)
    python qa_pipeline.py MODEL_DIR [--input FILE.jsonl] [--top_k K] [--handle_impossible_answer] ...

Why a module of its own: it is the one path from raw question and context to answers. It takes the windows
of utils_squad.py, the model of qa_model.py, the batches and heads of batching.py and, for the tuned
no-answer threshold, the classic decoder of decoding.py; what it adds is 4.x's arithmetic. cli.py checks
the command's flags and input lines before torch is imported.

The scores are 4.x's. Where it departs from 4.x on purpose, and the window arithmetic it keeps, are in the
README, under "Where qa_pipeline departs from transformers 4.x". Exit codes of the command: 0 success,
2 bad input, flags or model folder (one line on stderr, nothing on standard output), 1 anything else.
"""

from __future__ import annotations

import sys

from squad_internals import cli

if __name__ == "__main__":  # the flags, the model folder and every input line are checked before torch is imported
    command = cli.exit_now_if_bad(lambda: cli.check_pipeline_command(sys.argv[1:]))

import contextlib
import copy
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

import utils_squad
from squad_internals import batching, checkpoints, decoding, fast_path, output_folder, process_group, qa_model
from squad_internals.output_folder import THRESHOLD_FILE, NullThreshold, trained_context_first

MASKED_LOGIT = -10000.0  # 4.x's logit for tokens that cannot be in an answer
NO_NULL_SCORE = 1000000.0  # 4.x's starting "smallest null score" (large and positive)
DEFAULT_BATCH_SIZE = 32  # windows per forward pass (the command's --batch_size default too)
ANSWER_KEYS = ("score", "start", "end", "answer")
# Windows go through the model this many batches at a time, each chunk ranked before the next one runs.
CHUNK_BATCHES = 8
INPUT_KEYS = ("question", "context", "X", "data")
logger = logging.getLogger(__name__)
HALF_DTYPES = ("float16", "bfloat16")


class PipelineInputError(ValueError):
    """Inputs, settings or a model folder the pipeline cannot answer with; str() is one line (exit code 2)."""


# --------------------------------------------------------------------------------------------
# Inputs: every form 4.x's argument handler took
# --------------------------------------------------------------------------------------------


def _pair_of(item, position: int) -> tuple[str, str]:
    """(question, context) of a dict or a SQuAD example object (4.x's SquadExample or ours)."""
    if isinstance(item, dict):
        for key in ("question", "context"):
            if key not in item:
                raise KeyError("You need to provide a dictionary with keys {question:..., context:...}")
        question, context = item["question"], item["context"]
    elif hasattr(item, "question_text") and hasattr(item, "context_text"):
        question, context = item.question_text, item.context_text
    elif isinstance(item, utils_squad.SquadExample):
        question, context = item.question, item.context
    else:
        raise ValueError(f"{item} argument needs to be of type (SquadExample, dict)")
    for key, value in (("question", question), ("context", context)):
        if value is None:
            raise ValueError(f"`{key}` cannot be None")
        if not isinstance(value, str):
            raise ValueError(f"input {position}: `{key}` must be a string, got {type(value).__name__}")
        if not value:
            raise ValueError(f"`{key}` cannot be empty")
    return question, context


def _keyword_inputs(question, context) -> list[dict]:
    if isinstance(question, list) and isinstance(context, str):
        return [{"question": q, "context": context} for q in question]
    if isinstance(question, list) and isinstance(context, list):
        if len(question) != len(context):
            raise ValueError("Questions and contexts don't have the same lengths")
        return [{"question": q, "context": c} for q, c in zip(question, context, strict=True)]
    if isinstance(question, str) and isinstance(context, str):
        return [{"question": question, "context": context}]
    raise ValueError("Arguments can't be understood")


def normalize_inputs(args: tuple, kwargs: dict) -> list[tuple[str, str]]:
    """The (question, context) pairs of a call, from any form 4.x accepted: question=/context= (strings, lists,
    or a list of questions about one context), one dict or a list of dicts (positionally, X= or data=), two
    positional strings, SQuAD example objects."""
    if args:
        if len(args) == 1:
            inputs = args[0]
        elif len(args) == 2 and all(isinstance(a, str) for a in args):
            inputs = [{"question": args[0], "context": args[1]}]
        else:
            inputs = list(args)
    elif "X" in kwargs or "data" in kwargs:
        inputs = kwargs["X"] if "X" in kwargs else kwargs["data"]
    elif "question" in kwargs and "context" in kwargs:
        inputs = _keyword_inputs(kwargs["question"], kwargs["context"])
    else:
        raise ValueError(f"Unknown arguments {kwargs}")
    if isinstance(inputs, dict):
        inputs = [inputs]
    elif isinstance(inputs, Iterable) and not isinstance(inputs, str):
        inputs = list(inputs)
    else:
        raise ValueError(f"Invalid arguments {kwargs}")
    return [_pair_of(item, i) for i, item in enumerate(inputs)]


# --------------------------------------------------------------------------------------------
# Settings of a call
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallSettings:
    """The keyword arguments of a call (4.x's names and defaults), checked and resolved."""

    top_k: int = 1
    doc_stride: int = 128  # the overlap of consecutive windows, in tokens (4.x's meaning)
    max_answer_len: int = 15
    max_seq_len: int = 384
    max_question_len: int = 64
    handle_impossible_answer: bool = False
    align_to_words: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def pre_top_k(self) -> int:
        """Spans kept per window before whole-word widening and merging (4.x's rule)."""
        return self.top_k * 2 + 10 if self.align_to_words else self.top_k


def _whole_number(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise PipelineInputError(f"{name} parameter should be an integer >= {minimum} (got {value!r})")
    return int(value)


def _given(kwargs: dict, key: str, default):
    value = kwargs.get(key)
    return default if value is None else value


def call_settings(kwargs: dict, model_max_length: int, batch_size: int) -> CallSettings:
    """4.x's defaults (max_seq_len min(model_max_length, 384), doc_stride min(max_seq_len // 2, 128)) and
    checks; the deprecated ``topk`` is still taken. Unknown keywords are a TypeError."""
    kwargs = dict(kwargs)
    if "topk" in kwargs:
        topk = kwargs.pop("topk")
        if kwargs.get("top_k") is None:
            warnings.warn("topk parameter is deprecated, use top_k instead", UserWarning, stacklevel=3)
            kwargs["top_k"] = topk
    unknown = sorted(set(kwargs) - set(CallSettings.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}")
    max_seq_len = _whole_number("max_seq_len", _given(kwargs, "max_seq_len", min(model_max_length, 384)), 1)
    settings = CallSettings(
        top_k=_whole_number("top_k", _given(kwargs, "top_k", 1), 1),
        doc_stride=_whole_number("doc_stride", _given(kwargs, "doc_stride", min(max_seq_len // 2, 128)), 0),
        max_answer_len=_whole_number("max_answer_len", _given(kwargs, "max_answer_len", 15), 1),
        max_seq_len=max_seq_len,
        max_question_len=_whole_number("max_question_len", _given(kwargs, "max_question_len", 64), 1),
        handle_impossible_answer=bool(_given(kwargs, "handle_impossible_answer", False)),
        align_to_words=bool(_given(kwargs, "align_to_words", True)),
        batch_size=_whole_number("batch_size", _given(kwargs, "batch_size", batch_size), 1))
    if settings.doc_stride > settings.max_seq_len:
        raise PipelineInputError(f"`doc_stride` ({settings.doc_stride}) is larger than `max_seq_len` "
                                 f"({settings.max_seq_len})")
    return settings


# --------------------------------------------------------------------------------------------
# The tuned no-answer threshold
# --------------------------------------------------------------------------------------------


def read_threshold_file(path: Path) -> NullThreshold:
    """The tuned threshold evaluation wrote (output_folder reads it); a bad file is a PipelineInputError, one
    line naming it and what is wrong."""
    try:
        return output_folder.read_threshold(path)
    except output_folder.ThresholdFileError as exc:
        raise PipelineInputError(str(exc)) from None


def resolve_threshold(null_threshold, folder: Path | None) -> NullThreshold | None:
    """"auto": the folder's file when it has one; None: never; a number: that threshold."""
    if null_threshold is None:
        return None
    if isinstance(null_threshold, str) and null_threshold == "auto":
        path = folder / THRESHOLD_FILE if folder is not None else None
        return read_threshold_file(path) if path is not None and path.is_file() else None
    if isinstance(null_threshold, bool) or not isinstance(null_threshold, (int, float)):
        raise ValueError(f"null_threshold must be 'auto', None or a number, got {null_threshold!r}")
    return NullThreshold(float(null_threshold))


# --------------------------------------------------------------------------------------------
# Windows: the featurizer's features for raw questions, with 4.x's overlap-style doc_stride
# --------------------------------------------------------------------------------------------


@dataclass
class Windows:
    """The features of one call, grouped by example in window order, and what 4.x's decoding needs of them."""

    features: utils_squad.SquadFeatures
    words: np.ndarray  # int64 [T]: word id of each context token in its context, -1 elsewhere
    examples: list


def _question_lengths(backend: Tokenizer, questions: Sequence[str], max_query_length: int) -> np.ndarray:
    # As the featurizer encodes them: leading whitespace dropped, no special tokens, cut to max_query_length.
    encodings = backend.encode_batch([q.lstrip() for q in questions], add_special_tokens=False)
    return np.minimum(np.array([len(e.ids) for e in encodings], dtype=np.int64), max_query_length)


def _steps(settings: CallSettings, n_question: np.ndarray, n_context: np.ndarray, specials: int) -> np.ndarray:
    """The featurizer's step between window starts that makes 4.x's overlap: window - doc_stride tokens."""
    window = settings.max_seq_len - n_question - specials
    step = window - settings.doc_stride
    too_long = (step < 1) & (n_context > window)
    if too_long.any():
        i = int(np.flatnonzero(too_long)[0])
        raise PipelineInputError(
            f"input {i}: doc_stride {settings.doc_stride} must be less than the {window[i]} context tokens a window "
            f"holds with this question (max_seq_len {settings.max_seq_len} - {n_question[i]} question tokens - "
            f"{specials} special tokens)")
    return np.maximum(step, 1)  # a context that fits one window: any step gives that one window


def _featurize(examples: list, tokenizer, backend: Tokenizer, spec, settings: CallSettings, max_query_length: int,
               context_first: bool) -> utils_squad.SquadFeatures:
    """One featurizer call: each question steps its own window minus doc_stride (the overlap). spec: the
    tokenizer's (utils_squad.tokenizer_spec), made once by the pipeline; None reads it from the tokenizer."""
    feature_settings = utils_squad.FeatureSettings(settings.max_seq_len, 1, max_query_length, context_first,
                                                   is_training=False, window_overlap=settings.doc_stride)
    return utils_squad.convert_examples_to_features(examples, tokenizer, feature_settings, spec=spec,
                                                    backend=backend if spec is not None else None)


def _window_words(features, steps: np.ndarray, contexts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per token the word id of its context token (window w of an example starts w * step tokens in)."""
    words = np.full(len(features.input_ids), -1, dtype=np.int64)
    first = np.searchsorted(features.example_index, features.example_index, side="left")
    for f in range(len(features)):
        ex = int(features.example_index[f])
        sl = features.token_slice(f)
        positions = np.flatnonzero(features.offsets[sl, 0] >= 0)
        start = (f - int(first[f])) * int(steps[ex])
        context_words, context_offsets = contexts[ex]
        tokens = np.arange(start, start + len(positions))
        if len(tokens) and (tokens[-1] >= len(context_words)
                            or not np.array_equal(context_offsets[tokens], features.offsets[sl][positions])):
            raise RuntimeError(f"input {ex}: window {f - int(first[f])} does not line up with its context's tokens")
        words[sl.start + positions] = context_words[tokens]
    return words


def build_windows(pairs: list[tuple[str, str]], tokenizer, backend: Tokenizer, settings: CallSettings,
                  context_first: bool, spec=None) -> Windows:
    """The windows 4.x made of each (question, context), as the featurizer's features: for each question its
    own step (its window - doc_stride), the question cut to max_question_len, word ids for align_to_words."""
    examples = [utils_squad.SquadExample(str(i), q, c, [], False) for i, (q, c) in enumerate(pairs)]
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    if settings.max_seq_len < specials + 2:
        raise PipelineInputError(f"max_seq_len {settings.max_seq_len} leaves no room for a question and a context "
                                 f"beside this tokenizer's {specials} special tokens")
    # The question may not fill the window: at least one context token always fits.
    max_query_length = max(1, min(settings.max_question_len, settings.max_seq_len - specials - 1))
    n_question = _question_lengths(backend, [q for q, _ in pairs], max_query_length)
    contexts = [(word_ids, utils_squad.trim_offsets_whitespace(context, offsets)) for context, (_, offsets, word_ids)
                in zip((c for _, c in pairs), utils_squad.encode_contexts(backend, [c for _, c in pairs]), strict=True)]
    n_context = np.array([len(w) for w, _ in contexts], dtype=np.int64)
    steps = _steps(settings, n_question, n_context, specials)
    features = _featurize(examples, tokenizer, backend, spec, settings, max_query_length, context_first)
    return Windows(features, _window_words(features, steps, contexts), examples)


# --------------------------------------------------------------------------------------------
# 4.x's arithmetic: candidates per window, words, merging, ranking
# --------------------------------------------------------------------------------------------


@dataclass
class WindowSpans:
    """A window's candidate spans, best first: token positions in the feature, scores; and its null score."""

    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    null: float


def window_probabilities(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """4.x's softmax of one window, [1, L] float32: tokens that cannot be in an answer at -10000 first."""
    masked = np.where(allowed[None, :], logits[None, :].astype(np.float32), MASKED_LOGIT)
    probs = np.exp(masked - masked.max(axis=-1, keepdims=True))
    return probs / probs.sum()


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """The k largest flat positions, best first, chosen exactly as 4.x did (ties included)."""
    if k == 1:
        return np.array([np.argmax(scores)])
    if len(scores) < k:
        return np.argsort(-scores)
    idx = np.argpartition(-scores, k)[0:k]
    return idx[np.argsort(-scores[idx])]


def span_window(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, cls: int,
                settings: CallSettings) -> WindowSpans:
    """The best spans of one window by p_start * p_end (4.x's select_starts_ends and decode_spans)."""
    p_start, p_end = window_probabilities(start, allowed), window_probabilities(end, allowed)
    null = (p_start[0, cls] * p_end[0, cls]).item()
    p_start[0, cls] = p_end[0, cls] = 0.0
    outer = np.matmul(np.expand_dims(p_start, -1), np.expand_dims(p_end, 1))
    candidates = np.tril(np.triu(outer), settings.max_answer_len - 1)
    starts, ends = np.unravel_index(top_indices(candidates.flatten(), settings.pre_top_k), candidates.shape)[1:]
    scores = candidates[0, starts, ends]
    # 4.x kept score-0 pairs here (an end before the start, CLS); they are not answers.
    keep = allowed[starts] & allowed[ends] & (scores > 0)
    return WindowSpans(starts[keep], ends[keep], scores[keep], null)


def beam_window(arrays: dict, f: int, allowed: np.ndarray, cls: int, settings: CallSettings) -> WindowSpans:
    """The best spans of one window of a beam head by exp(start_log_prob + end_log_prob); null sigmoid(cls)."""
    n_end = arrays["end_top_index"].shape[1] // arrays["start_top_index"].shape[1]
    starts = np.repeat(arrays["start_top_index"][f], n_end).astype(np.int64)
    ends = arrays["end_top_index"][f].astype(np.int64)
    scores = np.exp(np.repeat(arrays["start_top_log_probs"][f], n_end).astype(np.float64)
                    + arrays["end_top_log_probs"][f])
    answerable = allowed.copy()
    answerable[cls] = False
    inside = (starts >= 0) & (starts < len(allowed)) & (ends >= 0) & (ends < len(allowed))
    valid = inside & (ends >= starts) & (ends - starts < settings.max_answer_len) & (scores > 0)
    valid[valid] = answerable[starts[valid]] & answerable[ends[valid]]
    order = np.flatnonzero(valid)[np.argsort(-scores[valid], kind="stable")][:settings.pre_top_k]
    null = 0.5 * (1.0 + math.tanh(0.5 * float(arrays["cls_logits"][f])))  # sigmoid, without overflow
    return WindowSpans(starts[order], ends[order], scores[order], null)


def word_spans(offsets: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per token of a window, the characters of its whole word within the window (4.x's word_to_chars: the
    first token of the word here starts it, the last ends it); a token without a word keeps its own span."""
    start, end = offsets[:, 0].copy(), offsets[:, 1].copy()
    pos = np.flatnonzero(words >= 0)
    if len(pos):
        w = words[pos]
        unique, first = np.unique(w, return_index=True)
        _, last_reversed = np.unique(w[::-1], return_index=True)
        last = len(w) - 1 - last_reversed
        k = np.searchsorted(unique, w)
        start[pos] = offsets[pos[first[k]], 0]
        end[pos] = offsets[pos[last[k]], 1]
    return start, end


class AnswerList:
    """An example's answers in 4.x's order of discovery; the same text (case-insensitive) adds its score."""

    def __init__(self, context: str):
        self.context = context
        self.answers: list[dict] = []
        self._by_text: dict[str, dict] = {}

    def add(self, start: int, end: int, score: float) -> None:
        text = self.context[start:end]
        known = self._by_text.get(text.lower())
        if known is not None:
            known["score"] += score
            return
        answer = {"score": score, "start": start, "end": end, "answer": text}
        self.answers.append(answer)
        self._by_text[text.lower()] = answer

    def ranked(self) -> list[dict]:
        """Best first; equal scores in the order found (Python's stable sort, as 4.x)."""
        return sorted(self.answers, key=lambda a: a["score"], reverse=True)


class Ranking:
    """Per example its AnswerList and its smallest null score, filled window by window."""

    def __init__(self, windows: Windows):
        self.lists = [AnswerList(ex.context) for ex in windows.examples]
        self.nulls = [NO_NULL_SCORE] * len(self.lists)

    def result(self) -> tuple[list[list[dict]], list[float]]:
        return [answers.ranked() for answers in self.lists], self.nulls


def shifted_to_all(arrays: dict, first_feature: int, first_token: int) -> dict:
    """A chunk's head outputs indexed over all windows of the call (flat tokens for span heads, features for
    beam heads), as the classic decoder takes them."""
    shifted = dict(arrays)
    if "token" in shifted:
        shifted["token"] = shifted["token"] + first_token
    if "feature" in shifted:
        shifted["feature"] = shifted["feature"] + first_feature
    return shifted


def progress_bar(total: int, chunk: int):
    """Progress over the windows of a call longer than one chunk, on standard error when it is a terminal only
    (never in a log file or a pipe); the bar is removed when done."""
    shown = total > chunk and sys.stderr.isatty()
    return tqdm(total=total, desc="qa_pipeline: windows", unit="window", file=sys.stderr, disable=not shown,
                leave=False, dynamic_ncols=True)


def null_answer(score: float) -> dict:
    return {"score": score, "start": 0, "end": 0, "answer": ""}


def final_answers(spans: list[dict], null_score: float, null_wins: bool | None, settings: CallSettings) -> list[dict]:
    """The top_k answers of an example. null_wins None: 4.x's rule ("" competes by its score when
    handle_impossible_answer); True/False: the tuned threshold decided ("" first, or no "")."""
    if not settings.handle_impossible_answer:
        return spans[:settings.top_k]
    if null_wins is None:
        return sorted([*spans, null_answer(null_score)], key=lambda a: a["score"], reverse=True)[:settings.top_k]
    if null_wins:
        return [null_answer(null_score), *spans[:settings.top_k - 1]]
    return spans[:settings.top_k]


def four_x_shape(answers: list[dict]):
    """4.x returned the answer itself when there was one, else the list (also for top_k > 1)."""
    return answers[0] if len(answers) == 1 else answers


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """How the forward passes compute: the weights' dtype, the autocast dtype (None: none), and why (the rule
    is fast_path.pipeline_precision's). A GPU computes in half-precision weights; a CPU keeps float32 weights
    under bf16 autocast, as the command line's CPU path (its LayerNorms and softmax stay float32)."""

    weights: torch.dtype
    autocast: torch.dtype | None
    reason: str

    def context(self, device: torch.device):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)


def _requested_dtype(dtype) -> str | None:
    """The dtype asked for, by name (float32, float16, bfloat16), or None when none is."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(dtype, dtype)
        if name not in ("float32", *HALF_DTYPES):
            raise PipelineInputError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
        return name
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise PipelineInputError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    return str(dtype).removeprefix("torch.")


def _precision_of(dtype, device: torch.device, bf16_cpu: str | None = None) -> Precision:
    """The asked dtype, else fast_path's default for the device; bf16_cpu: the CPU's bf16 fact, read from the
    CPU when None (process_group.cpu_bf16)."""
    requested = _requested_dtype(dtype)
    if requested == "float16" and device.type != "cuda":
        raise PipelineInputError(f"dtype float16 needs a CUDA device (got {device}; a CPU computes float32 or bfloat16)")
    if bf16_cpu is None:
        bf16_cpu = process_group.cpu_bf16() if device.type == "cpu" and requested is None else ""
    name, why = fast_path.pipeline_precision(requested, device.type == "cuda", bf16_cpu)
    if name == "float32":
        return Precision(torch.float32, None, why)
    if device.type == "cuda":
        return Precision(getattr(torch, name), None, why)
    return Precision(torch.float32, getattr(torch, name), why)


QUANTIZATIONS = ("int8",)
INT8_REASON = ("int8: the encoder's Linear layers quantized dynamically, one scale per output channel, float32 around "
               "them and in the answer head (quantize='int8'; about 1 F1 below float32, bench/RESULTS.md)")


def _check_quantize(quantize, device: torch.device, dtype, subject: str = "quantize='int8'") -> None:
    """quantize is None or "int8"; int8 layers run on a CPU, with float32 around them (subject: what is said to)."""
    if quantize is None:
        return
    if quantize not in QUANTIZATIONS:
        raise PipelineInputError(f"quantize must be None or 'int8', got {quantize!r}")
    if device.type != "cpu":
        raise PipelineInputError(f"{subject} runs on a CPU (got device {device}; a GPU computes bf16 or fp16)")
    if _requested_dtype(dtype) not in (None, "float32"):
        raise PipelineInputError(f"{subject} computes float32 around its int8 layers: dtype {dtype!r} cannot be "
                                 "combined with it")


def quantized_int8(model, own_copy: bool = True):
    """The model with its encoder's Linear layers (under its base_model_prefix: the answer head stays float32)
    quantized to int8 dynamically, one scale per output channel: int8 weights, each activation quantized per call
    (torch.ao's quantize_dynamic), on the CPU. own_copy: quantize a copy, leaving the caller's model object as it
    is (a model the pipeline loaded itself is quantized in place). XLNet computes its attention with einsums of
    plain parameters: only its feed-forward layers become int8. Measured on BERT (MiniLM) only: on the AVX512-BF16
    CPU of bench/RESULTS.md, 2.3x / 2.1x float32's answers at batch 1 / 32 and 1.4x / 1.2x bf16's, F1 -1.00 /
    -0.44 and -0.84 on two samples (per tensor, torch's default: -2.3 to -5.7)."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise PipelineInputError(f"quantize='int8' needs torch.ao.quantization, which torch {torch.__version__} "
                                 "lacks") from None
    prefix = f"{model.base_model_prefix}."
    layers = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.startswith(prefix)}
    if not layers:
        raise PipelineInputError(f"quantize='int8': {type(model).__name__} has no Linear layer under its encoder "
                                 f"({model.base_model_prefix}) to quantize")
    model = (copy.deepcopy(model) if own_copy else model).to("cpu", torch.float32)
    with warnings.catch_warnings():  # asked for by name: torch.ao's deprecation notices would only be noise here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, layers, dtype=torch.qint8, inplace=True)


def _has_quantized_layers(model) -> bool:
    return any(type(module).__module__.startswith("torch.ao.nn.quantized") for module in model.modules())


def _device_of(device, model=None):
    """None: the model object's own device, else CUDA when available; 4.x's -1 / 0, 1, ... are taken too."""
    if device is None:
        if model is not None:
            return next(model.parameters()).device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        device = torch.device("cpu") if device < 0 else torch.device("cuda", device)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PipelineInputError(f"device {device!r}: not a device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineInputError(f"device {device}: CUDA is not available on this machine")
    return device


def padded_attention_kernels(device: torch.device):
    """On a GPU, SDPA's flash, memory-efficient or math kernels, never cuDNN, for the duration of a call: every
    batch of windows has its own width, and cuDNN builds a graph per shape (the tool's attention rule,
    fast_path.py). A context, not torch.backends' process-wide switch: the pipeline lives in the user's process."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def _model_folder(path, tokenizer: bool = True) -> Path:
    try:
        return cli.model_folder(path, tokenizer)
    except cli.InputError as exc:
        raise PipelineInputError(str(exc)) from None


def _origin_folder(model) -> Path | None:
    """The folder a model object was loaded from (its tokenizer and tuned threshold live there), if any."""
    named = str(getattr(model, "name_or_path", "") or "")
    return Path(named) if named and Path(named).is_dir() else None


def _simple_span_head(config) -> bool:
    """An XLNet/XLM folder saved from the plain span head (--simple_span_head) says so in its architectures."""
    return any(name.endswith("ForQuestionAnsweringSimple") for name in (config.architectures or []))


class QuestionAnsweringPipeline:
    """transformers 4.x's question-answering pipeline for transformers 5 (the README says where it departs).

    QuestionAnsweringPipeline("path/to/model") or QuestionAnsweringPipeline(model=model, tokenizer=tokenizer)
    (objects, or a model object and a tokenizer folder). device: None (CUDA when available; a model object
    stays where it is), "cpu", "cuda:1", a torch.device, or 4.x's -1 / 0, 1, ...; dtype: None (the default:
    bfloat16 autocast on a CPU that computes bf16 natively, AMX or AVX512-BF16, else float32; ``qa.precision``
    says which and why), "float32", "bfloat16" (on a CPU too: float32 weights under autocast), or "float16" (CUDA). null_threshold: "auto" (the folder's null_score_diff_threshold.json when
    present), None, or a number. context_first: None follows the tokenizer (context first when it pads on the
    left, as 4.x) or the model folder's training_args.json (fine-tuned with --context_first); True or False
    say it. batch_size: windows per forward pass (a call's batch_size= overrides it). lang_id: XLM's language id.
    quantize: None, or "int8" (on the CPU, the default device then: the encoder's Linear layers in dynamic int8, per
    output channel, float32 around them; about 1 F1 lower).

    ``qa(question=..., context=..., top_k=1, doc_stride=None, max_answer_len=15, max_seq_len=None,
    max_question_len=64, handle_impossible_answer=False, align_to_words=True, batch_size=None)`` answers as
    4.x; ``qa.answer(pairs, **same keywords)`` gives every input's answers as a list, whatever their number.
    """

    def __init__(self, model=None, tokenizer=None, *, device=None, dtype=None, null_threshold="auto",
                 batch_size: int = DEFAULT_BATCH_SIZE, context_first: bool | None = None, lang_id: int = 0,
                 quantize: str | None = None):
        if model is None:
            raise ValueError("QuestionAnsweringPipeline needs a model folder (or model= and tokenizer=)")
        if quantize is not None and device is None:
            device = "cpu"  # int8 layers run on the CPU: a model's default device then
        path = _is_path(model)  # a folder; a tokenizer given apart is checked apart
        folder = _model_folder(model, tokenizer=tokenizer is None) if path else _origin_folder(model)
        self.device = _device_of(device, None if path else model)
        _check_quantize(quantize, self.device, dtype)
        if path:
            self.precision = _precision_of("float32" if quantize is not None else dtype, self.device)
            self.model, self.beam = self._load_model(folder, self.precision.weights)
        else:
            self.model, self.precision = self._object_model(model, dtype, quantize)
            self.beam = isinstance(model, (transformers.XLNetForQuestionAnswering, transformers.XLMForQuestionAnswering))
        if quantize is not None:  # a copy of a model object: the caller's stays as it is
            self.model = quantized_int8(self.model, own_copy=not path)
            self.precision = Precision(torch.float32, None, INT8_REASON)
        self.tokenizer = self._load_tokenizer(tokenizer, folder)
        self.model.to(self.device).eval()
        self.model_type = self.model.config.model_type
        self.head = batching.make_head(self.beam)
        # the tokenizer's JSON parsed once, not on every call (~0.1 s each for a BERT vocabulary)
        self.spec = utils_squad.tokenizer_spec(self.tokenizer)
        self.backend = utils_squad.plain_backend(self.spec.backend_json)
        if context_first is None:  # as the model was fine-tuned: passage first for XLNet or --context_first
            context_first = self.tokenizer.padding_side == "left" or trained_context_first(folder)
        self.context_first = bool(context_first)
        self.batch_size = _whole_number("batch_size", batch_size, 1)
        self.lang_id = lang_id
        # A damaged threshold file stops only the calls that would use it (handle_impossible_answer).
        self.threshold, self.threshold_problem = None, None
        try:
            self.threshold = resolve_threshold(null_threshold, folder)
        except PipelineInputError as exc:
            self.threshold_problem = exc
        logger.info("path: %s", self.precision.reason)

    def _object_model(self, model, dtype, quantize):
        """A model object and its precision: kept as it is unless a dtype is asked for; without one, its own
        half-precision weights compute as they are. Quantized layers (its own, or quantize's to come) take
        float32 on the CPU, never autocast's bf16."""
        if _has_quantized_layers(model):
            if quantize is not None:
                raise PipelineInputError("quantize='int8': the model object is quantized already (quantize=None)")
            _check_quantize("int8", self.device, dtype, "a model with quantized layers")
            return model, Precision(torch.float32, None, "float32 around the model object's own quantized layers")
        if quantize is not None:  # quantized_int8 makes the float32 copy
            return model, Precision(torch.float32, None, INT8_REASON)
        precision = _precision_of(dtype, self.device)
        own = next(model.parameters()).dtype
        if dtype is None and own != torch.float32:
            return model, Precision(own, None, f"{str(own).removeprefix('torch.')} (the model object's own weights; "
                                               "dtype= to choose)")
        # a model object keeps its weights unless a dtype is asked for (autocast alone leaves them as they are)
        return (model if dtype is None else model.to(dtype=precision.weights)), precision

    @staticmethod
    def _load_model(folder: Path, dtype):
        source = qa_model.ModelSource(str(folder))
        try:
            config = qa_model.load_config(source)
            beam = qa_model.uses_beam_head(config.model_type, _simple_span_head(config))
            return qa_model.load_model(str(folder), config, source, beam, dtype=dtype), beam
        except checkpoints.WeightsUnreadable as exc:  # names the damaged file
            raise PipelineInputError(str(exc)) from None
        except qa_model.ModelLoadError as exc:
            raise PipelineInputError(str(exc).replace("--model_name_or_path ", "")) from None

    def _load_tokenizer(self, tokenizer, folder: Path | None):
        if tokenizer is None and folder is None:
            raise ValueError("tokenizer= is required with a model object that was not loaded from a folder")
        if tokenizer is None or _is_path(tokenizer):
            try:
                return qa_model.load_tokenizer(qa_model.ModelSource(str(tokenizer or folder)), do_lower_case=False)
            except qa_model.ModelLoadError as exc:
                raise PipelineInputError(str(exc).replace("--tokenizer_name ", "")) from None
        if not getattr(tokenizer, "is_fast", False):
            raise PipelineInputError(f"{type(tokenizer).__name__}: a fast tokenizer is required for character offsets")
        return tokenizer

    def __call__(self, *args, **kwargs):
        """Answers as 4.x returned them: per input the best answer (a dict) for top_k 1, else a list of
        answers (a dict when only one was found); one input gives its result, several a list of results."""
        inputs = {k: kwargs.pop(k) for k in INPUT_KEYS if k in kwargs}
        pairs = normalize_inputs(args, inputs)
        results = [four_x_shape(answers) for answers in self.answer(pairs, **kwargs)]
        return results[0] if len(results) == 1 else results

    def answer(self, pairs: Sequence[tuple[str, str]], **kwargs) -> list[list[dict]]:
        """Per (question, context) pair its answers, best first, always as a list (the command line's form).

        The windows go through the model a chunk at a time (CHUNK_BATCHES batches, in window order), and each
        chunk's windows are ranked before the next chunk runs: what a call holds beyond the windows themselves
        is one chunk's outputs (plus, when a tuned threshold decides, each window's logits for the classic
        decoder), whatever the length of the contexts. A long call shows its progress on a terminal."""
        settings = call_settings(kwargs, self.tokenizer.model_max_length, self.batch_size)
        if settings.handle_impossible_answer and self.threshold_problem is not None:
            raise PipelineInputError(f"{self.threshold_problem} (handle_impossible_answer uses the tuned threshold; "
                                     "null_threshold=None or --no_threshold goes without it)")
        if not pairs:
            return []
        windows = build_windows(list(pairs), self.tokenizer, self.backend, settings, self.context_first, self.spec)
        ranking = Ranking(windows)
        kept: list[dict] | None = [] if self.threshold is not None and settings.handle_impossible_answer else None
        features, chunk = windows.features, settings.batch_size * CHUNK_BATCHES
        with progress_bar(len(features), chunk) as bar:
            for first in range(0, len(features), chunk):
                part = features.select(np.arange(first, min(first + chunk, len(features))))
                arrays = self._forward(part, settings.batch_size)
                self._rank_part(ranking, windows, first, part, arrays, settings)
                if kept is not None:
                    kept.append(shifted_to_all(arrays, first, int(features.feature_start[first])))
                bar.update(len(part))
        spans, nulls = ranking.result()
        decisions = self._threshold_decisions(windows, kept, settings)
        return [final_answers(s, n, d, settings) for s, n, d in zip(spans, nulls, decisions, strict=True)]

    def _forward(self, features, batch_size: int) -> dict[str, np.ndarray]:
        """The head's outputs for every feature, on the host (batching.py's length-sorted padded batches)."""
        attention = self.model.config._attn_implementation
        padded = batching.PaddedBatches(batch_size, self.head, self.model_type, lang_id=self.lang_id,
                                        prepared_mask=batching.takes_prepared_mask(self.model_type, attention))
        outputs = []
        with torch.inference_mode(), padded_attention_kernels(self.device), self.precision.context(self.device):
            for idx in padded.plan(features.lengths()):
                batch = batching.to_device(padded.tensors(features, idx, with_labels=False), self.device)
                outputs.append(self.head.outputs(padded.forward(self.model, batch, training=False), batch))
        return self.head.collect(outputs)

    def _window_spans(self, features, arrays: dict, settings: CallSettings):
        """WindowSpans of every feature, in feature order."""
        if self.beam:
            order = np.argsort(arrays["feature"])
            arrays = {name: values[order] for name, values in arrays.items()}
        else:
            start = np.zeros(len(features.input_ids), dtype=np.float32)
            end = np.zeros(len(features.input_ids), dtype=np.float32)
            start[arrays["token"]], end[arrays["token"]] = arrays["start_logits"], arrays["end_logits"]
        for f in range(len(features)):
            sl = features.token_slice(f)
            allowed, cls = features.p_mask[sl] == 0, int(features.cls_index[f])
            if self.beam:
                yield beam_window(arrays, f, allowed, cls, settings)
            else:
                yield span_window(start[sl], end[sl], allowed, cls, settings)

    def _rank_part(self, ranking: Ranking, windows: Windows, first: int, part, arrays: dict,
                   settings: CallSettings) -> None:
        """Add the spans and null scores of the consecutive windows ``part`` (from window ``first`` on, its
        outputs ``arrays``) to ``ranking``, in window order (the order 4.x discovered answers in)."""
        token_offset = int(windows.features.feature_start[first])
        for f, found in enumerate(self._window_spans(part, arrays, settings)):
            ex = int(part.example_index[f])
            ranking.nulls[ex] = min(ranking.nulls[ex], found.null)
            sl = part.token_slice(f)
            offsets = part.offsets[sl]
            if settings.align_to_words:
                char_start, char_end = word_spans(offsets, windows.words[token_offset + sl.start:token_offset + sl.stop])
            else:
                char_start, char_end = offsets[:, 0], offsets[:, 1]
            for s, e, score in zip(found.starts.tolist(), found.ends.tolist(), found.scores.tolist(), strict=True):
                ranking.lists[ex].add(int(char_start[s]), int(char_end[e]), score)

    def _threshold_decisions(self, windows: Windows, parts: list[dict] | None,
                             settings: CallSettings) -> list[bool | None]:
        """Per example whether its null odds exceed the tuned threshold (None: no threshold applies); ``parts``
        are the head's outputs of every window, chunk by chunk, indexed over all windows, or None exactly when no
        threshold applies (none tuned, or handle_impossible_answer off: answer keeps no outputs then)."""
        if parts is None:
            return [None] * len(windows.examples)
        settings = decoding.DecodingSettings(n_best_size=self.threshold.n_best_size,
                                             max_answer_length=self.threshold.max_answer_length,
                                             version_2_with_negative=True)
        null_odds = self.head.decode(windows.examples, windows.features, parts, settings).null_odds
        return [null_odds[ex.qas_id] > self.threshold.value for ex in windows.examples]


# --------------------------------------------------------------------------------------------
# Command line (its flags and input records: cli.py, checked before torch is imported)
# --------------------------------------------------------------------------------------------


def output_keys(top_k: int) -> tuple[str, ...]:
    return ("answers",) if top_k > 1 else ANSWER_KEYS


def output_line(record: dict, answers: list[dict], top_k: int) -> str:
    """The input record (every key: question, context, id, ...), then the best answer's fields (top_k 1: "" at
    0, 0 with score 0.0 when no span was found) or "answers", the list best first (top_k > 1); an input key of
    the same name is replaced."""
    out = dict(record)
    if top_k > 1:
        out["answers"] = answers
    else:
        out.update(answers[0] if answers else null_answer(0.0))
    return json.dumps(out, ensure_ascii=False)


def run(command: cli.PipelineCommand) -> list[str]:
    """The answers to the command's records, one JSON line each, in input order."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    qa = QuestionAnsweringPipeline(str(_model_folder(command.model_dir)), device=command.device,
                                   dtype=command.dtype, quantize=command.quantize,
                                   batch_size=command.batch_size or DEFAULT_BATCH_SIZE,
                                   null_threshold=None if command.no_threshold else "auto",
                                   context_first=True if command.context_first else None)
    if qa.device.type == "cpu":
        process_group.use_cpu_threads()  # the command's process is its own: the cores it is given, no more
    settings = {k: getattr(command, k) for k in ("top_k", "doc_stride", "max_answer_len", "max_seq_len",
                                                 "max_question_len", "handle_impossible_answer")
                if getattr(command, k) is not None}
    records = command.records
    answers = qa.answer([(r["question"], r["context"]) for r in records], **settings)
    replaced = sorted({key for r in records for key in output_keys(command.top_k) if key in r})
    if replaced:
        print(f"qa_pipeline.py: warning: input key(s) {', '.join(replaced)} replaced by the answer in the output",
              file=sys.stderr)
    return [output_line(r, a, command.top_k) for r, a in zip(records, answers, strict=True)]


def main(argv: Sequence[str] | None = None, checked: cli.PipelineCommand | None = None) -> int:
    """The command: `checked` is the command line already checked (run as a script), else argv is."""
    def work() -> int:
        lines = run(checked or cli.check_pipeline_command(argv))
        out = sys.stdout.buffer
        out.write("".join(line + "\n" for line in lines).encode("utf-8"))
        out.flush()
        return cli.EXIT_OK

    return cli.run_guarded(work, bad_input=(PipelineInputError,))


if __name__ == "__main__":
    sys.exit(main(checked=command))
