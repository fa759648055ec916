"""The tuned no-answer threshold: swept over every question's best span, reproducible when passed back,
written into the evaluated model folder; the predictions file's own scores stay the official ones."""

import json
import random
import shutil
from collections import OrderedDict

import pytest

import run_squad
import squad_metrics as sm
from cli_helpers import common_flags, small_v2_file
from squad_internals import atomic_io, checkpoints, cli, decoding, output_folder


def random_case(seed: int, n: int = 300, ties: bool = False):
    rng = random.Random(seed)
    gold = OrderedDict((f"q{i}", ["the red fox", "red fox"] if rng.random() < 0.5 else []) for i in range(n))
    spans = OrderedDict((q, rng.choice(["the red fox", "red", "a fox", "blue hat"])) for q in gold)
    odds = {q: (round(rng.uniform(-3, 3), 1) if ties else rng.uniform(-3, 3)) for q in gold}
    return gold, spans, odds


def official_best(gold, preds, odds):
    """The official script's best_f1 / best_f1_thresh on a predictions file and its no-answer values."""
    out = sm.squad_evaluate(gold, preds, na_probs=odds)
    return out["best_f1"], out["best_f1_thresh"], out["best_exact"], out["best_exact_thresh"]


@pytest.mark.parametrize("seed", range(5))
def test_the_sweep_over_spans_equals_the_official_sweep_of_a_file_written_without_threshold(seed):
    gold, spans, odds = random_case(seed)
    ours = sm.squad_evaluate(gold, decoding.apply_null_threshold(spans, odds, 0.0), na_probs=odds, na_prob_thresh=0.0,
                             sweep_preds=spans)
    best_f1, f1_t, best_exact, exact_t = official_best(gold, spans, odds)
    # The same scores; the sums run in data order (as those of exact/f1) rather than in the sweep's order, so
    # they may differ in the last digit: the price of reproducing them exactly when the threshold is used.
    assert ours["best_f1"] == pytest.approx(best_f1, rel=1e-12)
    assert ours["best_exact"] == pytest.approx(best_exact, rel=1e-12)
    # The same thresholds, except where "no answer anywhere" wins: the official script then says 0.0.
    nothing = min(odds.values()) - 1.0
    assert ours["best_f1_thresh"] == (f1_t if f1_t != 0.0 or ours["best_f1_thresh"] != nothing else nothing)
    assert ours["best_exact_thresh"] == (exact_t if exact_t != 0.0 or ours["best_exact_thresh"] != nothing else nothing)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_the_reported_threshold_reproduces_the_best_scores_exactly(seed, ties):
    gold, spans, odds = random_case(seed, ties=ties)
    swept = sm.squad_evaluate(gold, spans, na_probs=odds, na_prob_thresh=0.0, sweep_preds=spans)
    for key in ("f1", "exact"):
        t = swept[f"best_{key}_thresh"]
        again = sm.squad_evaluate(gold, decoding.apply_null_threshold(spans, odds, t), na_probs=odds, na_prob_thresh=t)
        assert again[key] == swept[f"best_{key}"], (key, t)


def test_spans_blanked_by_the_decoding_threshold_are_still_swept():
    """At threshold 0 both questions were predicted "": the old sweep over that file saw no span and
    reported 50 at 0.0; answering "a" (its null odds 1.0) gives 100."""
    gold = OrderedDict([("a", ["x"]), ("b", [])])
    spans = OrderedDict([("a", "x"), ("b", "y")])
    odds = {"a": 1.0, "b": 2.0}
    written = decoding.apply_null_threshold(spans, odds, 0.0)
    assert written == OrderedDict([("a", ""), ("b", "")])
    old = sm.squad_evaluate(gold, written, na_probs=odds, na_prob_thresh=0.0)
    assert (old["f1"], old["best_f1"], old["best_f1_thresh"]) == (50.0, 50.0, 0.0)
    new = sm.squad_evaluate(gold, written, na_probs=odds, na_prob_thresh=0.0, sweep_preds=spans)
    assert (new["f1"], new["best_f1"], new["best_f1_thresh"]) == (50.0, 100.0, 1.0)


