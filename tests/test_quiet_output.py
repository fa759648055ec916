"""What a user reads: one line per model load, no terminal codes or bars in a log file, each evaluation's
metrics once, messages that say what they count, and the test command's skips in one line."""

import json
import logging
import os
import subprocess
import sys

import pytest

import utils_squad
from cli_helpers import DEMO_DEV as DEV
from cli_helpers import DEMO_TRAIN as TRAIN
from cli_helpers import REPO, run_cli
from squad_internals import qa_model


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory, tiny_bert_dir):
    """A pretrained-encoder-like folder: BERT with its pooler and no QA head (as the packaged MiniLM), so that
    loading it for question answering initialises the head and leaves the pooler unused."""
    from transformers import AutoConfig, AutoTokenizer, BertModel

    folder = tmp_path_factory.mktemp("tiny-encoder")
    BertModel(AutoConfig.from_pretrained(tiny_bert_dir)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return folder


def test_a_load_report_is_one_line_per_load(tiny_encoder_dir, tiny_bert_dir, caplog, capfd):
    from transformers import AutoConfig

    source = qa_model.ModelSource(str(tiny_encoder_dir))
    with caplog.at_level(logging.INFO, logger="squad_internals.qa_model"):
        qa_model.load_model(str(tiny_encoder_dir), AutoConfig.from_pretrained(tiny_encoder_dir), source, False)
        qa_model.load_model(str(tiny_bert_dir), AutoConfig.from_pretrained(tiny_bert_dir),
                            qa_model.ModelSource(str(tiny_bert_dir)), False)  # every weight used: nothing to say
    assert [r.getMessage() for r in caplog.records if r.name == "squad_internals.qa_model"] == [
        f"loaded {tiny_encoder_dir}: 2 weights newly initialised (qa_outputs.bias, qa_outputs.weight), "
        "2 unused (pooler.dense.bias, pooler.dense.weight)"]
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "\x1b[" not in err


def test_long_lists_of_weights_are_folded_and_counted():
    class Info:
        missing_keys = {f"encoder.layer.{i}.attention.self.{w}" for i in range(6) for w in ("query.weight", "key.weight")}
        missing_keys |= {"encoder.layer.8.output.dense.bias", "encoder.layer.10.output.dense.bias"}
        mismatched_keys = set()
        unexpected_keys = {f"cls.predictions.{n}" for n in ("bias", "transform.dense.weight", "transform.dense.bias",
                                                            "transform.LayerNorm.weight", "transform.LayerNorm.bias",
                                                            "decoder.weight")}

    assert qa_model.describe_load("m", Info()) == (
        "loaded m: 14 weights newly initialised (encoder.layer.{0-5}.attention.self.key.weight, "
        "encoder.layer.{0-5}.attention.self.query.weight, encoder.layer.{8,10}.output.dense.bias), 6 unused (cls.predictions.bias, "
        "cls.predictions.decoder.weight, cls.predictions.transform.LayerNorm.bias, "
        "cls.predictions.transform.LayerNorm.weight and 2 more)")


@pytest.mark.slow
def test_a_run_logged_to_a_file_is_plain_and_says_each_thing_once(tiny_encoder_dir, tmp_path):
    """stderr is a pipe here, as with `2> log`: no colour codes, no weight-loading or shard-writing bars, one
    line for the load report, the metrics once (the JSON line on stdout; the log's line does not repeat it),
    and the features counted as what they are."""
    out = tmp_path / "out"
    done = run_cli(
        ["--model_name_or_path", str(tiny_encoder_dir), "--output_dir",
         str(out), "--version_2_with_negative", "--do_train", "--do_eval", "--train_file", str(TRAIN),
         "--predict_file", str(DEV), "--no_cuda", "--max_seq_length", "256", "--per_gpu_train_batch_size", "32",
         "--per_gpu_eval_batch_size", "64", "--max_steps", "2", "--save_steps", "0", "--logging_steps", "500",
         "--features_cache_dir", str(tmp_path / "cache")])  # built here, not loaded from another test's cache
    assert done.returncode == 0, done.stderr
    log = done.stderr
    for noise in ("\x1b[", "LOAD REPORT", "Loading weights", "Writing model shards", '"exact"'):
        assert noise not in log, noise
    loads = [line for line in log.splitlines() if "weights newly initialised" in line]
    assert len(loads) == 1 and loads[0].endswith(
        f"loaded {tiny_encoder_dir}: 2 weights newly initialised (qa_outputs.bias, qa_outputs.weight), "
        "2 unused (pooler.dense.bias, pooler.dense.weight)")
    assert "Built 302 training features from 302 questions (239 with the answer span in the window)" in log
    assert "Built 77 evaluation features from 77 questions\n" in log
    assert log.count("run_squad: 1 CPU thread: OMP_NUM_THREADS\n") == 1  # the thread rule, said once
    results = json.loads((out / "eval_results.json").read_text())["2"]
    summary = [line for line in log.splitlines() if "run_squad: evaluation 2: " in line]
    assert len(summary) == 1 and summary[0].endswith(
        f"evaluation 2: EM {results['exact']:.2f}, F1 {results['f1']:.2f} on 77 questions (answerable F1 "
        f"{results['HasAns_f1']:.2f}, unanswerable EM {results['NoAns_exact']:.2f}); best F1 "
        f"{results['best_f1']:.2f} at no-answer threshold {results['best_f1_thresh']:.4g}")
    assert done.stdout.splitlines() == [json.dumps({"step": "2", **results})]  # for scripts: once, on stdout


def test_evaluation_features_are_counted_as_such(tiny_bert_dir, caplog):
    """Evaluation features carry no labels: no "with an answer span" count (it read 0 for 61 answerable)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    for path, training, expected in [
        (DEV, False, "Built 77 evaluation features from 77 questions"),
        (TRAIN, True, "Built 302 training features from 302 questions (239 with the answer span in the window)"),
    ]:
        examples, _ = utils_squad.read_squad_examples(path, version_2_with_negative=True, is_training=training)
        settings = utils_squad.FeatureSettings(max_seq_length=256, doc_stride=128, max_query_length=64,
                                               is_training=training)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="utils_squad"):
            utils_squad.convert_examples_to_features(examples, tokenizer, settings)
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("Built")] == [expected]


def test_the_missing_squad_sample_is_one_line_in_the_test_summary(tmp_path):
    """63 real-data tests skipped one line each buried the summary: now one line with the count."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_squad_metrics.py::test_cli_v2_equals_reference_on_real_data",
         "tests/test_squad_metrics.py::test_cli_v1_equals_reference_on_real_data",
         "tests/test_squad_metrics.py::test_cli_v2_images_and_average_precision"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "SQUAD_DIR": str(tmp_path / "nowhere")},
        timeout=300)
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, done.stdout
    assert skipped[0].startswith("SKIPPED [3] tests/conftest.py:") and skipped[0].endswith(
        f"SQUAD_DIR ({tmp_path / 'nowhere'}) not found: the tests on the real SQuAD sample are skipped (set "
        "SQUAD_DIR to a folder holding dev-v2.0.json)")


