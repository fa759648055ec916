"""squad_metrics scoring: hand-computed values for every rule, and bit-for-bit equality with an
independent re-implementation of the official v2.0 / v1.1 evaluation scripts on the real data."""

import copy
import itertools
import json
import os
import random
import re
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

import squad_metrics as sm

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Independent reference: the official algorithms, written from REFERENCE.md with another structure
# (regex punctuation class, flat question list, argmax formulation of the threshold walk).
# ------------------------------------------------------------------------------------------------

_REF_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


def ref_norm(text):
    text = _REF_PUNCT.sub("", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def ref_f1_v2(gold, pred):
    g = ref_norm(gold).split() if gold else []
    p = ref_norm(pred).split() if pred else []
    if not g or not p:
        return int(g == p)
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0
    prec, rec = 1.0 * same / len(p), 1.0 * same / len(g)
    return (2 * prec * rec) / (prec + rec)


def ref_f1_v1(pred, gold):
    p, g = ref_norm(pred).split(), ref_norm(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0
    prec, rec = 1.0 * same / len(p), 1.0 * same / len(g)
    return (2 * prec * rec) / (prec + rec)


def ref_questions(dataset_json):
    return [qa for art in dataset_json["data"] for par in art["paragraphs"] for qa in par["qas"]]


def ref_best(preds, raw, na_probs, has_ans, n):
    # Running score after each question (ascending no-answer value, stable); the official "strictly
    # greater than the best so far" picks the first position reaching the overall maximum.
    order = [q for q in sorted(na_probs, key=lambda q: na_probs[q]) if q in raw]
    steps = [raw[q] if has_ans[q] else (-1 if preds[q] else 0) for q in order]
    start = sum(1 for v in has_ans.values() if not v)
    running = list(itertools.accumulate(steps, initial=start))[1:]
    if not running or max(running) <= start:
        return 100.0 * start / n, 0.0
    top = max(running)
    return 100.0 * top / n, na_probs[order[running.index(top)]]


def ref_ap(raw, na_probs, has_ans):
    order = sorted(na_probs, key=lambda q: na_probs[q])
    n_pos = sum(1 for v in has_ans.values() if v)
    tp, ap, last_r = 0.0, 0.0, 0.0
    for i, q in enumerate(order):
        if has_ans[q]:
            tp += raw[q]
        p, r = tp / float(i + 1), tp / float(n_pos)
        if i + 1 == len(order) or na_probs[q] != na_probs[order[i + 1]]:
            ap += p * (r - last_r)
            last_r = r
    return 100.0 * ap


def ref_eval_v2(dataset_json, preds, na_probs=None, thresh=1.0, images=False):
    qas = ref_questions(dataset_json)
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in qas}
    em, f1 = {}, {}
    for qa in qas:
        golds = [a["text"] for a in qa["answers"] if ref_norm(a["text"])] or [""]
        pred = preds[qa["id"]]
        em[qa["id"]] = max(int(ref_norm(g) == ref_norm(pred)) for g in golds)
        f1[qa["id"]] = max(ref_f1_v2(g, pred) for g in golds)
    probs = na_probs if na_probs is not None else {q: 0.0 for q in preds}

    def thresholded(raw):
        return {q: (float(not has_ans[q]) if probs[q] > thresh else s) for q, s in raw.items()}

    em_t, f1_t = thresholded(em), thresholded(f1)
    out = {"exact": 100.0 * sum(em_t.values()) / len(em_t), "f1": 100.0 * sum(f1_t.values()) / len(f1_t),
           "total": len(em_t)}
    for prefix, want in (("HasAns", True), ("NoAns", False)):
        ids = [q for q, v in has_ans.items() if v == want]
        if ids:
            out[prefix + "_exact"] = 100.0 * sum(em_t[q] for q in ids) / len(ids)
            out[prefix + "_f1"] = 100.0 * sum(f1_t[q] for q in ids) / len(ids)
            out[prefix + "_total"] = len(ids)
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = ref_best(preds, em, na_probs, has_ans, len(em))
        out["best_f1"], out["best_f1_thresh"] = ref_best(preds, f1, na_probs, has_ans, len(f1))
        if images:
            out["pr_exact_ap"] = ref_ap(em, na_probs, has_ans)
            out["pr_f1_ap"] = ref_ap(f1, na_probs, has_ans)
            out["pr_oracle_ap"] = ref_ap({q: float(v) for q, v in has_ans.items()}, na_probs, has_ans)
    return out


def ref_eval_v1(dataset_json, preds):
    em = f1 = total = 0
    for qa in ref_questions(dataset_json):
        total += 1
        if qa["id"] not in preds:
            continue
        golds = [a["text"] for a in qa["answers"]]
        em += max(ref_norm(preds[qa["id"]]) == ref_norm(g) for g in golds)
        f1 += max(ref_f1_v1(preds[qa["id"]], g) for g in golds)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


# ------------------------------------------------------------------------------------------------
# Synthetic predictions on the real data
# ------------------------------------------------------------------------------------------------


def perturb(text, rng):
    words = text.split()
    choice = rng.randrange(6)
    if choice == 0 and len(words) > 1:
        words.pop(rng.randrange(len(words)))  # partial overlap
    elif choice == 1:
        words.append(rng.choice(["river", "the", "city", "1939"]))
    elif choice == 2:
        return "The " + text.upper() + "!"  # case, article, punctuation: still an exact match
    elif choice == 3:
        return text + " (" + text + ")"
    elif choice == 4:
        return "«" + text + "»"  # non-ASCII punctuation is kept: no exact match
    return " ".join(words)


def prediction_sets(dataset_json, seed=0):
    rng = random.Random(seed)
    qas = ref_questions(dataset_json)
    gold = {qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "") for qa in qas}
    perturbed = {q: (perturb(t, rng) if t else rng.choice(["", "Warsaw", "the"])) for q, t in gold.items()}
    empty = {q: "" for q in gold}
    plausible = {}
    for qa in qas:
        other = qa.get("plausible_answers") or qa["answers"]
        plausible[qa["id"]] = rng.choice([other[-1]["text"] if other else "", "", "a Polish city"])
    return {"gold": gold, "perturbed": perturbed, "empty": empty, "plausible": plausible}


