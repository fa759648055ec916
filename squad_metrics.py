"""Official SQuAD scoring (v1.1 and v2.0), the no-answer threshold sweep and its plots.

Scoring reproduces the official evaluation scripts' arithmetic exactly (same operations in the
same order), so every float equals theirs to the last digit whenever every question has a
prediction. Its functions carry the official ``evaluate-v2.0.py``'s names, in its order, so the two
read side by side; what it adds is checked input (one line naming the file and record), repeated
ids scored as each official script does, and a sweep over every span (``sweep_preds``). Turning
logits into answers is decoding.py's.

Why a module of its own: it is also a standalone command, a drop-in for the official ``evaluate-v2.0.py``
(and for v1.1 data, ``evaluate-v1.1.py``), and like them one file: standard library and numpy, matplotlib
only for the plots, no other module of this project, so it runs copied alone into any folder::

    python squad_metrics.py DATA.json PRED.json [--na-prob-file F] [--na-prob-thresh T]
                            [--out-file F] [--out-image-dir D] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import socket
import string
import sys
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

logger = logging.getLogger(__name__)

# The project's exit codes (cli.py's): 0 scored, 2 bad input (one line naming the file), 1 anything else.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Null odds when an example has no valid span at all: the answer is "" whatever the threshold. Its home
# is here, where the plots leave it out, so that this file needs no other; decoding.py writes it. 1e6 is
# the "large and positive" starting null score of the classic decoder; a finite value keeps null_odds
# files standard JSON (no Infinity).
NO_SPAN_NULL_ODDS = 1.0e6


class ScoringInputError(ValueError):
    """Bad scorer input; str() is one line naming the file (or argument), the record and the problem."""


# --------------------------------------------------------------------------------------------
# Answer normalization and per-answer metrics (official definitions)
# --------------------------------------------------------------------------------------------


def make_qid_to_has_ans(gold_answers: Mapping[str, Sequence[str]]) -> dict[str, bool]:
    """Whether each question has an answer (the official script reads it off the data file's articles)."""
    return {qid: bool(answers) for qid, answers in gold_answers.items()}


# Only ASCII punctuation is removed, as in the official scripts: "«" or "—" stay in the answer.
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, replace articles a/an/the by a space, collapse whitespace."""
    text = s.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def get_tokens(s: str) -> list[str]:
    """Tokens of the normalized answer (v2.0 definition: an empty input has no tokens)."""
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 when the normalized strings are equal, else 0."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def _overlap_f1(gold_toks: list[str], pred_toks: list[str]) -> int | float:
    # The token-overlap F1 both official scripts share: 0 when no token is common (also when a side
    # is empty), else 2PR/(P+R) with the same operations, so floats equal theirs bit for bit.
    common = Counter(gold_toks) & Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def _f1_from_tokens(gold_toks: list[str], pred_toks: list[str]) -> int | float:
    # v2.0 adds the empty-answer rule (an int, as the official script): 1 if both sides are empty, else 0.
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    return _overlap_f1(gold_toks, pred_toks)


def compute_f1(a_gold: str, a_pred: str) -> int | float:
    """Token F1 of the v2.0 script: 1 if both sides are empty, 0 if only one is."""
    return _f1_from_tokens(get_tokens(a_gold), get_tokens(a_pred))


def _f1_v1(prediction: str, ground_truth: str) -> int | float:
    # v1.1 has no empty-answer rule: two empty answers share no token and score 0.
    return _overlap_f1(normalize_answer(ground_truth).split(), normalize_answer(prediction).split())


# --------------------------------------------------------------------------------------------
# Scoring a prediction set (the official script's functions, in its order)
# --------------------------------------------------------------------------------------------


def get_raw_scores(gold_answers: Mapping[str, Sequence[str]], preds: Mapping[str, str]) -> tuple[dict, dict]:
    """Per-question EM and F1 (v2.0 rules), in data order, for questions that have a prediction.

    Gold answers that normalize to "" are dropped and [""] is used when none remain, so an
    unanswerable question scores 1 only for an empty prediction.
    """
    exact_scores: dict[str, int] = {}
    f1_scores: dict[str, int | float] = {}
    for qid, answers in gold_answers.items():
        if qid not in preds:
            continue
        golds = [a for a in answers if normalize_answer(a)] or [""]
        pred = preds[qid]
        # Normalize the prediction once (the official script does it per gold; the result is the same).
        pred_norm = normalize_answer(pred)
        pred_toks = pred_norm.split()
        exact_scores[qid] = max(int(normalize_answer(g) == pred_norm) for g in golds)
        f1_scores[qid] = max(_f1_from_tokens(get_tokens(g), pred_toks) for g in golds)
    return exact_scores, f1_scores


def apply_no_ans_threshold(scores: Mapping[str, float], na_probs: Mapping[str, float],
                           qid_to_has_ans: Mapping[str, bool], na_prob_thresh: float) -> dict:
    """Score a question as if the prediction were empty when its no-answer value exceeds the threshold."""
    new_scores = {}
    for qid, s in scores.items():
        if na_probs.get(qid, 0.0) > na_prob_thresh:
            new_scores[qid] = float(not qid_to_has_ans[qid])
        else:
            new_scores[qid] = s
    return new_scores


def make_eval_dict(exact_scores: Mapping, f1_scores: Mapping, qid_list: Sequence[str]) -> OrderedDict:
    """exact / f1 / total over qid_list; a question without a score (no prediction) adds 0 but counts."""
    total = len(qid_list)
    return OrderedDict([
        ("exact", 100.0 * sum(exact_scores[k] for k in qid_list if k in exact_scores) / total),
        ("f1", 100.0 * sum(f1_scores[k] for k in qid_list if k in f1_scores) / total),
        ("total", total),
    ])


def merge_eval(main_eval: OrderedDict, new_eval: Mapping, prefix: str) -> None:
    for k in new_eval:
        main_eval[f"{prefix}_{k}"] = new_eval[k]


def _import_matplotlib():
    """matplotlib's Figure class (matplotlib is optional: only --out-image-dir needs it)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ScoringInputError("--out-image-dir: matplotlib is not installed (pip install matplotlib)") from e
    return Figure


def _save_figure(fig, path: str) -> None:
    _write_atomic(path, lambda f: fig.savefig(f, format="png"), binary=True)


def plot_pr_curve(precisions: list, recalls: list, out_image: str, title: str, *, figure_cls) -> None:
    # A Figure object, not pyplot: no global state or GUI backend is touched inside a library call.
    fig = figure_cls()
    draw_pr_curve(fig.subplots(), precisions, recalls, title)
    _save_figure(fig, out_image)


def draw_pr_curve(ax, precisions: list, recalls: list, title: str) -> None:
    """The official script's precision-recall drawing, on one matplotlib axis."""
    ax.step(recalls, precisions, color="b", alpha=0.2, where="post")
    ax.fill_between(recalls, precisions, step="post", alpha=0.2, color="b")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0.0, 1.05), ylim=(0.0, 1.05), title=title)


