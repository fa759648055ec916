"""Decoding: the model's outputs for every feature -> each question's answer, n-best list and null odds,
and the one no-answer decision.

Why a module of its own: it is the step between the model (batching.py gives each feature's logits, or the
XLNet/XLM beam head's top starts and ends, on the host) and the scorer (squad_metrics.py). run_squad.py
evaluates with it and qa_pipeline.py takes its null odds for the tuned threshold, so both answer alike.
Standard library and numpy only: no torch, no transformers.

The classic decoder's rules (the classic HuggingFace and Google BERT scripts), vectorised with numpy over all
features at once; only the final n-best assembly loops over questions:
  - per feature the top n_best_size starts and ends are paired; a pair is a candidate when both are context
    tokens, the start lies in its max-context window, and it is 1..max_answer_length tokens long;
  - answers are exact substrings of the context (character offsets), never detokenized word pieces;
  - SQuAD 2.0: the null score is the smallest start+end logit at CLS over the question's features, and the
    null odds are that minus the best span's start+end.
The no-answer decision is made once, by ``Decoded.answers(threshold)``: the decoder itself reports each
question's best span and its null odds, so that one decoding serves every threshold (the sweep and the file).
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from squad_internals.atomic_io import FileSet, write_json_atomic

# Null odds when an example has no valid span at all (the answer is "" whatever the threshold): its home
# is the scorer, which must run as one file.
from squad_metrics import NO_SPAN_NULL_ODDS

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# What the decoder returns, and the no-answer decision
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodingSettings:
    """The decoder's settings (the --n_best_size family of flags)."""

    n_best_size: int = 20
    max_answer_length: int = 30
    version_2_with_negative: bool = False


@dataclass(frozen=True)
class Decoded:
    """Every question's best span, n-best list and null odds, in example order, before the no-answer decision.

    best_spans: a span head's best non-empty span on SQuAD 2.0 ("" only when no valid span exists), its top
    n-best entry on SQuAD 1.1, the beam head's best span. null_odds: SQuAD 2.0 span heads and beam heads
    (empty for SQuAD 1.1 span heads). decides_no_answer: whether answers() applies a threshold: SQuAD 2.0 with
    a span head. The beam head always answers its best span, as the classic script did; its null odds (the
    answerability logit) go to the threshold sweep only.
    """

    best_spans: OrderedDict[str, str]
    nbest: OrderedDict[str, list[dict]]
    null_odds: OrderedDict[str, float]
    decides_no_answer: bool

    def answers(self, threshold: float) -> OrderedDict[str, str]:
        """The predictions: the no-answer decision, made here and nowhere else."""
        if not self.decides_no_answer:
            return self.best_spans
        return apply_null_threshold(self.best_spans, self.null_odds, threshold)


def apply_null_threshold(span_predictions: Mapping[str, str], null_odds: Mapping[str, float],
                         threshold: float) -> OrderedDict[str, str]:
    """"" where the null odds exceed the threshold, else the best span (predict no answer above it)."""
    return OrderedDict((qid, "" if null_odds[qid] > threshold else text) for qid, text in span_predictions.items())


# --------------------------------------------------------------------------------------------
# Features and logits, checked
# --------------------------------------------------------------------------------------------


def _as_array(name: str, value: Any, dtype, shape_tail: tuple = ()) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        raise ValueError(f"features.{name}: expected shape [n{', ' if shape_tail else ''}"
                         f"{', '.join(map(str, shape_tail))}], got {list(arr.shape)}")
    return arr.astype(dtype, copy=False)