def na_prob_sets(qids, seed=0):
    rng = random.Random(seed)
    return {
        "coarse_ties": {q: rng.choice([0.0, 0.1, 0.5, 0.5, 0.9]) for q in qids},
        "fine": {q: rng.random() for q in qids},
        "logit_like": {q: round(rng.gauss(0.0, 3.0), 1) for q in reversed(qids)},  # another tie order
    }


@pytest.fixture(scope="module")
def dev_v2(squad_dir):
    return squad_dir / "dev-v2.0.json", json.loads((squad_dir / "dev-v2.0.json").read_text())


@pytest.fixture(scope="module")
def dev_v1(squad_dir):
    return squad_dir / "dev-v1.1.json", json.loads((squad_dir / "dev-v1.1.json").read_text())


def run_cli(capsys, *argv):
    rc = sm.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


# ------------------------------------------------------------------------------------------------
# Normalization and per-answer metrics: hand-computed values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "hello world"),                 # lower case, punctuation deleted
    ("U.S.A.", "usa"),                                # punctuation deleted without a space
    ("rock'n'roll", "rocknroll"),
    ("A-team", "ateam"),                              # punctuation goes first, so "a" is no longer a word
    ("The Cat", "cat"),                               # articles
    ("An apple a day", "apple day"),
    ("the the  the", ""),
    ("theory and anthem", "theory and anthem"),       # articles only as whole words
    ("THE END", "end"),
    ("«Paris» — café", "«paris» — café"),           # non-ASCII punctuation is kept
    ("ÉCOLE", "école"),                                # non-ASCII lower-casing
    ("àn a", "àn"),                                  # non-ASCII letters are word characters
    ("  multiple\t\nspaces \u00a0 here ", "multiple spaces here"),  # all whitespace collapsed
    ("", ""),
    ("...", ""),
])
def test_normalize_answer(raw, expected):
    assert sm.normalize_answer(raw) == expected


def test_get_tokens():
    assert sm.get_tokens("") == []
    assert sm.get_tokens("The  quick, brown fox.") == ["quick", "brown", "fox"]
    assert sm.get_tokens("the") == []


@pytest.mark.parametrize("gold, pred, em, f1", [
    ("the cat sat", "Cat sat on mat", 0, 2 * 0.5 * 1.0 / 1.5),   # P 2/4, R 2/2
    ("Vistula River", "the vistula river.", 1, 1.0),
    ("x y y", "y y y", 0, 2 * (2 / 3) * (2 / 3) / (4 / 3)),       # repeated tokens count with multiplicity
    ("alpha", "beta", 0, 0),
    ("", "", 1, 1),                                              # both empty
    ("", "Warsaw", 0, 0),                                        # empty gold
    ("Warsaw", "", 0, 0),                                        # empty prediction
    ("the", "", 1, 1),                                           # normalizes to empty on both sides
    ("«Paris»", "Paris", 0, 0),                                  # « » are tokens' characters
])
def test_exact_and_f1_hand_values(gold, pred, em, f1):
    assert sm.compute_exact(gold, pred) == em
    assert sm.compute_f1(gold, pred) == f1


def test_f1_literal_values():
    assert sm.compute_f1("the cat sat", "Cat sat on mat") == 0.6666666666666666
    assert sm.compute_f1("p q r s", "p") == 0.4
    assert type(sm.compute_f1("", "")) is int and type(sm.compute_f1("a b", "b c")) is float


def test_v2_multiple_golds_and_empty_golds():
    gold = {"multi": ["Vistula", "Vistula River"], "dropped": ["the", "Paris"], "only_empty": ["The"],
            "noans": []}
    preds = {"multi": "the Vistula river", "dropped": "", "only_empty": "", "noans": ""}
    out = sm.squad_evaluate(gold, preds)
    # multi: EM 1 via the 2nd gold; dropped: "the" is dropped so "" matches nothing; only_empty: gold [""]
    assert out["exact"] == 100.0 * 3 / 4 and out["f1"] == 100.0 * 3 / 4
    assert out["HasAns_total"] == 3 and out["NoAns_total"] == 1   # "The" still counts as answerable
    assert out["HasAns_exact"] == 100.0 * 2 / 3 and out["NoAns_exact"] == 100.0
    preds["noans"] = "Warsaw"    # unanswerable: only an empty prediction scores
    assert sm.squad_evaluate(gold, preds)["NoAns_f1"] == 0.0


