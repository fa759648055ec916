"""Benchmark: decode start/end logits into answers and score them, for a SQuAD-2.0-dev-sized set.

Synthetic but realistically shaped input: ~12,000 questions, ~1.03 features per question, ~190
tokens per feature (question ~12 tokens, the rest context), half of the questions unanswerable.
Times decoding.compute_predictions_logits (v2, n_best 20, max answer 30) and
squad_metrics.squad_evaluate with the null odds (threshold sweep included), and a naive
per-pair Python decoder (the classic loop) on a subset for a speed ratio in the same run.
The last line printed is JSON.

    python bench/decode.py [--questions 12000] [--naive-questions 1000] [--seed 0]
"""

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import squad_metrics as sm  # noqa: E402
from squad_internals import decoding  # noqa: E402

VOCAB = np.array(["the", "city", "Warsaw", "river", "1944", "of", "and", "Polish", "uprising", "in",
                  "a", "war", "French", "British", "fort", "Ohio", "treaty", "army", "was", "by"])


@dataclass
class Example:
    qas_id: str
    context: str


@dataclass
class Features:
    p_mask: np.ndarray
    offsets: np.ndarray
    max_context: np.ndarray
    feature_start: np.ndarray
    example_index: np.ndarray
    cls_index: np.ndarray


def make_context(rng, n_words):
    words = VOCAB[rng.integers(0, len(VOCAB), n_words)]
    lengths = np.char.str_len(words)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    return " ".join(words.tolist()), np.stack([starts, starts + lengths], axis=1)


def build(n_questions, rng):
    """Examples, features (CLS, question, SEP, context window, SEP) and gold answers."""
    examples, gold, parts = [], {}, []
    answer_words = {}
    for q in range(n_questions):
        n_question = int(rng.integers(8, 17))
        # ~3% of contexts are longer than one 384-token window and get a second, overlapping one.
        two_windows = rng.random() < 0.03
        n_words = int(rng.integers(380, 600)) if two_windows else int(rng.integers(110, 215))
        context, offsets = make_context(rng, n_words)
        qid = f"q{q:05d}"
        examples.append(Example(qid, context))
        if rng.random() < 0.5:
            s = int(rng.integers(0, n_words - 5))
            e = s + int(rng.integers(0, 4))
            gold[qid] = [context[offsets[s, 0]:offsets[e, 1]]]
            answer_words[q] = (s, e)
        else:
            gold[qid] = []
        cap = 384 - n_question - 3
        windows = [(0, min(cap, n_words))]
        if two_windows and n_words > cap:
            windows.append((n_words - cap, n_words))
        for w_i, (lo, hi) in enumerate(windows):
            n_ctx = hi - lo
            mid = (windows[0][1] + windows[-1][0]) // 2 if len(windows) > 1 else n_words
            owned = np.arange(lo, hi) < mid if w_i == 0 else np.arange(lo, hi) >= mid
            specials = n_question + 2
            parts.append({
                "p_mask": np.concatenate([[0], np.ones(n_question + 1), np.zeros(n_ctx), [1]]).astype(np.int8),
                "offsets": np.concatenate([np.full((specials, 2), -1), offsets[lo:hi], [[-1, -1]]]),
                "max_context": np.concatenate([np.zeros(specials, bool), owned, [False]]),
                "example": q, "first_word": lo, "specials": specials,
            })
    lengths = np.array([len(p["p_mask"]) for p in parts])
    feats = Features(
        p_mask=np.concatenate([p["p_mask"] for p in parts]),
        offsets=np.concatenate([p["offsets"] for p in parts]).astype(np.int32),
        max_context=np.concatenate([p["max_context"] for p in parts]),
        feature_start=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        example_index=np.array([p["example"] for p in parts], dtype=np.int32),
        cls_index=np.zeros(len(parts), dtype=np.int32),
    )
    # Logits: noise, the gold span boosted for answerable questions, CLS for unanswerable ones.
    start = rng.normal(0.0, 2.0, int(lengths.sum())).astype(np.float32)
    end = rng.normal(0.0, 2.0, int(lengths.sum())).astype(np.float32)
    for f_i, p in enumerate(parts):
        base = feats.feature_start[f_i]
        if p["example"] in answer_words:
            s, e = answer_words[p["example"]]
            if p["first_word"] <= s and e < p["first_word"] + len(p["p_mask"]) - p["specials"] - 1:
                start[base + p["specials"] + s - p["first_word"]] += rng.normal(6.0, 2.0)
                end[base + p["specials"] + e - p["first_word"]] += rng.normal(6.0, 2.0)
        else:
            start[base] += rng.normal(5.0, 2.0)
            end[base] += rng.normal(5.0, 2.0)
    return examples, feats, start, end, gold