def make_precision_recall_eval(scores: Mapping, na_probs: Mapping[str, float], num_true_pos: int,
                               qid_to_has_ans: Mapping[str, bool]) -> tuple[float, list, list]:
    """Average precision (0-100) of ranking by no-answer value, with the curve's points."""
    qid_list = [k for k in sorted(na_probs, key=lambda k: na_probs[k]) if k in qid_to_has_ans]
    true_pos = 0.0
    precisions = [1.0]
    recalls = [0.0]
    avg_prec = 0.0
    for i, qid in enumerate(qid_list):
        if qid_to_has_ans[qid]:
            true_pos += scores.get(qid, 0)
        cur_p = true_pos / float(i + 1)
        cur_r = true_pos / float(num_true_pos)
        # A threshold can only sit between two different values.
        if i == len(qid_list) - 1 or na_probs[qid] != na_probs[qid_list[i + 1]]:
            avg_prec += cur_p * (cur_r - recalls[-1])
            precisions.append(cur_p)
            recalls.append(cur_r)
    return 100.0 * avg_prec, precisions, recalls


def run_precision_recall_analysis(main_eval: OrderedDict, exact_raw: Mapping, f1_raw: Mapping,
                                  na_probs: Mapping[str, float], qid_to_has_ans: Mapping[str, bool],
                                  out_image_dir: str, *, figure_cls) -> None:
    """Add pr_exact_ap, pr_f1_ap, pr_oracle_ap and write the three PR curves as PNG."""
    os.makedirs(out_image_dir, exist_ok=True)
    num_true_pos = sum(1 for v in qid_to_has_ans.values() if v)
    if num_true_pos == 0:
        return
    oracle_scores = {k: float(v) for k, v in qid_to_has_ans.items()}
    curves = [
        ("pr_exact", exact_raw, "Precision-Recall curve for Exact Match score"),
        ("pr_f1", f1_raw, "Precision-Recall curve for F1 score"),
        ("pr_oracle", oracle_scores, "Oracle Precision-Recall curve (binary task of HasAns vs. NoAns)"),
    ]
    for name, scores, title in curves:
        ap, precisions, recalls = make_precision_recall_eval(scores, na_probs, num_true_pos, qid_to_has_ans)
        plot_pr_curve(precisions, recalls, os.path.join(out_image_dir, f"{name}.png"), title, figure_cls=figure_cls)
        main_eval[f"{name}_ap"] = ap