def test_v2_partial_f1_max_over_golds():
    gold = {"q": ["Warsaw Uprising", "the Warsaw Uprising of 1944"]}
    out = sm.squad_evaluate(gold, {"q": "Uprising of 1944"})
    # vs gold 1: P 1/3 R 1/2 -> 0.4; vs gold 2: P 3/3 R 3/4 -> 6/7
    assert out["f1"] == 100.0 * (2 * 1.0 * 0.75 / 1.75) and out["exact"] == 0.0
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]


def test_v1_rules_differ_for_empty_answers():
    gold = {"a": ["the"], "b": ["Warsaw", "Warsaw city"]}
    out = sm.squad_evaluate(gold, {"a": "", "b": "Warsaw city centre"}, version_2=False)
    # v1.1: "the" vs "" are equal after normalization (EM 1) but share no token (F1 0); b: P 2/3 R 1
    assert list(out) == ["exact_match", "f1"]
    assert out["exact_match"] == 50.0
    assert out["f1"] == 100.0 * (2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)) / 2


def test_v1_and_v2_f1_differ_only_in_the_empty_answer_rule(monkeypatch):
    # v1.1 has no empty-answer rule (an empty side shares no token: 0); v2.0 gives 1 when both sides
    # are empty and 0 when only one is. Values and int/float types as the official scripts return them.
    for gold, pred, v1, v2 in [("", "", 0, 1), ("the", "a", 0, 1), ("", "x", 0, 0), ("x", "", 0, 0),
                               ("x y", "y z", 0.5, 0.5)]:
        got_v1, got_v2 = sm._f1_v1(pred, gold), sm.compute_f1(gold, pred)
        assert (got_v1, type(got_v1)) == (v1, type(v1)) and (got_v2, type(got_v2)) == (v2, type(v2))
    # Beyond that rule both go through one implementation of the overlap arithmetic.
    calls, real = [], sm._overlap_f1
    monkeypatch.setattr(sm, "_overlap_f1", lambda g, p: calls.append((g, p)) or real(g, p))
    sm._f1_v1("x y", "y z")
    sm.compute_f1("y z", "x y")
    assert calls == [(["y", "z"], ["x", "y"])] * 2


# ------------------------------------------------------------------------------------------------
# Threshold sweep on constructed cases
# ------------------------------------------------------------------------------------------------


def sweep_case():
    # Sorted by no-answer value. EM walk from 2 (all no-answer): A +1 -> 3 (best at 0.1), B -1, C 0, D 0.
    # F1 walk: A +1 -> 3, B -1 -> 2, C +0.5 -> 2.5, D +0.8 -> 3.3 (new best at 0.7), E 0 ("" on no-answer).
    gold = {"A": ["Warsaw"], "B": [], "C": ["p q r"], "D": ["s t u v w"], "E": []}
    preds = {"A": "Warsaw", "B": "x", "C": "p", "D": "s t u v", "E": ""}
    na = {"A": 0.1, "B": 0.3, "C": 0.5, "D": 0.7, "E": 0.9}
    return gold, preds, na


def test_threshold_sweep_known_best():
    gold, preds, na = sweep_case()
    fc, fd = sm.compute_f1("p q r", "p"), sm.compute_f1("s t u v w", "s t u v")
    assert (fc, fd) == (0.5, 2 * 1.0 * 0.8 / 1.8)
    out = sm.squad_evaluate(gold, preds, na_probs=na)
    assert out["best_exact"] == 60.0 and out["best_exact_thresh"] == 0.1
    assert out["best_f1"] == 100.0 * (2 + 1.0 - 1 + fc + fd) / 5 and out["best_f1_thresh"] == 0.7
    assert list(out)[-4:] == ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
    # Applying the found threshold reaches the best score (same value, summed in another order).
    applied = sm.squad_evaluate(gold, preds, na_probs=na, na_prob_thresh=0.7)
    assert applied["f1"] == pytest.approx(out["best_f1"], abs=1e-12)
    assert sm.squad_evaluate(gold, preds, na_probs=na, na_prob_thresh=0.1)["exact"] == 60.0


def test_threshold_sweep_nothing_improves():
    gold = {"a": [], "b": ["x"]}
    out = sm.squad_evaluate(gold, {"a": "wrong", "b": "wrong"}, na_probs={"a": 0.2, "b": 0.4})
    assert out["best_exact"] == 50.0 and out["best_exact_thresh"] == 0.0


def test_threshold_sweep_ties_follow_na_prob_order():
    # The official stable sort: equal values keep the file's order, and the walk may stop inside a tie.
    gold, preds = {"h": ["x"], "n": []}, {"h": "x", "n": "y"}
    first = sm.squad_evaluate(gold, preds, na_probs={"h": 0.5, "n": 0.5})
    second = sm.squad_evaluate(gold, preds, na_probs={"n": 0.5, "h": 0.5})
    assert (first["best_exact"], first["best_exact_thresh"]) == (100.0, 0.5)
    assert (second["best_exact"], second["best_exact_thresh"]) == (50.0, 0.0)


