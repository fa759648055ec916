"""The demo's embedded SQuAD v2.0 sample (scripts/demo_data/): well-formed, consistent, up to date."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo_data"
FILES = {"train": DEMO / "demo-train-v2.0.json", "dev": DEMO / "demo-dev-v2.0.json"}
MIN_QUESTIONS = {"train": 200, "dev": 50}


def _load(split: str) -> dict:
    return json.loads(FILES[split].read_text(encoding="utf-8"))


def _questions(dataset: dict) -> list[tuple[str, dict]]:
    return [(p["context"], qa) for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]]


@pytest.mark.parametrize("split", ["train", "dev"])
def test_parses_as_squad_v2(split):
    dataset = _load(split)
    assert dataset["version"] == "v2.0"
    assert dataset["data"], "no articles"
    for article in dataset["data"]:
        assert isinstance(article["title"], str) and article["title"]
        assert article["paragraphs"]
        for paragraph in article["paragraphs"]:
            assert isinstance(paragraph["context"], str) and paragraph["context"]
            assert paragraph["qas"]
            for qa in paragraph["qas"]:
                assert {"id", "question", "answers", "is_impossible"} <= qa.keys()
                assert isinstance(qa["is_impossible"], bool)
                assert qa["question"].strip()


@pytest.mark.parametrize("split", ["train", "dev"])
def test_answer_starts_point_at_their_text(split):
    for context, qa in _questions(_load(split)):
        if qa["is_impossible"]:
            assert qa["answers"] == [], qa["id"]
        else:
            assert qa["answers"], qa["id"]
        for answer in qa["answers"] + qa.get("plausible_answers", []):
            start, text = answer["answer_start"], answer["text"]
            assert text and text == text.strip(), qa["id"]
            assert context[start:start + len(text)] == text, (qa["id"], text, start)


def test_gold_answer_counts():
    """One gold answer per training question (as in SQuAD train); dev carries 1-3 alternatives."""
    for split, most in (("train", 1), ("dev", 3)):
        for _, qa in _questions(_load(split)):
            if not qa["is_impossible"]:
                assert 1 <= len(qa["answers"]) <= most, qa["id"]
    assert any(len(qa["answers"]) > 1 for _, qa in _questions(_load("dev")))


def test_ids_unique_across_both_files():
    ids = [qa["id"] for split in FILES for _, qa in _questions(_load(split))]
    assert len(ids) == len(set(ids))
    assert all(i.startswith(("demo-train-", "demo-dev-")) for i in ids)


@pytest.mark.parametrize("split", ["train", "dev"])
def test_counts_and_unanswerable_ratio(split):
    qas = [qa for _, qa in _questions(_load(split))]
    assert len(qas) >= MIN_QUESTIONS[split]
    ratio = sum(qa["is_impossible"] for qa in qas) / len(qas)
    assert 0.10 <= ratio <= 0.35, ratio


def test_train_and_dev_paragraphs_differ():
    train = {c for c, _ in _questions(_load("train"))}
    dev = {c for c, _ in _questions(_load("dev"))}
    assert not train & dev


def test_json_matches_the_builder():
    """The committed JSON is what build_demo_data.py writes (edit the script, then rerun it)."""
    result = subprocess.run([sys.executable, str(DEMO / "build_demo_data.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