def _histogram_range(values: Sequence[float]) -> tuple[float, float]:
    """The histogram's x range: the official fixed (0, 1) when every value lies in [0, 1], else the data's.

    run_squad's null odds are logit differences (any real number), which on 0-1 bins would fall
    almost all outside the plot. The data's range leaves out non-finite values and
    NO_SPAN_NULL_ODDS (the value of examples without any valid span): one such sentinel would
    squash every other value into the first bin. Values outside the range still count in the
    proportions, they are just not drawn.
    """
    arr = np.asarray(values, dtype=np.float64)
    if np.all((arr >= 0.0) & (arr <= 1.0)):
        return 0.0, 1.0
    shown = arr[np.isfinite(arr) & (arr != NO_SPAN_NULL_ODDS)]
    if not shown.size:
        shown = arr[np.isfinite(arr)]
    if not shown.size:
        return 0.0, 1.0
    return float(shown.min()), float(shown.max())


def histogram_na_prob(na_probs: Mapping[str, float], qid_list: Sequence[str], image_dir: str, name: str,
                      *, figure_cls) -> None:
    """na_prob_hist_<name>.png: proportion of qid_list per no-answer value, in 20 bins.

    The x range is the official script's fixed 0-1 when every value lies in [0, 1]; otherwise
    (run_squad's null odds are logit differences, any real number) it is the data's own range,
    labelled "No-answer value (data range)" (see _histogram_range).
    """
    x = [na_probs[k] for k in qid_list if k in na_probs]
    if not x:
        return
    lo, hi = _histogram_range(x)
    fig = figure_cls()
    ax = fig.subplots()
    ax.hist(x, weights=np.ones(len(x)) / float(len(x)), bins=20, range=(lo, hi))
    ax.set_xlabel("Model probability of no-answer" if (lo, hi) == (0.0, 1.0) else "No-answer value (data range)")
    ax.set_ylabel("Proportion of dataset")
    ax.set_title(f"Histogram of no-answer probability: {name}")
    _save_figure(fig, os.path.join(image_dir, f"na_prob_hist_{name}.png"))


def find_best_thresh(preds: Mapping[str, str], scores: Mapping, na_probs: Mapping[str, float],
                     qid_to_has_ans: Mapping[str, bool], total: int) -> tuple[float, float]:
    """Best score over no-answer thresholds, and the threshold reaching it (official algorithm).

    Start from answering "no answer" everywhere, then lower the bar one question at a time in
    ascending no-answer order (ties in the order of ``na_probs``, as the official stable sort).
    A question without a prediction scores 0 whatever the threshold, so it is left out of both the
    starting score and the walk; with every prediction present this is the official computation.
    """
    cur_score = sum(1 for qid in scores if not qid_to_has_ans[qid])
    best_score = cur_score
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        # Strictly greater: on ties the earliest (lowest) threshold wins.
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / total, best_thresh


def find_all_best_thresh(main_eval: OrderedDict, preds: Mapping[str, str], exact_raw: Mapping, f1_raw: Mapping,
                         na_probs: Mapping[str, float], qid_to_has_ans: Mapping[str, bool]) -> None:
    """best_exact, best_exact_thresh, best_f1, best_f1_thresh of the file as written (the official sweep)."""
    total = len(qid_to_has_ans)
    main_eval["best_exact"], main_eval["best_exact_thresh"] = find_best_thresh(preds, exact_raw, na_probs,
                                                                               qid_to_has_ans, total)
    main_eval["best_f1"], main_eval["best_f1_thresh"] = find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans, total)


# --------------------------------------------------------------------------------------------
# The sweep over every span (what a run reports: each question's best span with its null odds)
# --------------------------------------------------------------------------------------------


