"""Answer decoding on hand-built logits and tiny hand-built features, and the vectorized decoders
against brute-force per-pair Python references on random logits."""

import json
import math
import re
from dataclasses import dataclass

import numpy as np
import pytest

from squad_internals import decoding

LOW = -10.0


@dataclass
class Example:
    qas_id: str
    context: str


@dataclass
class Features:
    """The CONTRACT attributes the decoders read (a ragged CSR layout over flat token arrays)."""

    p_mask: np.ndarray
    offsets: np.ndarray
    max_context: np.ndarray
    feature_start: np.ndarray
    example_index: np.ndarray
    cls_index: np.ndarray


def word_spans(context):
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", context)]


def window(context, words, example_index, n_question=2, owned=None):
    """One feature: [CLS] question tokens [SEP] context words [SEP]; owned = max-context words."""
    spans = word_spans(context)
    n_special = n_question + 2
    return {
        "p_mask": [0] + [1] * (n_question + 1) + [0] * len(words) + [1],
        "offsets": [(-1, -1)] * n_special + [spans[w] for w in words] + [(-1, -1)],
        "max_context": [False] * n_special + [owned is None or w in owned for w in words] + [False],
        "example_index": example_index,
        "first_context": n_special,
    }


def pack(windows):
    lengths = [len(w["p_mask"]) for w in windows]
    return Features(
        p_mask=np.array([v for w in windows for v in w["p_mask"]], dtype=np.int8),
        offsets=np.array([v for w in windows for v in w["offsets"]], dtype=np.int32).reshape(-1, 2),
        max_context=np.array([v for w in windows for v in w["max_context"]], dtype=bool),
        feature_start=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        example_index=np.array([w["example_index"] for w in windows], dtype=np.int32),
        cls_index=np.array([w.get("cls", 0) for w in windows], dtype=np.int32),
    )


class Logits:
    """Per-feature start/end logits, LOW everywhere unless set; flat() concatenates them."""

    def __init__(self, windows):
        self.windows = windows
        self.start = [np.full(len(w["p_mask"]), LOW) for w in windows]
        self.end = [np.full(len(w["p_mask"]), LOW) for w in windows]

    def word(self, feature, word_pos):
        return self.windows[feature]["first_context"] + word_pos

    def set(self, feature, start=None, end=None, s=0.0, e=0.0, pos_is_token=False):
        """start/end: positions among the feature's context words (or raw token positions)."""
        if start is not None:
            self.start[feature][start if pos_is_token else self.word(feature, start)] = s
        if end is not None:
            self.end[feature][end if pos_is_token else self.word(feature, end)] = e
        return self

    def flat(self):
        return np.concatenate(self.start), np.concatenate(self.end)


CONTEXT = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"


def decode(examples, windows, logits, **kw):
    start, end = logits.flat()
    return decoding.compute_predictions_logits(examples, pack(windows), start, end, **kw)


# ------------------------------------------------------------------------------------------------
# Hand-built cases
# ------------------------------------------------------------------------------------------------


def test_best_span_is_exact_context_substring():
    context = "The  Vistula River, (Poland)."
    windows = [window(context, range(4), 0)]
    logits = Logits(windows).set(0, 1, 2, s=5.0, e=4.0).set(0, 3, 3, s=1.0, e=1.0)
    preds, nbest, null_odds = decode([Example("q", context)], windows, logits, n_best_size=5)
    assert preds["q"] == "Vistula River,"   # offsets, not detokenized word pieces
    entry = nbest["q"][0]
    assert list(entry) == ["text", "probability", "start_logit", "end_logit"]
    assert (entry["start_logit"], entry["end_logit"]) == (5.0, 4.0)
    assert all(type(v) is float for e in nbest["q"] for k, v in e.items() if k != "text")
    assert math.isclose(sum(e["probability"] for e in nbest["q"]), 1.0, rel_tol=0, abs_tol=1e-12)
    assert null_odds == {}   # v1: no null odds