def test_other_skip_reasons_keep_their_own_lines(monkeypatch):
    import conftest

    class Report:
        skipped = True

        def __init__(self, reason):
            self.longrepr = ("tests/test_x.py", 12, f"Skipped: {reason}")

    class Outcome:
        def __init__(self, report):
            self.report = report

        def get_result(self):
            return self.report

    def through_hook(reason):
        report, hook = Report(reason), conftest.pytest_runtest_makereport(None, None)
        next(hook)
        with pytest.raises(StopIteration):
            hook.send(Outcome(report))
        return report.longrepr

    monkeypatch.setenv("SQUAD_DIR", "/nowhere")
    assert through_hook("no GPU here") == ("tests/test_x.py", 12, "Skipped: no GPU here")
    folded = through_hook(conftest._squad_dir_missing())
    assert folded[0] == conftest.__file__ and folded[2] == f"Skipped: {conftest._squad_dir_missing()}"


def test_the_evaluation_summary_reads_both_squad_versions():
    from squad_internals import eval_output

    assert eval_output.describe_scores({"exact_match": 81.2, "f1": 88.5}) == "EM 81.20, F1 88.50"  # SQuAD 1.1
    v2 = {"exact": 67.5, "f1": 73.4, "total": 77, "HasAns_f1": 76.2, "NoAns_exact": 62.5, "best_f1": 79.0,
          "best_f1_thresh": 0.930854}
    assert eval_output.describe_scores(v2) == ("EM 67.50, F1 73.40 on 77 questions (answerable F1 76.20, unanswerable "
                                               "EM 62.50); best F1 79.00 at no-answer threshold 0.9309")