def test_ties_straddling_the_optimum_no_longer_give_an_unreachable_score():
    """Two questions share the value 0.5: answering one without the other is no threshold at all, but the
    official sweep walks between them and reports a score no decoding threshold gives."""
    gold = OrderedDict([("a", ["x"]), ("b", [])])
    spans = OrderedDict([("a", "x"), ("b", "y")])
    odds = {"a": 0.5, "b": 0.5}
    official = sm.squad_evaluate(gold, spans, na_probs=odds)
    assert (official["best_f1"], official["best_f1_thresh"]) == (100.0, 0.5)  # a answered, b not: unreachable
    ours = sm.squad_evaluate(gold, spans, na_probs=odds, sweep_preds=spans)
    assert (ours["best_f1"], ours["best_f1_thresh"]) == (50.0, -0.5)
    at = sm.squad_evaluate(gold, decoding.apply_null_threshold(spans, odds, -0.5), na_probs=odds, na_prob_thresh=-0.5)
    assert at["f1"] == 50.0


def test_when_no_answer_everywhere_wins_the_threshold_lies_below_every_null_odds():
    gold = OrderedDict([("a", []), ("b", []), ("c", ["x"])])
    spans = OrderedDict([("a", "y"), ("b", "y"), ("c", "wrong")])
    odds = {"a": -2.0, "b": 1.0, "c": 3.0}
    official = sm.squad_evaluate(gold, spans, na_probs=odds)
    assert official["best_f1_thresh"] == 0.0  # passed back, 0.0 answers a (wrongly)
    ours = sm.squad_evaluate(gold, spans, na_probs=odds, sweep_preds=spans)
    assert ours["best_f1_thresh"] == -3.0 and ours["best_f1"] == pytest.approx(200 / 3)
    at = sm.squad_evaluate(gold, decoding.apply_null_threshold(spans, odds, -3.0), na_probs=odds, na_prob_thresh=-3.0)
    assert at["f1"] == ours["best_f1"]


def test_apply_null_threshold_is_what_the_decoder_writes():
    spans = OrderedDict([("a", "x"), ("b", "y"), ("c", "")])
    odds = {"a": 0.1, "b": -1.0, "c": decoding.NO_SPAN_NULL_ODDS}
    assert decoding.apply_null_threshold(spans, odds, 0.0) == OrderedDict([("a", ""), ("b", "y"), ("c", "")])
    assert decoding.apply_null_threshold(spans, odds, 0.1) == OrderedDict([("a", "x"), ("b", "y"), ("c", "")])