def test_probabilities_are_softmax_over_nbest():
    windows = [window(CONTEXT, range(3), 0)]
    logits = Logits(windows)
    logits.start[0][:] = LOW
    logits.set(0, 0, 0, s=2.0, e=1.0).set(0, 1, 1, s=1.0, e=0.0)
    _, nbest, _ = decode([Example("q", CONTEXT)], windows, logits, n_best_size=2)
    # Top 2 starts (w0, w1) x top 2 ends (w0, w1): w0 3.0, w0..w1 2.0; w1..w1 1.0 is left out of the n-best.
    texts = [e["text"] for e in nbest["q"]]
    assert texts == ["w0", "w0 w1"]
    z = math.exp(0.0) + math.exp(-1.0)
    assert [e["probability"] for e in nbest["q"]] == pytest.approx([1 / z, math.exp(-1.0) / z], abs=1e-15)


def test_max_answer_length():
    windows = [window(CONTEXT, range(10), 0)]
    logits = Logits(windows).set(0, 1, 6, s=9.0, e=9.0).set(0, 4, None, s=5.0)   # w1..w6 has 6 tokens
    preds, _, _ = decode([Example("q", CONTEXT)], windows, logits, max_answer_length=5)
    assert preds["q"] == "w4 w5 w6"   # best start with an end at most 5 tokens on: w4..w6
    preds, _, _ = decode([Example("q", CONTEXT)], windows, logits, max_answer_length=6)
    assert preds["q"] == "w1 w2 w3 w4 w5 w6"


def test_end_before_start_is_discarded():
    windows = [window(CONTEXT, range(10), 0)]
    logits = Logits(windows).set(0, 7, 2, s=9.0, e=9.0).set(0, None, 8, e=1.0)
    preds, nbest, _ = decode([Example("q", CONTEXT)], windows, logits, n_best_size=3)
    assert preds["q"] == "w7 w8"
    assert all(e["text"] != "" for e in nbest["q"])


def test_spans_crossing_the_question_and_specials_are_discarded():
    windows = [window(CONTEXT, range(5), 0)]
    logits = Logits(windows)
    # Highest start on a question token, highest end on the final [SEP], CLS high on both (v1 ignores it).
    logits.set(0, 1, None, s=20.0, pos_is_token=True).set(0, None, 9, e=20.0, pos_is_token=True)
    logits.set(0, 0, 0, s=15.0, e=15.0, pos_is_token=True)
    logits.set(0, 2, 3, s=3.0, e=3.0)
    preds, nbest, _ = decode([Example("q", CONTEXT)], windows, logits, n_best_size=4)
    assert preds["q"] == "w2 w3"
    assert all(re.fullmatch(r"w\d( w\d)*", e["text"]) for e in nbest["q"])


def xlnet_window(context, words, n_question=2):
    """XLNet layout: question tokens [SEP] context words [SEP] [CLS], CLS last with offsets (0, 0).

    Worst case for the decoder: CLS has p_mask 0 (the no-answer target) and even a max-context flag,
    so only its cls_index tells it apart from a context token.
    """
    spans = word_spans(context)
    n_lead = n_question + 1
    return {
        "p_mask": [1] * n_lead + [0] * len(words) + [1, 0],
        "offsets": [(-1, -1)] * n_lead + [spans[w] for w in words] + [(-1, -1), (0, 0)],
        "max_context": [False] * n_lead + [True] * len(words) + [False, True],
        "example_index": 0,
        "first_context": n_lead,
        "cls": n_lead + len(words) + 1,
    }