def threshold_curve(preds: Mapping[str, str], scores: Mapping, na_probs: Mapping[str, float],
                    qid_to_has_ans: Mapping[str, bool]) -> tuple[list[float], list[float]]:
    """The summed score of answering exactly the questions whose no-answer value is at most t, for each t
    where it can change: first "no answer anywhere" (t below every value), then every distinct value in
    ascending order, a whole group of equal values at once (one threshold cannot split them).

    Returns (thresholds, summed scores); thresholds[0] is the smallest value minus 1.0. A question
    without a prediction scores 0 whatever the threshold and is left out, as in find_best_thresh.
    """
    walk = sorted((k for k in na_probs if k in scores), key=lambda k: na_probs[k])
    current = sum(1 for qid in scores if not qid_to_has_ans[qid])
    thresholds = [(na_probs[walk[0]] if walk else 0.0) - 1.0]
    summed = [current]
    for i, qid in enumerate(walk):
        current += scores[qid] if qid_to_has_ans[qid] else (-1 if preds[qid] else 0)
        if i + 1 == len(walk) or na_probs[walk[i + 1]] != na_probs[qid]:
            thresholds.append(na_probs[qid])
            summed.append(current)
    return thresholds, summed


def best_threshold(thresholds: Sequence[float], summed: Sequence[float]) -> float:
    """The threshold of the best point of a threshold_curve; the lowest wins ties, as in the official sweep.
    Unlike the official one it always reproduces the score when passed back as the decoding threshold
    (predict "" when the no-answer value exceeds it), also when "no answer anywhere" wins."""
    return thresholds[max(range(len(summed)), key=lambda i: (summed[i], -i))]


def score_at_threshold(raw: Mapping, na_probs: Mapping[str, float], qid_to_has_ans: Mapping[str, bool],
                       qid_list: Sequence[str], threshold: float) -> float:
    """The score (0-100) over qid_list at a threshold, with the arithmetic of the exact/f1 keys (sums in data
    order), so that a best score equals, to the last digit, the score printed when its threshold is used."""
    thresholded = apply_no_ans_threshold(raw, na_probs, qid_to_has_ans, threshold)
    return make_eval_dict(thresholded, thresholded, qid_list)["exact"]


def find_all_best_thresh_over_spans(main_eval: OrderedDict, gold: Mapping[str, Sequence[str]],
                                    sweep_preds: Mapping[str, str], na_probs: Mapping[str, float],
                                    qid_to_has_ans: Mapping[str, bool]) -> tuple[dict, dict]:
    """The same keys, swept over every question's best span: each threshold, passed back as the decoding
    threshold, reproduces its score exactly. Returns the spans' raw exact and F1 scores (for the PR curves)."""
    exact_raw, f1_raw = get_raw_scores(gold, sweep_preds)
    for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
        at = best_threshold(*threshold_curve(sweep_preds, raw, na_probs, qid_to_has_ans))
        main_eval[f"best_{name}"] = score_at_threshold(raw, na_probs, qid_to_has_ans, list(gold), at)
        main_eval[f"best_{name}_thresh"] = at
    return exact_raw, f1_raw


# --------------------------------------------------------------------------------------------
# squad_evaluate: the official main's recipe, for a run or the command line
# --------------------------------------------------------------------------------------------