@pytest.mark.slow
def test_evaluation_sweeps_spans_writes_the_threshold_and_reproduces_it(tiny_bert_dir, squad_dir, tmp_path):
    """Through the command line: the predictions file is scored as written; the sweep over the spans equals
    the official script on a file written with no threshold; passed back, the threshold gives best_f1; the
    threshold lands in the model folder and a plot beside the predictions."""
    train = small_v2_file(squad_dir, tmp_path / "train.json", questions=120)
    dev = small_v2_file(squad_dir, tmp_path / "dev.json", questions=60)
    out = tmp_path / "out"
    command = [*common_flags(tiny_bert_dir, out), "--do_train", "--do_eval", "--train_file", str(train),
               "--predict_file", str(dev), "--max_steps", "8", "--save_steps", "0"]
    assert run_squad.main(command) == 0
    results = json.loads((out / "eval_results.json").read_text())["8"]
    preds = json.loads((out / "predictions_8.json").read_text())
    odds = json.loads((out / "null_odds_8.json").read_text())
    gold, _ = sm.parse_squad_dataset(json.loads(dev.read_text()))
    written = sm.squad_evaluate(gold, preds, na_probs=odds, na_prob_thresh=0.0)
    assert {k: results[k] for k in ("exact", "f1", "HasAns_f1", "NoAns_f1")} == {
        k: written[k] for k in ("exact", "f1", "HasAns_f1", "NoAns_f1")}
    spans_file = tmp_path / "spans"
    assert run_squad.main([*common_flags(out, spans_file), "--do_eval", "--predict_file", str(dev),
                           "--null_score_diff_threshold", "1e9"]) == 0
    spans = json.loads((spans_file / "predictions_8.json").read_text())
    assert all(spans[q] or odds[q] == decoding.NO_SPAN_NULL_ODDS for q in spans)  # every question's best span
    official = sm.squad_evaluate(gold, spans, na_probs=odds)
    assert results["best_f1"] == pytest.approx(official["best_f1"], rel=1e-12)
    assert results["best_exact"] == pytest.approx(official["best_exact"], rel=1e-12)
    saved = json.loads((out / output_folder.THRESHOLD_FILE).read_text())
    assert saved["null_score_diff_threshold"] == results["best_f1_thresh"] and saved["step"] == "8"
    assert (saved["n_best_size"], saved["max_answer_length"]) == (20, 30)  # what the null odds were decoded with
    again = tmp_path / "again"
    assert run_squad.main([*common_flags(out, again), "--do_eval", "--predict_file", str(dev),
                           "--null_score_diff_threshold", repr(results["best_f1_thresh"])]) == 0
    assert json.loads((again / "eval_results.json").read_text())["8"]["f1"] == results["best_f1"]
    assert (out / "no_answer_8.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_threshold_tuned_for_a_replaced_model_is_removed_with_it(tiny_bert_dir, squad_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / output_folder.THRESHOLD_FILE).write_text(json.dumps({"null_score_diff_threshold": 9.0}))
    train = small_v2_file(squad_dir, tmp_path / "train.json", questions=40)
    assert run_squad.main([*common_flags(tiny_bert_dir, out), "--do_train", "--train_file", str(train),
                           "--max_steps", "2", "--save_steps", "0", "--overwrite_output_dir"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / output_folder.THRESHOLD_FILE).exists()


def test_a_failed_final_save_keeps_the_old_models_threshold(tmp_path, monkeypatch):
    kept = json.dumps({"null_score_diff_threshold": 9.0})
    (tmp_path / output_folder.THRESHOLD_FILE).write_text(kept)

    def full_disk(folder, *args):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "write_model_folder", full_disk)
    with pytest.raises(checkpoints.CheckpointWriteError, match="No space left"):
        checkpoints.save_final_model(tmp_path, None, None, {}, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [output_folder.THRESHOLD_FILE]  # no temporaries left
    assert (tmp_path / output_folder.THRESHOLD_FILE).read_text() == kept


def test_a_pretrained_model_folder_is_input_and_never_gets_a_threshold(tiny_bert_dir, squad_dir, tmp_path):
    pretrained = tmp_path / "pretrained"
    shutil.copytree(tiny_bert_dir, pretrained)
    before = sorted(p.name for p in pretrained.iterdir())
    dev = small_v2_file(squad_dir, tmp_path / "dev.json", questions=30)
    out = tmp_path / "out"
    assert run_squad.main([*common_flags(pretrained, out), "--do_eval", "--predict_file", str(dev)]) == 0
    assert sorted(p.name for p in pretrained.iterdir()) == before
    assert "best_f1_thresh" in next(iter(json.loads((out / "eval_results.json").read_text()).values()))


def test_the_threshold_file_reads_back_what_its_writer_wrote(tmp_path):
    """Writer and reader in one module (output_folder): a round trip, and a folder not trained here gets none."""
    (tmp_path / output_folder.TRAINING_ARGS).write_text(json.dumps({"context_first": True}))
    results = {"best_f1_thresh": -1.25, "best_f1": 71.5, "best_exact": 68.0, "best_exact_thresh": -1.5}
    with atomic_io.file_set() as files:
        output_folder.write_threshold(tmp_path, results, "final", None,
                                      {"n_best_size": 7, "max_answer_length": 11, "max_seq_length": 128}, files)
    assert output_folder.read_threshold(tmp_path / output_folder.THRESHOLD_FILE) == output_folder.NullThreshold(
        -1.25, n_best_size=7, max_answer_length=11)
    assert output_folder.trained_context_first(tmp_path) and not output_folder.trained_context_first(None)
    # A file without the decoder's settings: the classic defaults, which are run_squad.py's flags' defaults.
    (tmp_path / output_folder.THRESHOLD_FILE).write_text(json.dumps({"null_score_diff_threshold": 2}))
    parser = cli.build_parser()
    assert output_folder.read_threshold(tmp_path / output_folder.THRESHOLD_FILE) == output_folder.NullThreshold(
        2.0, parser.get_default("n_best_size"), parser.get_default("max_answer_length"))
    (tmp_path / output_folder.THRESHOLD_FILE).write_text(json.dumps({"null_score_diff_threshold": 1, "n_best_size": 0}))
    with pytest.raises(output_folder.ThresholdFileError, match="'n_best_size' must be a positive integer, got 0$"):
        output_folder.read_threshold(tmp_path / output_folder.THRESHOLD_FILE)