def test_cls_with_zero_offsets_is_never_a_span_start_or_end():
    context = "w0 w1 w2 w3"
    windows = [xlnet_window(context, range(4))]
    cls = windows[0]["cls"]
    logits = Logits(windows).set(0, cls, cls, s=20.0, e=20.0, pos_is_token=True)   # CLS: the highest logits
    logits.set(0, 1, 2, s=3.0, e=3.0)
    ex = [Example("q", context)]
    preds, nbest, _ = decode(ex, windows, logits, n_best_size=20)
    assert preds["q"] == "w1 w2"
    assert all(re.fullmatch(r"w\d( w\d)*", e["text"]) for e in nbest["q"])   # no "" from spans ending at CLS
    assert all(e["start_logit"] != 20.0 and e["end_logit"] != 20.0 for e in nbest["q"])
    # v2: CLS is the null candidate only, with its own logits; the best span is still w1 w2.
    preds, nbest, odds = decode(ex, windows, logits, n_best_size=20, version_2_with_negative=True)
    assert preds["q"] == "" and odds["q"] == 40.0 - 3.0 - 3.0
    empties = [e for e in nbest["q"] if e["text"] == ""]
    assert len(empties) == 1 and (empties[0]["start_logit"], empties[0]["end_logit"]) == (20.0, 20.0)
    assert [e["text"] for e in nbest["q"]][:2] == ["", "w1 w2"]
    # The beam head: CLS as the top start and as end of every start is skipped as well.
    first = windows[0]["first_context"]
    start_idx = np.array([[cls, first + 1]])
    end_idx = np.array([[cls, cls, cls, first + 2]])
    preds, nbest, _ = decoding.compute_predictions_log_probs(
        ex, pack(windows), np.array([[-0.1, -0.5]]), start_idx, np.array([[-0.1, -0.2, -0.1, -0.9]]), end_idx,
        np.array([0.0]), n_best_size=5, start_n_top=2, end_n_top=2)
    assert preds["q"] == "w1 w2" and [e["text"] for e in nbest["q"]] == ["w1 w2"]


def test_max_context_window_decides_the_start():
    # Two windows over w0..w6 and w3..w9; w0..w4 belong to window A, w5..w9 to window B.
    windows = [window(CONTEXT, range(0, 7), 0, owned=set(range(0, 5))),
               window(CONTEXT, range(3, 10), 0, owned=set(range(5, 10)))]
    logits = Logits(windows)
    logits.set(0, 6, 6, s=10.0, e=10.0)     # argmax start w6 in window A, outside its max context
    logits.set(1, 3, 3, s=4.0, e=4.0)       # w6 is position 3 of window B
    logits.set(0, 2, 2, s=1.0, e=1.0)       # a weaker valid span in A (w2..w6 is too long here)
    preds, nbest, _ = decode([Example("q", CONTEXT)], windows, logits, n_best_size=3, max_answer_length=2)
    assert preds["q"] == "w6"
    assert (nbest["q"][0]["start_logit"], nbest["q"][0]["end_logit"]) == (4.0, 4.0)
    # The END may lie outside the max-context window; only the start is checked.
    logits.set(0, 3, 6, s=9.0, e=10.0)
    preds, _, _ = decode([Example("q", CONTEXT)], windows, logits)
    assert preds["q"] == "w3 w4 w5 w6"


def test_nbest_keeps_distinct_texts():
    # The same span seen from both overlapping windows appears once, with the better logits.
    windows = [window(CONTEXT, range(0, 7), 0), window(CONTEXT, range(3, 10), 0)]
    logits = Logits(windows).set(0, 4, 4, s=3.0, e=3.0).set(1, 1, 1, s=5.0, e=5.0)
    logits.set(0, 2, None, s=1.0).set(1, None, 2, e=0.5)
    _, nbest, _ = decode([Example("q", CONTEXT)], windows, logits, n_best_size=20)
    texts = [e["text"] for e in nbest["q"]]
    assert len(texts) == len(set(texts)) and texts[0] == "w4"
    assert nbest["q"][0]["start_logit"] == 5.0
    _, nbest, _ = decode([Example("q", CONTEXT)], windows, logits, n_best_size=2)
    assert len(nbest["q"]) == 2


def test_null_answer_v2():
    windows = [window(CONTEXT, range(0, 6), 0), window(CONTEXT, range(4, 10), 0)]
    logits = Logits(windows)
    logits.set(0, 0, 0, s=1.5, e=0.5, pos_is_token=True)   # null 2.0
    logits.set(1, 0, 0, s=0.25, e=0.75, pos_is_token=True)  # null 1.0: the minimum over features
    logits.set(0, 1, 2, s=2.0, e=1.0)                       # best span w1 w2 scores 3.0
    ex = [Example("q", CONTEXT)]
    preds, nbest, odds = decode(ex, windows, logits, version_2_with_negative=True, n_best_size=3)
    assert odds["q"] == 1.0 - 2.0 - 1.0 and preds["q"] == "w1 w2"
    null_entry = [e for e in nbest["q"] if e["text"] == ""]
    assert len(null_entry) == 1 and (null_entry[0]["start_logit"], null_entry[0]["end_logit"]) == (0.25, 0.75)
    preds, _, _ = decode(ex, windows, logits, version_2_with_negative=True, null_score_diff_threshold=-2.5)
    assert preds["q"] == ""   # score_diff -2.0 > -2.5
    # A weak best span: null odds positive, empty answer at the default threshold 0.0.
    logits.set(0, 1, 2, s=0.25, e=0.25)
    preds, nbest, odds = decode(ex, windows, logits, version_2_with_negative=True, n_best_size=3)
    assert preds["q"] == "" and odds["q"] == 0.5 and nbest["q"][0]["text"] == ""