def test_apply_threshold_scores_as_empty():
    gold = {"h": ["x"], "n": []}
    preds = {"h": "x", "n": "y"}
    # Above the threshold both count as "no answer": h scores 0, n scores 1.
    out = sm.squad_evaluate(gold, preds, na_probs={"h": 0.9, "n": 0.9}, na_prob_thresh=0.5)
    assert (out["HasAns_exact"], out["NoAns_exact"]) == (0.0, 100.0)
    out = sm.squad_evaluate(gold, preds, na_probs={"h": 0.9, "n": 0.9}, na_prob_thresh=0.95)
    assert (out["HasAns_exact"], out["NoAns_exact"]) == (100.0, 0.0)


# ------------------------------------------------------------------------------------------------
# Missing and unknown predictions
# ------------------------------------------------------------------------------------------------


def test_missing_predictions_score_zero_and_count(caplog):
    gold = {"a": ["x"], "b": [], "c": ["y"]}
    with caplog.at_level("WARNING", logger="squad_metrics"):
        out = sm.squad_evaluate(gold, {"a": "x", "zzz": "q"}, na_probs={"a": 0.3})
    assert out["total"] == 3 and out["exact"] == 100.0 / 3
    assert out["NoAns_exact"] == 0.0   # a missing prediction is not an empty one
    assert out["best_exact"] == 100.0 / 3
    text = caplog.text
    assert "2 of 3 questions have no prediction" in text and "1 prediction ids are not questions" in text
    v1 = sm.squad_evaluate({"a": ["x"], "c": ["y"]}, {"a": "x"}, version_2=False)
    assert v1["exact_match"] == 50.0


def test_missing_na_prob_value_is_an_error():
    # One check and one message for the library and the CLI (which names its file instead).
    with pytest.raises(sm.ScoringInputError) as err:
        sm.squad_evaluate({"a": ["x"], "b": []}, {"a": "x", "b": ""}, na_probs={"a": 0.1})
    assert str(err.value) == "na_probs: question 'b': no no-answer value (1 predicted question(s) lack one)"


def test_gold_answers_from_examples():
    examples = [
        SimpleNamespace(qas_id="a", answers=[{"text": "Warsaw", "answer_start": 3}, {"text": "the city"}]),
        SimpleNamespace(qas_id="b", answers=[], is_impossible=True),
        SimpleNamespace(qas_id="c", answers=[{"text": "x"}], is_impossible=True),   # plausible answer only
        SimpleNamespace(qas_id="d", answers=[{"text": "y"}], is_impossible=False),
    ]
    gold = sm.gold_answers_from_examples(examples)
    assert list(gold.items()) == [("a", ["Warsaw", "the city"]), ("b", []), ("c", []), ("d", ["y"])]
    out = sm.squad_evaluate(gold, {"a": "The City", "b": "", "c": "x", "d": "y"})
    assert (out["exact"], out["HasAns_total"], out["NoAns_total"]) == (75.0, 2, 2)


# ------------------------------------------------------------------------------------------------
# Real data: CLI output equals the independent reference exactly
# ------------------------------------------------------------------------------------------------


def test_cli_v2_equals_reference_on_real_data(dev_v2, tmp_path, capsys):
    data_path, data = dev_v2
    qids = [qa["id"] for qa in ref_questions(data)]
    na_sets = na_prob_sets(qids)
    checked = 0
    for name, preds in prediction_sets(data).items():
        pred_file = write(tmp_path / f"pred_{name}.json", preds)
        rc, out, err = run_cli(capsys, data_path, pred_file)
        assert rc == 0 and err == ""
        assert out == json.dumps(ref_eval_v2(data, preds), indent=2) + "\n", name
        for na_name, na in na_sets.items():
            na_file = write(tmp_path / f"na_{na_name}.json", na)
            for thresh in (1.0, 0.5, 0.0):
                rc, out, _ = run_cli(capsys, data_path, pred_file, "--na-prob-file", na_file,
                                     "--na-prob-thresh", thresh)
                expected = ref_eval_v2(data, preds, na, thresh)
                assert rc == 0 and out == json.dumps(expected, indent=2) + "\n", (name, na_name, thresh)
                checked += 1
    assert checked == 4 * 3 * 3