class _Tokens:
    """Validated flat views of the duck-typed features the decoders need."""

    def __init__(self, features: Any, n_examples: int):
        self.feature_start = _as_array("feature_start", features.feature_start, np.int64)
        if len(self.feature_start) < 1 or self.feature_start[0] != 0 or np.any(np.diff(self.feature_start) < 0):
            raise ValueError("features.feature_start: must start at 0 and never decrease")
        self.n_features = len(self.feature_start) - 1
        self.n_tokens = int(self.feature_start[-1])
        self.lengths = np.diff(self.feature_start)
        p_mask = _as_array("p_mask", features.p_mask, np.int8)
        offsets = _as_array("offsets", features.offsets, np.int64, (2,))
        max_context = _as_array("max_context", features.max_context, bool)
        self.example_index = _as_array("example_index", features.example_index, np.int64)
        for name, arr, size in [("p_mask", p_mask, self.n_tokens), ("offsets", offsets, self.n_tokens),
                                ("max_context", max_context, self.n_tokens),
                                ("example_index", self.example_index, self.n_features)]:
            if len(arr) != size:
                raise ValueError(f"features.{name}: length {len(arr)}, expected {size}")
        if self.n_features and (self.example_index.min() < 0 or self.example_index.max() >= n_examples):
            raise ValueError(f"features.example_index: values must lie in [0, {n_examples}) (the examples given)")
        self.offsets = offsets
        self.cls_flat = self._cls_flat(features)
        # Only context tokens can be part of an answer: question and special tokens have no offsets.
        self.is_context = (p_mask == 0) & (offsets[:, 0] >= 0) & (offsets[:, 1] >= 0)
        # CLS is excluded by position too: p_mask is 0 there (the no-answer target), and a tokenizer
        # may give it offsets (0, 0) (XLNet puts it at the end), which would make spans ending at CLS
        # decode to "" or to a slice running backwards.
        self.is_context[self.cls_flat] = False
        self.can_start = self.is_context & max_context

    def flat_index(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions of per-feature positions [N, k], and whether each lies inside its feature."""
        inside = (local >= 0) & (local < self.lengths[:, None])
        flat = np.where(inside, self.feature_start[:-1, None] + local, 0)
        return flat, inside

    def _cls_flat(self, features: Any) -> np.ndarray:
        """Flat position of each feature's CLS token."""
        cls_index = _as_array("cls_index", features.cls_index, np.int64)
        if len(cls_index) != self.n_features:
            raise ValueError(f"features.cls_index: length {len(cls_index)}, expected {self.n_features}")
        if np.any((cls_index < 0) | (cls_index >= self.lengths)):
            raise ValueError("features.cls_index: a CLS position lies outside its feature")
        return self.feature_start[:-1] + cls_index


def _finite_logits(name: str, values: Any, size: int, feature_start: np.ndarray | None = None) -> np.ndarray:
    """float64 copy of the model outputs; NaN/inf is a model or precision fault, never an empty answer."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape[:1] != (size,):
        raise ValueError(f"{name}: expected {size} rows (one per token or feature), got shape {list(arr.shape)}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), arr.shape)
        where = f"position {tuple(int(i) for i in first)}"
        if feature_start is not None:
            feat = int(np.searchsorted(feature_start, first[0], side="right") - 1)
            where = f"flat position {int(first[0])} (feature {feat})"
        raise ValueError(f"{name}: {int(bad.sum())} non-finite value(s) (NaN or inf), first {arr[first]} at "
                         f"{where}; the model output is broken (overflow in fp16, diverged training?)")
    return arr


def _padded(values: np.ndarray, tokens: _Tokens) -> np.ndarray:
    """[N, max_len] matrix of per-feature values, -inf where a feature is shorter."""
    width = int(tokens.lengths.max())
    out = np.full((tokens.n_features, width), -np.inf)
    rows = np.repeat(np.arange(tokens.n_features), tokens.lengths)
    cols = np.arange(tokens.n_tokens) - np.repeat(tokens.feature_start[:-1], tokens.lengths)
    out[rows, cols] = values
    return out


def _top_k(padded: np.ndarray, k: int) -> np.ndarray:
    """Per row the k largest positions, ordered by value descending, ties by position ascending.

    That is the classic `sorted(enumerate(logits), reverse=True)[:k]` order. np.partition finds the
    k-th value; entries tied with it are taken lowest position first, so the set is deterministic.
    """
    n, width = padded.shape
    kth = np.partition(padded, width - k, axis=1)[:, width - k][:, None]
    above = padded > kth
    ties = padded == kth
    take = above | (ties & (np.cumsum(ties, axis=1) <= (k - above.sum(axis=1))[:, None]))
    cols = np.nonzero(take)[1].reshape(n, k)
    order = np.argsort(-np.take_along_axis(padded, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


class _Candidates:
    """Valid answer spans of all features, sorted per example by score, then the classic tie order."""

    def __init__(self, tokens: _Tokens, example: np.ndarray, start: np.ndarray, end: np.ndarray,
                 start_score: np.ndarray, end_score: np.ndarray, tie: np.ndarray, n_examples: int):
        score = start_score + end_score
        # lexsort: last key is primary. `tie` encodes the classic loop order (feature, then start
        # rank, then end rank) which its stable sort keeps among equal scores.
        order = np.lexsort((tie, -score, example))
        self.char_start = tokens.offsets[start[order], 0]
        self.char_end = tokens.offsets[end[order], 1]
        self.start_score, self.end_score, self.score = start_score[order], end_score[order], score[order]
        self.bounds = np.searchsorted(example[order], np.arange(n_examples + 1))

    @classmethod
    def empty(cls, tokens: _Tokens, n_examples: int) -> _Candidates:
        none_i, none_f = np.zeros(0, np.int64), np.zeros(0)
        return cls(tokens, none_i, none_i, none_i, none_f, none_f, none_i, n_examples)

    def rows(self, lo: int, hi: int, chunk: int):
        """(char_start, char_end, start_score, end_score, score) as Python values, best first.

        Converted in chunks: an example usually needs only its first n_best_size candidates.
        """
        for a in range(lo, hi, chunk):
            b = min(hi, a + chunk)
            yield from zip(self.char_start[a:b].tolist(), self.char_end[a:b].tolist(),
                           self.start_score[a:b].tolist(), self.end_score[a:b].tolist(), self.score[a:b].tolist(), strict=True)


def _span_candidates(tokens: _Tokens, start: np.ndarray, end: np.ndarray, n_best_size: int,
                     max_answer_length: int, n_examples: int) -> _Candidates:
    """All (start, end) pairs among each feature's top-n starts and ends that are valid answers.

    Broadcast masks over [N, k, k] replace the classic double loop over start x end indexes.
    """
    k = min(n_best_size, int(tokens.lengths.max()))
    starts = _top_k(_padded(start, tokens), k)
    ends = _top_k(_padded(end, tokens), k)
    s_flat, s_in = tokens.flat_index(starts)
    e_flat, e_in = tokens.flat_index(ends)
    start_ok = s_in & tokens.can_start[s_flat]
    end_ok = e_in & tokens.is_context[e_flat]
    length = ends[:, None, :] - starts[:, :, None] + 1
    valid = start_ok[:, :, None] & end_ok[:, None, :] & (length >= 1) & (length <= max_answer_length)
    feat, i, j = np.nonzero(valid)
    s, e = s_flat[feat, i], e_flat[feat, j]
    tie = (feat * k + i) * k + j
    return _Candidates(tokens, tokens.example_index[feat], s, e, start[s], end[e], tie, n_examples)


def _null_per_example(tokens: _Tokens, null_start: np.ndarray, null_end: np.ndarray, n_examples: int):
    """Per example the feature with the smallest null score (first one on ties, as the classic `<`).

    Returns (feature index or -1 when the example has no feature, its start value, its end value).
    """
    null = null_start + null_end
    order = np.lexsort((np.arange(tokens.n_features), null, tokens.example_index))
    ex_sorted = tokens.example_index[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = ex_sorted[1:] != ex_sorted[:-1]
    best = np.full(n_examples, -1, dtype=np.int64)
    best[ex_sorted[first]] = order[first]
    if not len(null):
        return best, np.zeros(n_examples), np.zeros(n_examples)
    safe = np.maximum(best, 0)  # examples without features read feature 0; callers check best >= 0
    return best, null_start[safe], null_end[safe]


def _nbest_texts(context: str, cands: _Candidates, ex: int, n_best_size: int,
                 null: tuple[float, float, float] | None) -> tuple[list[tuple[str, float, float]], tuple | None]:
    """The first n_best_size distinct answer texts of an example, and its best non-empty span.

    ``null`` = (score, start value, end value) competes for a slot like the classic null candidate,
    which is appended last, so it ranks after spans of equal score.
    Returns ([(text, start value, end value)], best non-null (text, start value, end value) or None).
    """
    entries: list[tuple[str, float, float]] = []
    seen: set[str] = set()
    best_non_null = None
    null_pending = null is not None
    for a, b, s, e, score in cands.rows(int(cands.bounds[ex]), int(cands.bounds[ex + 1]), 2 * n_best_size + 8):
        if null_pending and null[0] > score:
            null_pending = False
            if len(entries) < n_best_size and "" not in seen:
                seen.add("")
                entries.append(("", null[1], null[2]))
        full = len(entries) >= n_best_size
        # Keep walking past a full n-best only to find the best non-empty span (v2 null odds).
        if full and best_non_null is not None:
            return entries, best_non_null
        text = context[a:b]
        if best_non_null is None and text:
            best_non_null = (text, s, e)
        if not full and text not in seen:
            seen.add(text)
            entries.append((text, s, e))
    if null_pending and len(entries) < n_best_size and "" not in seen:
        entries.append(("", null[1], null[2]))
    return entries, best_non_null


def _softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [x / total for x in exps]


def _nbest_json(entries: list[tuple[str, float, float]], start_key: str, end_key: str) -> list[dict]:
    probs = _softmax([s + e for _, s, e in entries])
    return [{"text": text, "probability": p, start_key: float(s), end_key: float(e)}
            for (text, s, e), p in zip(entries, probs, strict=True)]


def _warn_featureless(examples: Sequence[Any], has_feature: np.ndarray) -> None:
    missing = np.flatnonzero(~has_feature)
    if len(missing):
        logger.warning("%d example(s) have no features and get an empty answer (first: %s)",
                       len(missing), examples[int(missing[0])].qas_id)


# --------------------------------------------------------------------------------------------
# Start/end logits (the span head of every family)
# --------------------------------------------------------------------------------------------


def _example_answer(context: str, cands, ex_i: int, null: tuple[float, float] | None, n_best_size: int,
                    version_2: bool) -> tuple[str, list[dict], float | None]:
    """One example's best span, n-best list and (v2) null odds; `null` is its (start, end) CLS logits, None
    when it has no feature."""
    null_s, null_e = null if null is not None else (0.0, 0.0)
    null_score = null_s + null_e
    entries, best_non_null = _nbest_texts(context, cands, ex_i, n_best_size,
                                          (null_score, null_s, null_e) if version_2 and null is not None else None)
    if (version_2 and all(text for text, _, _ in entries)) or not entries:
        entries.append(("", null_s, null_e))
    nbest = _nbest_json(entries, "start_logit", "end_logit")
    if not version_2:
        return entries[0][0], nbest, None
    if best_non_null is None:
        return "", nbest, NO_SPAN_NULL_ODDS
    # The classic subtraction order, so null odds equal its values bit for bit.
    return best_non_null[0], nbest, null_score - best_non_null[1] - best_non_null[2]


def decode_span_logits(examples: Sequence[Any], features: Any, start_logits: Any, end_logits: Any,
                       settings: DecodingSettings) -> Decoded:
    """Best spans, n-best lists and null odds from start/end logits (classic rules, offset-based text).

    start_logits / end_logits are flat [T] arrays aligned with the features' flat token arrays.
    Per feature the top n_best_size starts and ends are paired; a pair is kept when both are
    context tokens, the start is in its max-context window, start <= end and the span has at most
    max_answer_length tokens. Answers are exact substrings of the context. The n-best holds the
    first n_best_size distinct texts by start+end logit with softmax probabilities.
    v2: the null score is the smallest start[CLS]+end[CLS] over the example's features and competes
    in the n-best ("" is always present); null_odds = null score - best span's start - end.
    Where no valid span exists the best span is "" (not the classic "empty" placeholder), and the v2
    null odds are NO_SPAN_NULL_ODDS.
    """
    n_best_size, max_answer_length = settings.n_best_size, settings.max_answer_length
    version_2 = settings.version_2_with_negative
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError("n_best_size and max_answer_length must be at least 1")
    tokens = _Tokens(features, len(examples))
    start = _finite_logits("start_logits", start_logits, tokens.n_tokens, tokens.feature_start)
    end = _finite_logits("end_logits", end_logits, tokens.n_tokens, tokens.feature_start)
    if start.ndim != 1 or end.ndim != 1:
        raise ValueError("start_logits / end_logits: expected flat 1-D arrays of per-token logits")
    cls_flat = tokens.cls_flat
    null_feat, null_start, null_end = _null_per_example(tokens, start[cls_flat], end[cls_flat], len(examples))
    if tokens.n_tokens:
        cands = _span_candidates(tokens, start, end, n_best_size, max_answer_length, len(examples))
    else:
        cands = _Candidates.empty(tokens, len(examples))
    _warn_featureless(examples, null_feat >= 0)

    best_spans: OrderedDict[str, str] = OrderedDict()
    all_nbest: OrderedDict[str, list[dict]] = OrderedDict()
    null_odds: OrderedDict[str, float] = OrderedDict()
    for ex_i, example in enumerate(examples):
        null = (float(null_start[ex_i]), float(null_end[ex_i])) if null_feat[ex_i] >= 0 else None
        span, all_nbest[example.qas_id], odds = _example_answer(example.context, cands, ex_i, null, n_best_size,
                                                                version_2)
        best_spans[example.qas_id] = span
        if odds is not None:
            null_odds[example.qas_id] = odds
    return Decoded(best_spans, all_nbest, null_odds, decides_no_answer=version_2)


def compute_predictions_logits(examples: Sequence[Any], features: Any, start_logits: Any, end_logits: Any,
                               n_best_size: int = 20, max_answer_length: int = 30,
                               version_2_with_negative: bool = False, null_score_diff_threshold: float = 0.0):
    """(predictions, nbest, null_odds) OrderedDicts keyed by qas_id, in example order, under the classic name:
    decode_span_logits, then "" where the v2 null odds exceed null_score_diff_threshold (null_odds is empty
    for v1)."""
    decoded = decode_span_logits(examples, features, start_logits, end_logits,
                                 DecodingSettings(n_best_size, max_answer_length, version_2_with_negative))
    return decoded.answers(null_score_diff_threshold), decoded.nbest, decoded.null_odds


# --------------------------------------------------------------------------------------------
# The XLNet / XLM beam-search head
# --------------------------------------------------------------------------------------------


def _beam_array(name: str, values: Any, shape: tuple[int, int], dtype) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(arr.shape)}")
    return arr.astype(dtype, copy=False)


def _beam_candidates(tokens: _Tokens, start_lp, start_idx, end_lp, end_idx, end_n_top: int,
                     max_answer_length: int, n_examples: int) -> _Candidates:
    """Valid spans of the beam head: start i pairs with ends i*end_n_top .. i*end_n_top+end_n_top-1."""
    # Column c = i * end_n_top + j of the end arrays pairs with start i = c // end_n_top.
    starts = np.repeat(start_idx, end_n_top, axis=1)
    starts_lp = np.repeat(start_lp, end_n_top, axis=1)
    s_flat, s_in = tokens.flat_index(starts)
    e_flat, e_in = tokens.flat_index(end_idx)
    length = end_idx - starts + 1
    valid = (s_in & tokens.can_start[s_flat] & e_in & tokens.is_context[e_flat]
             & (length >= 1) & (length <= max_answer_length))
    feat, col = np.nonzero(valid)
    return _Candidates(tokens, tokens.example_index[feat], s_flat[feat, col], e_flat[feat, col],
                       starts_lp[feat, col], end_lp[feat, col], feat * end_idx.shape[1] + col, n_examples)



BEAM_ARRAYS = ("start_top_log_probs", "start_top_index", "end_top_log_probs", "end_top_index", "cls_logits")


def decode_beam(examples: Sequence[Any], features: Any, arrays: Mapping[str, Any], settings: DecodingSettings,
                start_n_top: int | None = None, end_n_top: int | None = None) -> Decoded:
    """Best spans from the XLNet/XLM beam head (classic rules, offset-based text).

    ``arrays`` holds BEAM_ARRAYS in feature order. Shapes: start_* [N, start_n_top], end_* [N, start_n_top *
    end_n_top], cls_logits [N] (the top counts are read off the shapes unless given); indexes are unpadded
    token positions within each feature. The best span is "" only when none is valid; null_odds is the
    smallest cls_logits over the example's features (for the threshold sweep). n-best entries carry the
    classic keys text, probability, start_log_prob, end_log_prob.
    """
    n_best_size, max_answer_length = settings.n_best_size, settings.max_answer_length
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError("n_best_size and max_answer_length must be at least 1")
    tokens = _Tokens(features, len(examples))
    n = tokens.n_features
    start_n_top = start_n_top or np.shape(arrays["start_top_log_probs"])[1]
    end_n_top = end_n_top or np.shape(arrays["end_top_log_probs"])[1] // start_n_top
    s_shape, e_shape = (n, start_n_top), (n, start_n_top * end_n_top)
    start_lp = _finite_logits("start_top_log_probs", _beam_array("start_top_log_probs", arrays["start_top_log_probs"],
                                                                   s_shape, np.float64), n)
    end_lp = _finite_logits("end_top_log_probs", _beam_array("end_top_log_probs", arrays["end_top_log_probs"],
                                                               e_shape, np.float64), n)
    cls = _finite_logits("cls_logits", np.asarray(arrays["cls_logits"]).reshape(-1), n)
    start_idx = _beam_array("start_top_index", arrays["start_top_index"], s_shape, np.int64)
    end_idx = _beam_array("end_top_index", arrays["end_top_index"], e_shape, np.int64)
    if n:
        cands = _beam_candidates(tokens, start_lp, start_idx, end_lp, end_idx, end_n_top,
                                 max_answer_length, len(examples))
    else:
        cands = _Candidates.empty(tokens, len(examples))
    null_feat, null_cls, _ = _null_per_example(tokens, cls, np.zeros(n), len(examples))
    _warn_featureless(examples, null_feat >= 0)

    best_spans: OrderedDict[str, str] = OrderedDict()
    all_nbest: OrderedDict[str, list[dict]] = OrderedDict()
    null_odds: OrderedDict[str, float] = OrderedDict()
    for ex_i, example in enumerate(examples):
        qid = example.qas_id
        entries, _ = _nbest_texts(example.context, cands, ex_i, n_best_size, None)
        if not entries:
            entries = [("", -1e6, -1e6)]  # the classic's "no valid span" entry
        all_nbest[qid] = _nbest_json(entries, "start_log_prob", "end_log_prob")
        best_spans[qid] = entries[0][0]
        null_odds[qid] = float(null_cls[ex_i]) if null_feat[ex_i] >= 0 else NO_SPAN_NULL_ODDS
    return Decoded(best_spans, all_nbest, null_odds, decides_no_answer=False)


def compute_predictions_log_probs(examples: Sequence[Any], features: Any, start_top_log_probs: Any,
                                  start_top_index: Any, end_top_log_probs: Any, end_top_index: Any,
                                  cls_logits: Any, n_best_size: int = 20, max_answer_length: int = 30,
                                  start_n_top: int = 5, end_n_top: int = 5):
    """(predictions, nbest, null_odds) from the beam head's arrays, under the classic name (decode_beam)."""
    arrays = dict(zip(BEAM_ARRAYS, (start_top_log_probs, start_top_index, end_top_log_probs, end_top_index,
                                    cls_logits), strict=True))
    decoded = decode_beam(examples, features, arrays, DecodingSettings(n_best_size, max_answer_length),
                          start_n_top, end_n_top)
    return decoded.best_spans, decoded.nbest, decoded.null_odds


# --------------------------------------------------------------------------------------------
# The prediction files
# --------------------------------------------------------------------------------------------


def write_prediction_files(output_dir: str | os.PathLike, prefix: str, predictions: Mapping[str, str],
                           nbest: Mapping[str, list], null_odds: Mapping[str, float] | None,
                           files: FileSet | None = None) -> dict[str, str]:
    """Write predictions_<prefix>.json, nbest_predictions_<prefix>.json and (when given)
    null_odds_<prefix>.json, JSON with indent 4 as the classic script, each atomically, or staged in
    ``files`` (an evaluation's set, renamed in with its scores). The predictions file is staged last: it is
    the one the others explain. An empty prefix gives predictions.json etc. Returns
    {"predictions"|"nbest"|"null_odds": path}.
    """
    os.makedirs(output_dir, exist_ok=True)
    suffix = f"_{prefix}" if prefix else ""
    written = {"nbest": (f"nbest_predictions{suffix}.json", nbest)}
    if null_odds is not None:
        written["null_odds"] = (f"null_odds{suffix}.json", null_odds)
    written["predictions"] = (f"predictions{suffix}.json", predictions)
    paths = {}
    for key, (name, obj) in written.items():
        paths[key] = os.path.join(os.fspath(output_dir), name)
        if files is not None:
            files.write_json(paths[key], obj, indent=4)
        else:
            write_json_atomic(paths[key], obj, indent=4)
    return paths