def test_null_is_always_in_v2_nbest():
    windows = [window(CONTEXT, range(10), 0)]
    logits = Logits(windows).set(0, 2, 3, s=5.0, e=5.0).set(0, 5, 6, s=4.0, e=4.0)
    _, nbest, _ = decode([Example("q", CONTEXT)], windows, logits, version_2_with_negative=True, n_best_size=2)
    texts = [e["text"] for e in nbest["q"]]
    assert texts[:2] == ["w2 w3", "w2 w3 w4 w5 w6"] and texts[2] == "" and len(texts) == 3


def test_no_valid_span_predicts_empty():
    windows = [window(CONTEXT, range(3), 0)]
    logits = Logits(windows)
    ex = [Example("q", CONTEXT)]
    # Only one start and end are considered and they form end < start.
    logits.set(0, 2, 0, s=5.0, e=5.0)
    preds, nbest, _ = decode(ex, windows, logits, n_best_size=1)
    assert preds["q"] == "" and [e["text"] for e in nbest["q"]] == [""]
    assert nbest["q"][0]["probability"] == 1.0
    preds, nbest, odds = decode(ex, windows, logits, n_best_size=1, version_2_with_negative=True)
    assert preds["q"] == "" and odds["q"] == decoding.NO_SPAN_NULL_ODDS
    assert [e["text"] for e in nbest["q"]] == [""]


def test_examples_keep_their_order_and_own_features():
    ctx_b = "alpha beta gamma"
    windows = [window(ctx_b, range(3), 1), window(CONTEXT, range(10), 0)]
    logits = Logits(windows).set(0, 1, 2, s=3.0, e=3.0).set(1, 4, 4, s=3.0, e=3.0)
    preds, nbest, _ = decode([Example("a", CONTEXT), Example("b", ctx_b)], windows, logits)
    assert list(preds.items()) == [("a", "w4"), ("b", "beta gamma")]
    assert list(nbest) == ["a", "b"]


def test_non_finite_logits_raise_one_line_error():
    windows = [window(CONTEXT, range(5), 0), window(CONTEXT, range(5, 10), 0)]
    logits = Logits(windows)
    logits.start[1][3] = np.nan
    with pytest.raises(ValueError) as err:
        decode([Example("q", CONTEXT)], windows, logits)
    msg = str(err.value)
    assert "\n" not in msg and "start_logits" in msg and "NaN or inf" in msg and "feature 1" in msg
    logits.start[1][3] = 0.0
    logits.end[0][0] = -np.inf
    with pytest.raises(ValueError, match="end_logits: 1 non-finite"):
        decode([Example("q", CONTEXT)], windows, logits)


def test_shape_mismatch_is_an_error():
    windows = [window(CONTEXT, range(5), 0)]
    start, end = Logits(windows).flat()
    with pytest.raises(ValueError, match="start_logits: expected 10 rows"):
        decoding.compute_predictions_logits([Example("q", CONTEXT)], pack(windows), start[:-1], end)
    with pytest.raises(ValueError, match="example_index"):
        decoding.compute_predictions_logits([], pack(windows), start, end)


# ------------------------------------------------------------------------------------------------
# Beam-search head (XLNet / XLM)
# ------------------------------------------------------------------------------------------------