def test_cli_v2_images_and_average_precision(dev_v2, tmp_path, capsys):
    data_path, data = dev_v2
    preds = prediction_sets(data)["perturbed"]
    na = na_prob_sets([qa["id"] for qa in ref_questions(data)])["coarse_ties"]
    images = tmp_path / "img"
    rc, out, _ = run_cli(capsys, data_path, write(tmp_path / "p.json", preds), "-n",
                         write(tmp_path / "na.json", na), "-p", images)
    assert rc == 0
    assert out == json.dumps(ref_eval_v2(data, preds, na, images=True), indent=2) + "\n"
    names = sorted(p.name for p in images.iterdir())
    assert names == ["na_prob_hist_hasAns.png", "na_prob_hist_noAns.png", "pr_exact.png", "pr_f1.png",
                     "pr_oracle.png"]
    assert all((images / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_cli_out_file_matches_official_layout(dev_v2, tmp_path, capsys):
    data_path, data = dev_v2
    preds = prediction_sets(data)["gold"]
    out_file = tmp_path / "eval.json"
    rc, out, _ = run_cli(capsys, data_path, write(tmp_path / "p.json", preds), "--out-file", out_file)
    assert rc == 0 and out == ""
    assert out_file.read_text() == json.dumps(ref_eval_v2(data, preds))   # json.dump, no indent
    assert json.loads(out_file.read_text())["exact"] == 100.0


def test_cli_v1_equals_reference_on_real_data(dev_v1, tmp_path, capsys):
    data_path, data = dev_v1
    for name, preds in prediction_sets(data, seed=1).items():
        rc, out, err = run_cli(capsys, data_path, write(tmp_path / f"{name}.json", preds))
        assert rc == 0 and err == ""
        assert out == json.dumps(ref_eval_v1(data, preds)) + "\n", name


def test_cli_v1_missing_predictions(dev_v1, tmp_path, capsys):
    data_path, data = dev_v1
    preds = prediction_sets(data)["perturbed"]
    dropped = list(preds)[::3]
    for qid in dropped:
        del preds[qid]
    rc, out, err = run_cli(capsys, data_path, write(tmp_path / "p.json", preds))
    assert rc == 0 and out == json.dumps(ref_eval_v1(data, preds)) + "\n"
    assert f"{len(dropped)} of {len(ref_questions(data))} questions have no prediction" in err


def with_repeated_ids(data, every=7):
    """A copy of the data where every 7th question also takes the id of the question before it, and
    the last question the id of the first (another article): entries that share an id but not
    answers (nor, in v2.0, answerability)."""
    doc = copy.deepcopy(data)
    qas = ref_questions(doc)
    for i in range(1, len(qas), every):
        qas[i]["id"] = qas[i - 1]["id"]
    qas[-1]["id"] = qas[0]["id"]
    return doc


def tiny_doc(*qas, version="1.1"):
    return {"version": version, "data": [{"title": "t", "paragraphs": [{"context": "x y z", "qas": [
        {"id": qid, "answers": [{"text": t, "answer_start": 0} for t in texts]} for qid, texts in qas]}]}]}


def test_v1_repeated_id_scored_per_entry(tmp_path, capsys):
    # evaluate-v1.1.py loops over the qa entries: each counts in the total and is scored against its
    # own answers, the prediction looked up by id. a: "x" matches the 1st entry only; b matches.
    doc = tiny_doc(("a", ["x"]), ("a", ["y"]), ("b", ["z"]))
    preds = {"a": "x", "b": "z"}
    rc, out, _ = run_cli(capsys, write(tmp_path / "d.json", doc), write(tmp_path / "p.json", preds))
    expected = {"exact_match": 100.0 * 2 / 3, "f1": 100.0 * 2 / 3}
    assert rc == 0 and json.loads(out) == expected == ref_eval_v1(doc, preds)
    entries, version_2 = sm.parse_squad_questions(doc)
    assert entries == [("a", ["x"]), ("a", ["y"]), ("b", ["z"])] and not version_2
    assert dict(sm.squad_evaluate(entries, preds, version_2=False)) == expected


def test_v2_repeated_id_keyed_by_id(tmp_path, capsys):
    # evaluate-v2.0.py keys its scores by id: "a" counts once, in its first place, with the answers
    # of its last entry (unanswerable), so the prediction "x" scores 0.
    doc = tiny_doc(("a", ["x"]), ("b", ["z"]), ("a", []), version="v2.0")
    preds = {"a": "x", "b": "z"}
    rc, out, _ = run_cli(capsys, write(tmp_path / "d.json", doc), write(tmp_path / "p.json", preds))
    result = json.loads(out)
    assert rc == 0 and result == ref_eval_v2(doc, preds)
    assert (result["exact"], result["total"], result["HasAns_total"], result["NoAns_exact"]) == (50.0, 2, 1, 0.0)


def test_cli_v1_repeated_ids_equal_reference_on_real_data(dev_v1, tmp_path, capsys):
    data_path, data = dev_v1
    doc = with_repeated_ids(data)
    data_file = write(tmp_path / "dup.json", doc)
    per_id = sm.parse_squad_dataset(doc)[0]
    differs = 0
    for name, preds in prediction_sets(doc, seed=2).items():
        rc, out, err = run_cli(capsys, data_file, write(tmp_path / f"{name}.json", preds))
        assert rc == 0 and err == ""
        assert out == json.dumps(ref_eval_v1(doc, preds)) + "\n", name
        # Counting each id once (the former behaviour) gives other numbers on this file.
        differs += json.loads(out) != dict(sm.squad_evaluate(per_id, preds, version_2=False))
    assert differs == 4


def test_cli_v2_repeated_ids_equal_reference_on_real_data(dev_v2, tmp_path, capsys):
    data_path, data = dev_v2
    doc = with_repeated_ids(data)
    data_file = write(tmp_path / "dup.json", doc)
    qids = [qa["id"] for qa in ref_questions(doc)]
    assert len(set(qids)) < len(qids)
    for name, preds in prediction_sets(doc, seed=2).items():
        pred_file = write(tmp_path / f"pred_{name}.json", preds)
        rc, out, err = run_cli(capsys, data_file, pred_file)
        assert rc == 0 and err == "" and out == json.dumps(ref_eval_v2(doc, preds), indent=2) + "\n", name
        for na_name, na in na_prob_sets(qids, seed=2).items():
            na_file = write(tmp_path / f"na_{na_name}.json", na)
            rc, out, _ = run_cli(capsys, data_file, pred_file, "-n", na_file, "-t", 0.5)
            assert rc == 0 and out == json.dumps(ref_eval_v2(doc, preds, na, 0.5), indent=2) + "\n", (name, na_name)


def test_cli_v2_missing_predictions_counted(dev_v2, tmp_path, capsys):
    data_path, data = dev_v2
    preds = prediction_sets(data)["gold"]
    for qid in list(preds)[:10]:
        del preds[qid]
    preds["not-a-question"] = "x"
    rc, out, err = run_cli(capsys, data_path, write(tmp_path / "p.json", preds))
    result = json.loads(out)
    assert rc == 0 and result["total"] == len(ref_questions(data))
    assert result["exact"] == 100.0 * (result["total"] - 10) / result["total"]
    assert "10 of 888 questions have no prediction" in err
    assert "1 prediction ids are not questions of the data" in err


def test_version_detection():
    v2_doc = {"data": [{"paragraphs": [{"qas": [{"id": "a", "answers": [{"text": "x"}], "is_impossible": False}]}]}]}
    v1_doc = {"version": "1.1", "data": [{"paragraphs": [{"qas": [{"id": "a", "answers": [{"text": "x"}]}]}]}]}
    no_ans = {"data": [{"paragraphs": [{"qas": [{"id": "a", "answers": []}]}]}]}
    assert sm.parse_squad_dataset(v2_doc)[1] is True
    assert sm.parse_squad_dataset(v1_doc) == ({"a": ["x"]}, False)
    assert sm.parse_squad_dataset(no_ans)[1] is True
    # A repeated id: one entry each from parse_squad_questions; the v2.0 dict keeps the first place
    # and the last answers.
    repeated = {"data": [{"paragraphs": [{"qas": [{"id": "a", "answers": [{"text": "x"}]},
                                                    {"id": "b", "answers": [{"text": "z"}]},
                                                    {"id": "a", "answers": []}]}]}]}
    assert sm.parse_squad_questions(repeated) == ([("a", ["x"]), ("b", ["z"]), ("a", [])], True)
    assert list(sm.parse_squad_dataset(repeated)[0].items()) == [("a", []), ("b", ["z"])]


# ------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the problem, exit code 2
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_data(tmp_path):
    doc = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": "q1", "answers": [{"text": "c", "answer_start": 0}], "is_impossible": False},
        {"id": "q2", "answers": [], "is_impossible": True}]}]}]}
    return write(tmp_path / "data.json", doc)