def prediction_coverage(question_ids: Iterable[str], preds: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(question ids without a prediction, one per data entry; prediction ids that are not questions)."""
    qids = list(question_ids)
    known = set(qids)
    missing = [qid for qid in qids if qid not in preds]
    unknown = [qid for qid in preds if qid not in known]
    return missing, unknown


def _log_coverage(question_ids: Sequence[str], preds: Mapping) -> None:
    missing, unknown = prediction_coverage(question_ids, preds)
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0 (first: %s)",
                       len(missing), len(question_ids), missing[0])
    if unknown:
        logger.warning("%d prediction ids are not questions of the data and are not scored (first: %s)",
                       len(unknown), unknown[0])


def _check_na_probs(na_probs: Mapping[str, float], preds: Mapping[str, str], question_ids: Iterable[str],
                   source: str = "na_probs") -> None:
    """Every predicted question needs a no-answer value; ``source`` names the file in the error.

    The official script crashes with a KeyError here; say which question lacks a value instead.
    """
    lacking = [qid for qid in dict.fromkeys(question_ids) if qid in preds and qid not in na_probs]
    if lacking:
        raise ScoringInputError(f"{source}: question {lacking[0]!r}: no no-answer value "
                                f"({len(lacking)} predicted question(s) lack one)")


def _question_entries(gold_answers: Mapping[str, Sequence[str]] | Iterable[tuple[str, Sequence[str]]]
                      ) -> list[tuple[str, Sequence[str]]]:
    # A mapping holds one entry per id; a data file's entry list may repeat an id.
    if isinstance(gold_answers, Mapping):
        return list(gold_answers.items())
    return [(qid, answers) for qid, answers in gold_answers]


def _evaluate_v1(entries: Sequence[tuple[str, Sequence[str]]], preds: Mapping[str, str]) -> OrderedDict:
    # The v1.1 script: every data entry counts and is scored against its own gold answers (a repeated
    # id too), with running sums (+=, not sum()) and max over every gold answer as given.
    f1 = exact_match = total = 0
    for qid, golds in entries:
        total += 1
        if qid not in preds or not golds:
            continue
        pred = preds[qid]
        exact_match += max(normalize_answer(pred) == normalize_answer(g) for g in golds)
        f1 += max(_f1_v1(pred, g) for g in golds)
    return OrderedDict([("exact_match", 100.0 * exact_match / total), ("f1", 100.0 * f1 / total)])


def squad_evaluate(gold_answers: Mapping[str, Sequence[str]] | Iterable[tuple[str, Sequence[str]]],
                   preds: Mapping[str, str], na_probs: Mapping[str, float] | None = None,
                   na_prob_thresh: float = 1.0, version_2: bool = True,
                   out_image_dir: str | None = None, sweep_preds: Mapping[str, str] | None = None) -> OrderedDict:
    """Official SQuAD scores.

    gold_answers maps every question id (in data order) to its gold answer texts, [] when
    unanswerable; or it is the data file's question entries as (id, answer texts) pairs in file
    order, repeated ids included (parse_squad_questions). A repeated id is scored as each official
    script does: v1.1 scores every entry against its own answers and counts each in the total;
    v2.0 keys its scores by id, so the id counts once, at its first place, with its last entry's
    answers. version_2=True: the v2.0 script's keys and order (exact, f1, total, HasAns_*,
    NoAns_*, and with na_probs best_exact, best_exact_thresh, best_f1, best_f1_thresh, and with
    na_probs and out_image_dir pr_exact_ap, pr_f1_ap, pr_oracle_ap plus PNG plots).
    version_2=False: the v1.1 script's {exact_match, f1}. Questions without a prediction score 0
    and count in the totals; prediction ids not in the data are ignored (both logged).
    """
    entries = _question_entries(gold_answers)
    if not entries:
        raise ScoringInputError("gold_answers: no questions to score")
    # Imported once, here: a missing matplotlib fails before any work.
    figure_cls = _import_matplotlib() if version_2 and na_probs is not None and out_image_dir else None
    if not version_2:
        _log_coverage([qid for qid, _ in entries], preds)
        return _evaluate_v1(entries, preds)
    gold = OrderedDict(entries)  # the v2.0 script's dicts: first place, last entry's answers
    _log_coverage(list(gold), preds)
    if na_probs is not None:
        _check_na_probs(na_probs, preds, gold)
    qid_to_has_ans = make_qid_to_has_ans(gold)
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = get_raw_scores(gold, preds)
    # Without a no-answer file every value is 0.0, as the official default, so nothing is thresholded.
    thresh_probs = na_probs if na_probs is not None else {}
    exact_thresh = apply_no_ans_threshold(exact_raw, thresh_probs, qid_to_has_ans, na_prob_thresh)
    f1_thresh = apply_no_ans_threshold(f1_raw, thresh_probs, qid_to_has_ans, na_prob_thresh)
    out_eval = make_eval_dict(exact_thresh, f1_thresh, list(gold))
    if has_ans_qids:
        merge_eval(out_eval, make_eval_dict(exact_thresh, f1_thresh, has_ans_qids), "HasAns")
    if no_ans_qids:
        merge_eval(out_eval, make_eval_dict(exact_thresh, f1_thresh, no_ans_qids), "NoAns")
    if na_probs is not None:
        if sweep_preds is not None:
            exact_raw, f1_raw = find_all_best_thresh_over_spans(out_eval, gold, sweep_preds, na_probs, qid_to_has_ans)
        else:
            find_all_best_thresh(out_eval, preds, exact_raw, f1_raw, na_probs, qid_to_has_ans)
        if figure_cls is not None:
            _plots(out_eval, exact_raw, f1_raw, na_probs, qid_to_has_ans, out_image_dir, figure_cls)
    return out_eval


def _plots(out_eval, exact_raw, f1_raw, na_probs, qid_to_has_ans, out_image_dir: str, figure_cls) -> None:
    """The official script's precision-recall curves and no-answer histograms, in its order."""
    run_precision_recall_analysis(out_eval, exact_raw, f1_raw, na_probs, qid_to_has_ans, out_image_dir,
                                  figure_cls=figure_cls)
    for name, wanted in (("hasAns", True), ("noAns", False)):
        qids = [k for k, v in qid_to_has_ans.items() if v is wanted]
        histogram_na_prob(na_probs, qids, out_image_dir, name, figure_cls=figure_cls)