def test_beam_pairs_start_i_with_ends_i_times_end_n_top_plus_j():
    windows = [window(CONTEXT, range(10), 0)]
    first = windows[0]["first_context"]
    # start_n_top 2, end_n_top 2: start 0 -> w1 pairs with ends [w0 (invalid, before), w2];
    # start 1 -> w5 pairs with ends [w5, w9].
    start_idx = np.array([[first + 1, first + 5]])
    start_lp = np.array([[-0.5, -1.0]])
    end_idx = np.array([[first + 0, first + 2, first + 5, first + 9]])
    end_lp = np.array([[-0.1, -0.7, -0.2, -0.3]])
    cls = np.array([3.5])
    preds, nbest, odds = decoding.compute_predictions_log_probs(
        [Example("q", CONTEXT)], pack(windows), start_lp, start_idx, end_lp, end_idx, cls,
        n_best_size=5, max_answer_length=4, start_n_top=2, end_n_top=2)
    # w1..w2 -1.2; w5 -1.2 (tie: start rank 0 first); w5..w9 is 5 tokens > 4.
    assert [e["text"] for e in nbest["q"]] == ["w1 w2", "w5"]
    assert list(nbest["q"][0]) == ["text", "probability", "start_log_prob", "end_log_prob"]
    assert preds["q"] == "w1 w2" and odds["q"] == 3.5   # the answer ignores the null value


def test_beam_null_odds_is_min_cls_and_empty_when_nothing_valid():
    windows = [window(CONTEXT, range(0, 6), 0), window(CONTEXT, range(4, 10), 0)]
    idx = np.zeros((2, 1), dtype=np.int64)   # CLS: never a valid span
    preds, nbest, odds = decoding.compute_predictions_log_probs(
        [Example("q", CONTEXT)], pack(windows), np.zeros((2, 1)), idx, np.zeros((2, 1)), idx,
        np.array([2.0, -1.5]), start_n_top=1, end_n_top=1)
    assert preds["q"] == "" and odds["q"] == -1.5
    assert nbest["q"] == [{"text": "", "probability": 1.0, "start_log_prob": -1e6, "end_log_prob": -1e6}]


def test_beam_rejects_nan_and_bad_shapes():
    windows = [window(CONTEXT, range(5), 0)]
    args = [np.zeros((1, 2)), np.full((1, 2), 4), np.zeros((1, 4)), np.full((1, 4), 4), np.array([0.0])]
    args[4] = np.array([np.nan])
    with pytest.raises(ValueError, match="cls_logits: 1 non-finite"):
        decoding.compute_predictions_log_probs([Example("q", CONTEXT)], pack(windows), *args, start_n_top=2, end_n_top=2)
    args[4] = np.array([0.0])
    with pytest.raises(ValueError, match=r"end_top_log_probs: expected shape \[1, 6\], got \[1, 4\]"):
        decoding.compute_predictions_log_probs([Example("q", CONTEXT)], pack(windows), *args, start_n_top=2, end_n_top=3)


# ------------------------------------------------------------------------------------------------
# Vectorized decoders == brute-force references on random logits
# ------------------------------------------------------------------------------------------------


def random_case(rng, n_examples=40):
    examples, windows = [], []
    for ex_i in range(n_examples):
        n_words = int(rng.integers(1, 30))
        context = " ".join(f"t{ex_i}_{int(w)}" for w in rng.integers(0, 8, n_words))   # repeated words
        examples.append(Example(f"q{ex_i}", context))
        win, stride = int(rng.integers(3, 12)), int(rng.integers(1, 6))
        starts = list(range(0, max(n_words - win, 0) + 1, stride))
        if starts[-1] + win < n_words:
            starts.append(n_words - win)
        for s in starts:
            words = range(s, min(s + win, n_words))
            owned = {w for w in words if rng.random() < 0.8}
            windows.append(window(context, words, ex_i, n_question=int(rng.integers(1, 4)), owned=owned))
    order = rng.permutation(len(windows))   # features of an example need not be adjacent
    return examples, [windows[i] for i in order]