def naive_decode(examples, feats, start, end, n_best_size=20, max_answer_length=30, threshold=0.0):
    """The classic decoder: Python loops over every top-n start x top-n end pair of every feature."""
    by_example = {}
    for f_i, ex_i in enumerate(feats.example_index.tolist()):
        by_example.setdefault(ex_i, []).append(f_i)
    preds, odds = {}, {}
    for ex_i, ex in enumerate(examples):
        prelim, null = [], None
        for f_i in by_example.get(ex_i, []):
            lo, hi = int(feats.feature_start[f_i]), int(feats.feature_start[f_i + 1])
            s_log, e_log = start[lo:hi].tolist(), end[lo:hi].tolist()
            p_mask, offsets, max_ctx = feats.p_mask[lo:hi], feats.offsets[lo:hi], feats.max_context[lo:hi]
            if null is None or s_log[0] + e_log[0] < null:
                null = s_log[0] + e_log[0]
            top_s = [i for i, _ in sorted(enumerate(s_log), key=lambda x: x[1], reverse=True)[:n_best_size]]
            top_e = [i for i, _ in sorted(enumerate(e_log), key=lambda x: x[1], reverse=True)[:n_best_size]]
            for i in top_s:
                for j in top_e:
                    if p_mask[i] or p_mask[j] or offsets[i, 0] < 0 or offsets[j, 0] < 0 or not max_ctx[i]:
                        continue
                    if j < i or j - i + 1 > max_answer_length:
                        continue
                    prelim.append((s_log[i] + e_log[j], int(offsets[i, 0]), int(offsets[j, 1])))
        prelim.sort(key=lambda p: p[0], reverse=True)
        best = next(((score, a, b) for score, a, b in prelim if b > a), None)
        if best is None:
            preds[ex.qas_id], odds[ex.qas_id] = "", decoding.NO_SPAN_NULL_ODDS
        else:
            odds[ex.qas_id] = null - best[0]
            preds[ex.qas_id] = "" if odds[ex.qas_id] > threshold else ex.context[best[1]:best[2]]
    return preds, odds


def subset(examples, feats, start, end, n):
    """The first n questions with their features and logits."""
    keep = np.flatnonzero(feats.example_index < n)
    lo, hi = int(feats.feature_start[keep[0]]), int(feats.feature_start[keep[-1] + 1])
    sub = Features(feats.p_mask[lo:hi], feats.offsets[lo:hi], feats.max_context[lo:hi],
                   feats.feature_start[: keep[-1] + 2], feats.example_index[keep], feats.cls_index[keep])
    return examples[:n], sub, start[lo:hi], end[lo:hi]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=12000)
    parser.add_argument("--naive-questions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    examples, feats, start, end, gold = build(args.questions, rng)
    n_features = len(feats.example_index)

    t0 = time.perf_counter()
    preds, nbest, null_odds = decoding.compute_predictions_logits(
        examples, feats, start, end, n_best_size=20, max_answer_length=30, version_2_with_negative=True)
    t1 = time.perf_counter()
    scores = sm.squad_evaluate(gold, preds, na_probs=null_odds)
    t2 = time.perf_counter()

    sub = subset(examples, feats, start, end, args.naive_questions)
    t3 = time.perf_counter()
    naive_preds, naive_odds = naive_decode(*sub)
    t4 = time.perf_counter()
    vec_preds, _, vec_odds = decoding.compute_predictions_logits(*sub, version_2_with_negative=True)
    t5 = time.perf_counter()
    agree = naive_preds == dict(vec_preds) and all(
        math.isclose(naive_odds[q], vec_odds[q], rel_tol=0, abs_tol=1e-9) for q in naive_odds)

    result = {
        "questions": args.questions, "features": n_features,
        "mean_tokens_per_feature": round(float(np.diff(feats.feature_start).mean()), 1),
        "decode_s": round(t1 - t0, 3), "score_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
        "questions_per_s": round(args.questions / (t2 - t0)),
        "naive_questions": args.naive_questions, "naive_decode_s": round(t4 - t3, 3),
        "vectorized_subset_decode_s": round(t5 - t4, 3),
        "naive_over_vectorized": round((t4 - t3) / (t5 - t4), 1),
        "naive_agrees": agree, "f1": round(scores["f1"], 2), "best_f1": round(scores["best_f1"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