def gold_answers_from_examples(examples: Iterable[Any]) -> OrderedDict[str, list[str]]:
    """{qas_id: [answer texts]} from SquadExample-like objects ([] for unanswerable ones)."""
    gold: OrderedDict[str, list[str]] = OrderedDict()
    for ex in examples:
        gold[ex.qas_id] = [] if getattr(ex, "is_impossible", False) else [a["text"] for a in ex.answers]
    return gold


# --------------------------------------------------------------------------------------------
# Reading and validating the command line's files
# --------------------------------------------------------------------------------------------


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise ScoringInputError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise ScoringInputError(f"{path}: is a folder, not a file") from e
    except UnicodeDecodeError as e:
        raise ScoringInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        # json's messages may end in " at" ("Unterminated string starting at"): no doubled word.
        message = e.msg.removesuffix(" at")
        raise ScoringInputError(f"{path}: not valid JSON ({message} at line {e.lineno} column {e.colno})") from e
    except OSError as e:
        raise ScoringInputError(f"{path}: cannot read ({e.strerror})") from e


def _expect(cond: bool, path: str, where: str, problem: str) -> None:
    if not cond:
        raise ScoringInputError(f"{path}: {where}: {problem}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_squad_questions(dataset_json: Any, path: str = "data") -> tuple[list[tuple[str, list[str]]], bool]:
    """(every question entry as (id, answer texts) in file order, is_version_2); checks the layout.

    Repeated ids are kept, one entry each: the v1.1 script scores every entry (squad_evaluate
    accepts this list). Version 2.0 when any question has an ``is_impossible`` field or no
    answers, or the version field says 2; otherwise 1.1 (scored like the v1.1 script).
    """
    _expect(isinstance(dataset_json, dict) and isinstance(dataset_json.get("data"), list), path, "top level",
            'not SQuAD data (expected an object with a "data" list)')
    entries: list[tuple[str, list[str]]] = []
    saw_v2_field = False
    for a_i, article in enumerate(dataset_json["data"]):
        where = f"data[{a_i}]"
        _expect(isinstance(article, dict) and isinstance(article.get("paragraphs"), list), path, where,
                'expected an object with a "paragraphs" list')
        for p_i, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{a_i}].paragraphs[{p_i}]"
            _expect(isinstance(paragraph, dict) and isinstance(paragraph.get("qas"), list), path, where,
                    'expected an object with a "qas" list')
            for q_i, qa in enumerate(paragraph["qas"]):
                where = f"data[{a_i}].paragraphs[{p_i}].qas[{q_i}]"
                _expect(isinstance(qa, dict) and isinstance(qa.get("id"), str), path, where,
                        'expected an object with a string "id"')
                where = f"question {qa['id']!r}"
                _expect(isinstance(qa.get("answers"), list), path, where, 'expected an "answers" list')
                texts = []
                for ans in qa["answers"]:
                    _expect(isinstance(ans, dict) and isinstance(ans.get("text"), str), path, where,
                            'every answer must be an object with a string "text"')
                    texts.append(ans["text"])
                saw_v2_field = saw_v2_field or "is_impossible" in qa
                entries.append((qa["id"], texts))
    _expect(bool(entries), path, "data", "no questions")
    version = str(dataset_json.get("version", ""))
    version_2 = saw_v2_field or any(not t for _, t in entries) or version.lstrip("v").startswith("2")
    return entries, version_2


def parse_squad_dataset(dataset_json: Any, path: str = "data") -> tuple[OrderedDict[str, list[str]], bool]:
    """(gold answers by id in data order, is_version_2); see parse_squad_questions.

    A repeated id keeps its first place and its last entry's answers, as the v2.0 script's dicts.
    """
    entries, version_2 = parse_squad_questions(dataset_json, path)
    return OrderedDict(entries), version_2


def parse_predictions(preds: Any, path: str = "predictions") -> dict[str, str]:
    _expect(isinstance(preds, dict), path, "top level",
            f"expected an object mapping question id to answer text, got {_type_name(preds)}")
    for qid, text in preds.items():
        _expect(isinstance(text, str), path, f"question {qid!r}", f"answer must be a string, got {_type_name(text)}")
    return preds