def brute_force_logits(examples, windows, start, end, n_best_size, max_len, v2, thresh):
    """The classic algorithm, pair by pair, with sorted() for top-n and the candidate order."""
    bounds = np.concatenate([[0], np.cumsum([len(w["p_mask"]) for w in windows])])
    preds, all_nbest, odds = {}, {}, {}
    for ex_i, ex in enumerate(examples):
        prelim, null = [], None
        for f_i, w in enumerate(windows):
            if w["example_index"] != ex_i:
                continue
            s_log, e_log = start[bounds[f_i]:bounds[f_i + 1]], end[bounds[f_i]:bounds[f_i + 1]]
            if null is None or s_log[0] + e_log[0] < null[0]:
                null = (s_log[0] + e_log[0], float(s_log[0]), float(e_log[0]))
            top_s = [i for i, _ in sorted(enumerate(s_log), key=lambda x: x[1], reverse=True)[:n_best_size]]
            top_e = [i for i, _ in sorted(enumerate(e_log), key=lambda x: x[1], reverse=True)[:n_best_size]]

            def ctx(i, w=w):
                return w["p_mask"][i] == 0 and w["offsets"][i][0] >= 0

            for i in top_s:
                for j in top_e:
                    if not (ctx(i) and ctx(j) and w["max_context"][i]) or j < i or j - i + 1 > max_len:
                        continue
                    text = ex.context[w["offsets"][i][0]:w["offsets"][j][1]]
                    prelim.append((float(s_log[i]) + float(e_log[j]), text, float(s_log[i]), float(e_log[j])))
        if v2:
            prelim.append((null[0], "", null[1], null[2]))
        prelim.sort(key=lambda p: p[0], reverse=True)
        nbest, seen = [], set()
        for _, text, s, e in prelim:
            if len(nbest) < n_best_size and text not in seen:
                seen.add(text)
                nbest.append((text, s, e))
        if (v2 and "" not in seen) or not nbest:
            nbest.append(("", null[1], null[2]))
        totals = [s + e for _, s, e in nbest]
        exps = [math.exp(t - max(totals)) for t in totals]
        all_nbest[ex.qas_id] = [{"text": t, "probability": x / sum(exps), "start_logit": s, "end_logit": e}
                                for (t, s, e), x in zip(nbest, exps, strict=True)]
        non_null = [p for p in prelim if p[1]]
        if not v2:
            preds[ex.qas_id] = nbest[0][0]
        elif not non_null:
            preds[ex.qas_id], odds[ex.qas_id] = "", decoding.NO_SPAN_NULL_ODDS
        else:
            odds[ex.qas_id] = null[0] - non_null[0][2] - non_null[0][3]
            preds[ex.qas_id] = "" if odds[ex.qas_id] > thresh else non_null[0][1]
    return preds, all_nbest, odds


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("rounded", [False, True])   # rounded logits: many ties, decided by classic order
def test_vectorized_equals_brute_force(seed, v2, rounded):
    rng = np.random.default_rng(seed)
    examples, windows = random_case(rng)
    start, end = Logits(windows).flat()
    start, end = rng.normal(0, 2, len(start)), rng.normal(0, 2, len(end))
    if rounded:
        start, end = np.round(start), np.round(end)
    for n_best, max_len in [(5, 4), (20, 30), (1, 2)]:
        got = decoding.compute_predictions_logits(examples, pack(windows), start, end, n_best_size=n_best,
                                            max_answer_length=max_len, version_2_with_negative=v2,
                                            null_score_diff_threshold=0.5)
        want = brute_force_logits(examples, windows, start, end, n_best, max_len, v2, 0.5)
        assert dict(got[0]) == want[0]
        assert json.dumps(got[1]) == json.dumps(want[1])   # same order, texts and floats
        assert dict(got[2]) == want[2]