@pytest.mark.parametrize("pred_text, problem", [
    ("{not json", "not valid JSON"),
    ('{"q1": "unterminated', "not valid JSON (Unterminated string starting at line 1 column 8)"),
    ("[1, 2]", "expected an object mapping question id to answer text, got list"),
    ('{"q1": 3}', "question 'q1': answer must be a string, got int"),
    ('{"q1": null}', "answer must be a string, got null"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_bad_prediction_file(tiny_data, tmp_path, capsys, pred_text, problem):
    pred = tmp_path / "pred.json"
    pred.write_bytes(pred_text if isinstance(pred_text, bytes) else pred_text.encode())
    rc, out, err = run_cli(capsys, tiny_data, pred)
    assert rc == 2 and out == ""
    assert err.startswith(f"error: {pred}: ") and problem in err and err.count("\n") == 1


@pytest.mark.parametrize("data, problem", [
    ({"q1": "x"}, 'top level: not SQuAD data (expected an object with a "data" list)'),
    ({"data": [{"title": "x"}]}, 'data[0]: expected an object with a "paragraphs" list'),
    ({"data": [{"paragraphs": [{"qas": [{"id": 5}]}]}]}, 'data[0].paragraphs[0].qas[0]: expected an object with a string "id"'),
    ({"data": [{"paragraphs": [{"qas": [{"id": "q", "answers": [{"answer_start": 0}]}]}]}]},
     "question 'q': every answer must be an object with a string \"text\""),
    ({"data": []}, "data: no questions"),
])
def test_bad_data_file(tmp_path, capsys, data, problem):
    data_file = write(tmp_path / "data.json", data)
    rc, _, err = run_cli(capsys, data_file, write(tmp_path / "p.json", {}))
    assert rc == 2 and err == f"error: {data_file}: {problem}\n"


@pytest.mark.parametrize("na, problem", [
    ([0.1], "top level: expected an object mapping question id to a number, got list"),
    ({"q1": "high", "q2": 0.1}, "question 'q1': no-answer value must be a number, got 'high'"),
    ({"q1": True, "q2": 0.1}, "question 'q1': no-answer value must be a number, got True"),
    ({"q1": 0.1}, "question 'q2': no no-answer value (1 predicted question(s) lack one)"),
])
def test_bad_na_prob_file(tiny_data, tmp_path, capsys, na, problem):
    na_file = write(tmp_path / "na.json", na)
    rc, _, err = run_cli(capsys, tiny_data, write(tmp_path / "p.json", {"q1": "c", "q2": ""}), "-n", na_file)
    assert rc == 2 and err == f"error: {na_file}: {problem}\n"


def test_missing_file(tiny_data, tmp_path, capsys):
    rc, _, err = run_cli(capsys, tiny_data, tmp_path / "nope.json")
    assert rc == 2 and err == f"error: {tmp_path / 'nope.json'}: no such file\n"


def test_out_image_dir_without_matplotlib(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)   # import now fails
    rc, out, err = run_cli(capsys, tiny_data, write(tmp_path / "p.json", {"q1": "c", "q2": ""}),
                           "-n", write(tmp_path / "na.json", {"q1": 0.1, "q2": 0.9}), "-p", tmp_path / "img")
    assert rc == 2 and out == ""
    assert err == "error: --out-image-dir: matplotlib is not installed (pip install matplotlib)\n"


def test_cli_out_file_names_the_path_given(tiny_data, tmp_path, capsys):
    pred = write(tmp_path / "p.json", {"q1": "c", "q2": ""})
    folder = tmp_path / "adir"
    folder.mkdir()
    rc, out, err = run_cli(capsys, tiny_data, pred, "-o", folder)
    assert rc == 2 and out == "" and err == f"error: {folder}: is a folder, not a file (--out-file)\n"
    # Any other failure to write names the user's path too, never the temporary file.
    missing = tmp_path / "no-such-folder" / "eval.json"
    rc, out, err = run_cli(capsys, tiny_data, pred, "--out-file", missing)
    assert rc == 2 and out == "" and err == f"error: {missing}: No such file or directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "data.json", "p.json"]


def test_matplotlib_is_imported_once_per_call(tiny_data, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    calls, real = [], sm._import_matplotlib
    monkeypatch.setattr(sm, "_import_matplotlib", lambda: calls.append(1) or real())
    rc, _, _ = run_cli(capsys, tiny_data, write(tmp_path / "p.json", {"q1": "c", "q2": ""}),
                       "-n", write(tmp_path / "na.json", {"q1": 0.1, "q2": 0.9}), "-p", tmp_path / "img")
    assert rc == 0 and len(list((tmp_path / "img").iterdir())) == 5 and calls == [1]


def test_png_write_failure_names_the_png(tiny_data, tmp_path, capsys):
    # Plots go through the same atomic write as the JSON files: the error names the PNG, and no
    # temporary file is left behind.
    pytest.importorskip("matplotlib")
    images = tmp_path / "img"
    (images / "pr_f1.png").mkdir(parents=True)
    rc, out, err = run_cli(capsys, tiny_data, write(tmp_path / "p.json", {"q1": "c", "q2": ""}),
                           "-n", write(tmp_path / "na.json", {"q1": 0.1, "q2": 0.9}), "-p", images)
    assert rc == 2 and out == "" and err == f"error: {images / 'pr_f1.png'}: Is a directory\n"
    assert sorted(p.name for p in images.iterdir()) == ["pr_exact.png", "pr_f1.png"]


@pytest.mark.parametrize("values, expected", [
    ([0.0, 0.25, 1.0], (0.0, 1.0)),                         # probabilities: the official fixed range
    ([0.5], (0.0, 1.0)),
    ([-3.5, 0.2, 4.0], (-3.5, 4.0)),                        # null odds (logit differences): data range
    ([1.5, 2.0], (1.5, 2.0)),
    ([-2.0, 3.0, sm.NO_SPAN_NULL_ODDS], (-2.0, 3.0)),       # the no-span sentinel does not stretch it
    ([-2.0, float("inf")], (-2.0, -2.0)),
    ([sm.NO_SPAN_NULL_ODDS], (sm.NO_SPAN_NULL_ODDS, sm.NO_SPAN_NULL_ODDS)),
])
def test_histogram_range(values, expected):
    assert sm._histogram_range(values) == expected


def test_histogram_of_null_odds_shows_every_value(tmp_path):
    figure_mod = pytest.importorskip("matplotlib.figure")
    made = []

    class RecordingFigure(figure_mod.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    def drawn(na_probs):
        made.clear()
        sm.histogram_na_prob(na_probs, list(na_probs), str(tmp_path), "x", figure_cls=RecordingFigure)
        ax = made[0].axes[0]
        return sum(patch.get_height() for patch in ax.patches), ax.get_xlabel()

    odds = {"a": -4.2, "b": -1.0, "c": 0.5, "d": 2.5, "e": 7.0}   # 4 of 5 outside [0, 1]
    total, label = drawn(odds)
    assert total == pytest.approx(1.0) and label == "No-answer value (data range)"
    total, label = drawn({"a": 0.0, "b": 0.3, "c": 1.0})
    assert total == pytest.approx(1.0) and label == "Model probability of no-answer"
    assert (tmp_path / "na_prob_hist_x.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_subprocess_exit_code_and_no_traceback(tiny_data, tmp_path):
    pred = tmp_path / "pred.json"
    pred.write_text("[]")
    bad = subprocess.run([sys.executable, str(REPO / "squad_metrics.py"), str(tiny_data), str(pred)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    pred.write_text(json.dumps({"q1": "c", "q2": ""}))
    good = subprocess.run([sys.executable, str(REPO / "squad_metrics.py"), str(tiny_data), str(pred)],
                          capture_output=True, text=True)
    assert good.returncode == 0 and json.loads(good.stdout)["exact"] == 100.0


def test_scorer_imports_neither_torch_nor_transformers():
    code = "import sys, squad_metrics; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.stdout.strip() == "False"


def test_blanked_answers_with_null_odds_get_one_line_saying_which_optimum_this_is(tiny_data, tmp_path, capsys):
    """run_squad writes "" where the null odds exceed its threshold, and sweeps every span itself: the scorer's
    best_* on that file (official, unchanged on stdout) differ from the run's, and stderr says why, once."""
    doc = json.loads(tiny_data.read_text())
    preds, na = {"q1": "c", "q2": ""}, {"q1": -1.76, "q2": 0.4}
    pred_file, na_file = write(tmp_path / "predictions_30.json", preds), write(tmp_path / "null_odds_30.json", na)
    rc, out, err = run_cli(capsys, tiny_data, pred_file, "--na-prob-file", na_file)
    assert rc == 0 and out == json.dumps(ref_eval_v2(doc, preds, na), indent=2) + "\n"
    assert err == (f'note: best_exact, best_f1 and their thresholds are swept over {pred_file} as written, where 1 '
                   'answers are "" (no answer at every threshold); run_squad.py swept every span of the same run: '
                   "its optimum is in that run's eval_results.json and null_score_diff_threshold.json\n")
    # No note without null odds (no sweep), nor when no answer is blanked.
    assert run_cli(capsys, tiny_data, pred_file)[2] == ""
    assert run_cli(capsys, tiny_data, write(tmp_path / "all.json", {"q1": "c", "q2": "c"}), "-n", na_file)[2] == ""


# ------------------------------------------------------------------------------------------------
# One file: the scorer runs copied alone into an empty folder, as the official script does
# ------------------------------------------------------------------------------------------------


def run_alone(folder, *argv):
    """squad_metrics.py copied alone into ``folder`` and run there in isolated mode (-I: no PYTHONPATH, no
    script folder or current folder on sys.path), so that no other module of the project can be imported."""
    (folder / "squad_metrics.py").write_bytes((REPO / "squad_metrics.py").read_bytes())
    return subprocess.run([sys.executable, "-I", "squad_metrics.py", *map(str, argv)], cwd=folder,
                          capture_output=True, text=True)


def test_copied_alone_scores_as_in_the_project(dev_v2, tmp_path, capsys):
    data_path, data = dev_v2
    alone = tmp_path / "alone"
    alone.mkdir()
    preds = write(tmp_path / "p.json", prediction_sets(data)["perturbed"])
    na = write(tmp_path / "na.json", na_prob_sets([qa["id"] for qa in ref_questions(data)])["logit_like"])
    res = run_alone(alone, data_path, preds, "-n", na, "-t", "0.5")
    rc, out, err = run_cli(capsys, data_path, preds, "-n", na, "-t", "0.5")
    assert rc == 0 and (res.returncode, res.stdout, res.stderr) == (rc, out, err)
    assert json.loads(out)["best_f1_thresh"] != 0.0   # a real sweep, not the trivial answer
    # --out-file: the same bytes as the project's, written atomically (no temporary left).
    res = run_alone(alone, data_path, preds, "-n", na, "-o", alone / "eval.json")
    run_cli(capsys, data_path, preds, "-n", na, "-o", tmp_path / "eval.json")
    assert res.returncode == 0 and (alone / "eval.json").read_bytes() == (tmp_path / "eval.json").read_bytes()
    assert sorted(p.name for p in alone.iterdir()) == ["eval.json", "squad_metrics.py"]


def test_copied_alone_plots_and_reports_bad_input_in_one_line(tiny_data, tmp_path):
    pytest.importorskip("matplotlib")
    alone = tmp_path / "alone"
    alone.mkdir()
    pred = write(tmp_path / "p.json", {"q1": "c", "q2": ""})
    res = run_alone(alone, tiny_data, pred, "-n", write(tmp_path / "na.json", {"q1": 0.1, "q2": 0.9}),
                    "-p", alone / "img")
    assert res.returncode == 0 and json.loads(res.stdout)["pr_oracle_ap"] == 100.0
    assert len(list((alone / "img").glob("*.png"))) == 5
    bad = run_alone(alone, tiny_data, write(tmp_path / "bad.json", [1]))
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == f"error: {tmp_path / 'bad.json'}: top level: expected an object mapping question id " \
                         "to answer text, got list\n"


def test_local_copies_agree_with_the_project():
    """What the scorer keeps of its own so as to run alone equals the project's one home of each rule."""
    from squad_internals import atomic_io, cli, decoding
    assert (sm.EXIT_OK, sm.EXIT_FAILURE, sm.EXIT_USAGE) == (cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_USAGE)
    assert decoding.NO_SPAN_NULL_ODDS is sm.NO_SPAN_NULL_ODDS
    # Its temporaries carry atomic_io's name, so that the cleaner of a killed run's temporaries finds them.
    tmp = Path(sm._temporary_path("/x/eval.json"))
    assert tmp.parent == Path("/x") and tmp.name.startswith("eval.json.")
    assert atomic_io.writer_of(tmp) == (atomic_io.host(), os.getpid())