def parse_na_probs(na_probs: Any, path: str = "na_probs") -> dict[str, float]:
    _expect(isinstance(na_probs, dict), path, "top level",
            f"expected an object mapping question id to a number, got {_type_name(na_probs)}")
    for qid, value in na_probs.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        _expect(ok, path, f"question {qid!r}", f"no-answer value must be a number, got {value!r}")
    return na_probs


# --------------------------------------------------------------------------------------------
# The no-answer plot of an evaluation
# --------------------------------------------------------------------------------------------


def plots_available() -> bool:
    """Whether matplotlib is installed (the plots are optional)."""
    try:
        _import_matplotlib()
    except ScoringInputError:
        return False
    return True


def plot_no_answer(gold_answers: Mapping[str, Sequence[str]], sweep_preds: Mapping[str, str],
                   na_probs: Mapping[str, float], used: float, path: str) -> None:
    """One PNG of the no-answer decision: EM and F1 (%) against the threshold, with the threshold used and
    the best F1 marked, beside the official precision-recall curves (exact, F1, oracle) with their APs."""
    figure_cls = _import_matplotlib()
    gold = OrderedDict(_question_entries(gold_answers))
    has_ans = {qid: bool(answers) for qid, answers in gold.items()}
    exact_raw, f1_raw = get_raw_scores(gold, sweep_preds)
    fig = figure_cls(figsize=(11, 8))
    (sweep, pr_exact), (pr_f1, pr_oracle) = fig.subplots(2, 2)
    for name, raw in (("EM", exact_raw), ("F1", f1_raw)):
        thresholds, summed = threshold_curve(sweep_preds, raw, na_probs, has_ans)
        sweep.step(thresholds, [100.0 * v / len(gold) for v in summed], where="post", label=name)
        if name == "F1":
            at = best_threshold(thresholds, summed)
            best = score_at_threshold(raw, na_probs, has_ans, list(gold), at)
            sweep.plot([at], [best], "o", color="black", label=f"best F1 {best:.2f} at {at:.3g}")
    sweep.axvline(used, color="grey", linestyle="--", label=f"threshold used: {used:g}")
    sweep.set(xlabel='no-answer threshold (predict "" above it)', ylabel="score (%)",
              title="EM and F1 against the no-answer threshold")
    sweep.legend(loc="best", fontsize="small")
    num_true_pos = sum(has_ans.values())
    oracle = {k: float(v) for k, v in has_ans.items()}
    for ax, scores, title in ((pr_exact, exact_raw, "exact match"), (pr_f1, f1_raw, "F1"), (pr_oracle, oracle, "oracle")):
        if not num_true_pos:
            ax.set_axis_off()
            continue
        ap, precisions, recalls = make_precision_recall_eval(scores, na_probs, num_true_pos, has_ans)
        draw_pr_curve(ax, precisions, recalls, f"Precision-recall, {title} (AP {ap:.2f})")
    fig.tight_layout()
    _save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Atomic writes (atomic_io.py's rule, kept here so that this file runs alone)
# --------------------------------------------------------------------------------------------


def _temporary_path(final: str) -> str:
    # atomic_io.temporary_path's name, <final>.<host>-<pid>.<random>.tmp, so that the project's cleaner
    # of a killed run's temporaries recognises these too (a test ties the two).
    host = socket.gethostname().replace(".", "_").replace("-", "_") or "host"
    return f"{final}.{host}-{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"


def _write_atomic(path: str, write: Callable[[IO], Any], binary: bool = False) -> None:
    """Run ``write(file)`` on a temporary beside ``path``, flush it to disk, rename it over ``path``: a
    reader never sees half a file. An OSError about the temporary is re-raised naming ``path``."""
    path = os.fspath(path)
    tmp = _temporary_path(path)
    try:
        with open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.filename == tmp:
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise


# --------------------------------------------------------------------------------------------
# Command line (drop-in for the official evaluate-v2.0.py)
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Official evaluation for SQuAD version 2.0 (and 1.1 data, detected from its content).")
    parser.add_argument("data_file", metavar="data.json", help="Input data JSON file.")
    parser.add_argument("pred_file", metavar="pred.json", help="Model predictions.")
    parser.add_argument("--out-file", "-o", metavar="eval.json",
                        help="Write accuracy metrics to file (default is stdout).")
    parser.add_argument("--na-prob-file", "-n", metavar="na_prob.json",
                        help="Model estimates of probability of no answer.")
    parser.add_argument("--na-prob-thresh", "-t", type=float, default=1.0,
                        help='Predict "" if no-answer probability exceeds this (default = 1.0).')
    parser.add_argument("--out-image-dir", "-p", metavar="out_images", default=None,
                        help="Save precision-recall curves to directory.")
    parser.add_argument("--verbose", "-v", action="store_true", help="Report what was read on stderr.")
    return parser.parse_args(argv)


def _finish_tool_writes(*paths: str | None) -> None:
    """In the project, the folders of files run_squad.py wrote are finished first where a killed run left an
    evaluation between two renames (never half of two evaluations); copied alone, the scorer reads them as
    they are."""
    try:  # the project's command line: absent when this file is copied alone
        from squad_internals import cli
    except ImportError:
        return
    for written in {os.path.dirname(os.path.abspath(p)) for p in paths if p}:
        cli.finish_writes_in(Path(written))


def _evaluate_files(opts: argparse.Namespace) -> tuple[OrderedDict, bool, str | None]:
    # The entry list, not a dict: the v1.1 script scores a repeated id once per entry.
    questions, version_2 = parse_squad_questions(_load_json(opts.data_file), opts.data_file)
    _finish_tool_writes(opts.pred_file, opts.na_prob_file)
    preds = parse_predictions(_load_json(opts.pred_file), opts.pred_file)
    na_probs = None
    if opts.na_prob_file and version_2:
        na_probs = parse_na_probs(_load_json(opts.na_prob_file), opts.na_prob_file)
        # Checked here too so that the error names the file rather than squad_evaluate's "na_probs".
        _check_na_probs(na_probs, preds, (qid for qid, _ in questions), opts.na_prob_file)
    elif opts.na_prob_file:
        logger.warning("%s is SQuAD 1.1 data: --na-prob-file is ignored", opts.data_file)
    if opts.verbose:
        n_no_ans = sum(1 for _, answers in questions if not answers)
        logger.warning("%s: %d questions (%d unanswerable), scored as SQuAD %s; %s: %d predictions",
                       opts.data_file, len(questions), n_no_ans, "2.0" if version_2 else "1.1",
                       opts.pred_file, len(preds))
    out = squad_evaluate(questions, preds, na_probs, opts.na_prob_thresh, version_2,
                         out_image_dir=opts.out_image_dir if na_probs is not None else None)
    return out, version_2, blanked_answers_note(preds, opts.pred_file) if na_probs is not None else None


def blanked_answers_note(preds: Mapping[str, str], pred_file: str) -> str | None:
    """The line for a predictions file with blanked answers ("") scored with its null odds (as run_squad
    writes them at its threshold): the official sweep cannot see the spans behind those, so best_* here differ
    from the run's own, swept over every span. Both are right; the user should know which is which."""
    blanked = sum(1 for answer in preds.values() if answer == "")
    if not blanked:
        return None
    return (f'note: best_exact, best_f1 and their thresholds are swept over {pred_file} as written, where {blanked} '
            'answers are "" (no answer at every threshold); run_squad.py swept every span of the same run: its '
            "optimum is in that run's eval_results.json and null_score_diff_threshold.json")


def _check_out_file(path: str | None) -> None:
    # Checked before scoring, in the words used for the input files, rather than failing at the rename.
    if path and os.path.isdir(path):
        raise ScoringInputError(f"{path}: is a folder, not a file (--out-file)")


def score_files(opts: argparse.Namespace) -> int:
    """Score the files and print (or write) the official JSON; a file that cannot be read or written is a
    ScoringInputError naming it."""
    try:
        _check_out_file(opts.out_file)
        out, version_2, note = _evaluate_files(opts)
        # The official scripts: v2.0 prints indent=2 or writes json.dump to --out-file; v1.1 prints one line.
        text = json.dumps(out, indent=2) if version_2 else json.dumps(dict(out))
        if opts.out_file:
            _write_atomic(opts.out_file, lambda f: f.write(json.dumps(out)))
        else:
            print(text)
    except OSError as e:
        raise ScoringInputError(f"{e.filename or ''}: {e.strerror}") from e
    if note:
        print(note, file=sys.stderr)
    return EXIT_OK


def _run_guarded(work: Callable[[], int]) -> int:
    # cli.run_guarded's rule: every failure is one line "error: ..." and its exit code, never a traceback.
    try:
        return work()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        text = str(exc).strip().splitlines()
        print(f"error: {text[0] if text else type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ScoringInputError) else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """The official script's command line; errors are one line (cli.py's form), exit code 2 for bad input."""
    opts = parse_args(argv)
    # Warnings (missing predictions, unknown ids) go to stderr as plain lines; stdout stays the JSON.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        return _run_guarded(lambda: score_files(opts))
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


if __name__ == "__main__":
    sys.exit(main())