def brute_force_beam(examples, windows, s_lp, s_idx, e_lp, e_idx, cls, n_best_size, max_len, s_top, e_top):
    preds, all_nbest, odds = {}, {}, {}
    for ex_i, ex in enumerate(examples):
        prelim, null = [], decoding.NO_SPAN_NULL_ODDS
        for f_i, w in enumerate(windows):
            if w["example_index"] != ex_i:
                continue
            null = min(null, float(cls[f_i]))
            n_tok = len(w["p_mask"])
            for i in range(s_top):
                for j in range(e_top):
                    si, ei = s_idx[f_i, i], e_idx[f_i, i * e_top + j]
                    if not (0 <= si < n_tok and 0 <= ei < n_tok):
                        continue
                    ok = (w["p_mask"][si] == 0 and w["offsets"][si][0] >= 0 and w["max_context"][si]
                          and w["p_mask"][ei] == 0 and w["offsets"][ei][0] >= 0)
                    if not ok or ei < si or ei - si + 1 > max_len:
                        continue
                    text = ex.context[w["offsets"][si][0]:w["offsets"][ei][1]]
                    prelim.append((float(s_lp[f_i, i]) + float(e_lp[f_i, i * e_top + j]), text,
                                   float(s_lp[f_i, i]), float(e_lp[f_i, i * e_top + j])))
        prelim.sort(key=lambda p: p[0], reverse=True)
        nbest, seen = [], set()
        for _, text, s, e in prelim:
            if len(nbest) < n_best_size and text not in seen:
                seen.add(text)
                nbest.append((text, s, e))
        nbest = nbest or [("", -1e6, -1e6)]
        totals = [s + e for _, s, e in nbest]
        exps = [math.exp(t - max(totals)) for t in totals]
        all_nbest[ex.qas_id] = [{"text": t, "probability": x / sum(exps), "start_log_prob": s, "end_log_prob": e}
                                for (t, s, e), x in zip(nbest, exps, strict=True)]
        preds[ex.qas_id], odds[ex.qas_id] = nbest[0][0], null
    return preds, all_nbest, odds


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_vectorized_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    examples, windows = random_case(rng)
    n, s_top, e_top = len(windows), 5, 5
    max_tok = max(len(w["p_mask"]) for w in windows)
    s_idx = rng.integers(0, max_tok + 2, (n, s_top))          # some beyond their feature: invalid
    e_idx = rng.integers(0, max_tok + 2, (n, s_top * e_top))
    s_lp = np.round(-rng.exponential(1.0, (n, s_top)), 1)    # ties included
    e_lp = np.round(-rng.exponential(1.0, (n, s_top * e_top)), 1)
    cls = rng.normal(0, 1, n)
    got = decoding.compute_predictions_log_probs(examples, pack(windows), s_lp, s_idx, e_lp, e_idx, cls,
                                           n_best_size=4, max_answer_length=6, start_n_top=s_top, end_n_top=e_top)
    want = brute_force_beam(examples, windows, s_lp, s_idx, e_lp, e_idx, cls, 4, 6, s_top, e_top)
    assert dict(got[0]) == want[0]
    assert json.dumps(got[1]) == json.dumps(want[1])
    assert dict(got[2]) == want[2]


# ------------------------------------------------------------------------------------------------
# Prediction files
# ------------------------------------------------------------------------------------------------


def test_write_prediction_files(tmp_path):
    windows = [window(CONTEXT, range(10), 0)]
    logits = Logits(windows).set(0, 2, 3, s=5.0, e=5.0)
    preds, nbest, odds = decode([Example("q", CONTEXT)], windows, logits, version_2_with_negative=True)
    paths = decoding.write_prediction_files(tmp_path / "out", "step100", preds, nbest, odds)
    assert {k: p.rsplit("/", 1)[1] for k, p in paths.items()} == {
        "predictions": "predictions_step100.json", "nbest": "nbest_predictions_step100.json",
        "null_odds": "null_odds_step100.json"}
    text = (tmp_path / "out" / "predictions_step100.json").read_text()
    assert text == json.dumps(preds, indent=4) + "\n"
    assert json.loads((tmp_path / "out" / "nbest_predictions_step100.json").read_text()) == nbest
    assert json.loads((tmp_path / "out" / "null_odds_step100.json").read_text()) == odds
    paths = decoding.write_prediction_files(tmp_path / "v1", "", preds, nbest, None)
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["nbest_predictions.json", "predictions.json"]


def test_example_without_features_gets_empty_answer(caplog):
    windows = [window(CONTEXT, range(10), 1)]
    logits = Logits(windows).set(0, 2, 3, s=5.0, e=5.0)
    with caplog.at_level("WARNING", logger="squad_internals.decoding"):
        preds, nbest, odds = decode([Example("lost", CONTEXT), Example("q", CONTEXT)], windows, logits,
                                    version_2_with_negative=True)
    assert preds == {"lost": "", "q": "w2 w3"} and odds["lost"] == decoding.NO_SPAN_NULL_ODDS
    assert [e["text"] for e in nbest["lost"]] == [""]
    assert "1 example(s) have no features" in caplog.text
