"""A corpus of malformed inputs, each refused by run_squad.py with its own one-line message and exit 2.

Every case goes through the command line as a user would meet it: before any model is loaded or
feature computed, with no traceback, and without creating --output_dir. The scorer's own corpus of
bad prediction and no-answer files is in test_squad_metrics.py.
"""

import json
from pathlib import Path

import pytest

import run_squad

CONTEXT = "Warsaw is the capital of Poland."
DROP = object()  # marks a key to leave out


def squad(qa=None, paragraph=None, article=None, top=None) -> bytes:
    """A one-question SQuAD v1.1 file with some fields replaced (or dropped with DROP)."""
    question = {"id": "q1", "question": "What is the capital?", "answers": [{"text": "Warsaw", "answer_start": 0}]}
    question = merge(question, qa)
    para = merge({"context": CONTEXT, "qas": [question]}, paragraph)
    doc = {"version": "1.1", "data": [merge({"title": "T", "paragraphs": [para]}, article)]}
    return json.dumps(doc if top is None else top).encode()


def merge(base: dict, changes: dict | None) -> dict:
    merged = {**base, **(changes or {})}
    return {k: v for k, v in merged.items() if v is not DROP}


def duplicate_ids() -> bytes:
    doc = json.loads(squad())
    qas = doc["data"][0]["paragraphs"][0]["qas"]
    qas.append(dict(qas[0]))
    return json.dumps(doc).encode()


ROW = {"id": "q1", "title": "T", "context": CONTEXT, "question": "Capital?",
       "answers": {"text": ["Warsaw"], "answer_start": [0]}}


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


# (name, file content, what the one line says after "error: <file>: ")
CORPUS = [
    ("empty file", b"", "empty file"),
    ("only whitespace", b" \n\n  ", "empty file"),
    ("truncated pretty JSON", json.dumps(json.loads(squad()), indent=2)[:-30].encode(),
     "not valid JSON (truncated?): Expecting ',' delimiter at line 20 column 12"),
    ("truncated one-line JSON", squad()[:-10], "not valid JSON (truncated?): Expecting value at line 1 column 211"),
    ("Latin-1 bytes", squad().decode().replace("Poland", "Pol\u00e9nd").encode("latin-1"),
     "not UTF-8 (invalid byte at offset 99)"),
    ("top level is a list", b"[1, 2]", "top level: expected an object with 'data', got list"),
    ("top level is a string", b'"hello"', "top level: expected an object with 'data', got str"),
    ("no data key", b'{"version": "1.1"}', "top level: missing key 'data'"),
    ("data is an object", b'{"data": {"a": 1}}', "data: expected list, got dict"),
    ("article without paragraphs", squad(article={"paragraphs": DROP}), "data[0]: missing key 'paragraphs'"),
    ("paragraph without context", squad(paragraph={"context": DROP}), "data[0].paragraphs[0]: missing key 'context'"),
    ("context is a number", squad(paragraph={"context": 5}), "data[0].paragraphs[0].context: expected str, got int"),
    ("context is null", squad(paragraph={"context": None}), "data[0].paragraphs[0].context: expected str, got null"),
    ("blank context", squad(paragraph={"context": "   "}), "data[0].paragraphs[0]: empty context"),
    ("qas is a string", squad(paragraph={"qas": "x"}), "data[0].paragraphs[0].qas: expected list, got str"),
    ("question missing", squad(qa={"question": DROP}), "data[0].paragraphs[0].qas[0]: missing key 'question'"),
    ("question is a number", squad(qa={"question": 5}), "data[0].paragraphs[0].qas[0].question: expected str, got int"),
    ("empty question", squad(qa={"question": ""}), "question q1: empty question"),
    ("id missing", squad(qa={"id": DROP}), "data[0].paragraphs[0].qas[0]: missing key 'id'"),
    ("id is a number", squad(qa={"id": 7}), "data[0].paragraphs[0].qas[0].id: expected str, got int"),
    ("duplicate ids", duplicate_ids(),
     "question q1: duplicate id (first at data[0].paragraphs[0].qas[0], again at data[0].paragraphs[0].qas[1])"),
    ("answers is a string", squad(qa={"answers": "Warsaw"}), "data[0].paragraphs[0].qas[0].answers: expected list, got str"),
    ("answer without text", squad(qa={"answers": [{"answer_start": 0}]}), "question q1: answer without 'text'/'answer_start'"),
    ("answer_start is a string", squad(qa={"answers": [{"text": "Warsaw", "answer_start": "0"}]}),
     "question q1: answer_start: expected int, got str"),
    ("answer_start far before the context", squad(qa={"answers": [{"text": "Warsaw", "answer_start": -50}]}),
     "question q1: answer_start -50 outside the context (length 32)"),
    ("answer_start far beyond the context", squad(qa={"answers": [{"text": "Warsaw", "answer_start": 500}]}),
     "question q1: answer_start 500 outside the context (length 32)"),
    ("answer text not in the context", squad(qa={"answers": [{"text": "Krakow", "answer_start": 0}]}),
     "question q1: answer text 'Krakow' not found at answer_start 0 nor within 20 characters "
     "(use --skip_bad_answers to drop such answers)"),
    ("empty answer text", squad(qa={"answers": [{"text": "", "answer_start": 0}]}), "question q1: empty answer text"),
    ("is_impossible is a string", squad(qa={"is_impossible": "no"}), "question q1: is_impossible: expected bool"),
    ("unanswerable without --version_2_with_negative", squad(qa={"answers": [], "is_impossible": True}),
     "question q1: unanswerable question (is_impossible or no answers) in data read without "
     "--version_2_with_negative; pass --version_2_with_negative for SQuAD 2.0 data"),
    ("JSON Lines: a broken line", jsonl(ROW, "{oops"),
     "line 2: not valid JSON: Expecting property name enclosed in double quotes at column 2"),
    ("JSON Lines: no context", jsonl({k: v for k, v in ROW.items() if k != "context"}, {**ROW, "id": "q2"}),
     "line 1: missing key 'context'"),
    ("JSON Lines: answers as a list", jsonl({**ROW, "answers": [{"text": "Warsaw"}]}, {**ROW, "id": "q2"}),
     "question q1.answers: expected dict, got list"),
    ("JSON Lines: answer lists of other lengths",
     jsonl({**ROW, "answers": {"text": ["Warsaw", "x"], "answer_start": [0]}}, {**ROW, "id": "q2"}),
     "question q1: answers.text and answers.answer_start differ in length"),
]


def run(tmp_path: Path, capsys, *flags: str) -> tuple[int, str]:
    out = tmp_path / "out"
    code = run_squad.main(["--model_name_or_path", str(tmp_path / "no-model-needed"), "--output_dir", str(out),
                           "--no_cuda", *flags])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not out.exists(), "nothing is written before the input is known to be good"
    return code, err.strip().splitlines()[-1]


@pytest.mark.parametrize("name,content,message", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_training_file(name, content, message, tmp_path, capsys):
    data = tmp_path / "train.json"
    data.write_bytes(content)
    code, line = run(tmp_path, capsys, "--do_train", "--train_file", str(data))
    assert code == 2
    assert line == f"error: {data}: {message}"


def test_the_corpus_is_large_and_every_message_distinct():
    assert len(CORPUS) >= 30
    assert len({message for _, _, message in CORPUS}) >= len(CORPUS) - 2  # "empty file" twice, on purpose


def test_a_file_too_large_for_memory_is_refused_before_reading(tmp_path, capsys):
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as handle:
        handle.truncate(2**40)  # a sparse terabyte: its size is known without writing it
    code, line = run(tmp_path, capsys, "--do_train", "--train_file", str(huge))
    assert code == 2
    assert line.startswith(f"error: {huge}: file is 1048576 MB; reading it needs about ")
    assert line.endswith("MB is available (split the file)")


def test_a_folder_given_as_the_data_file(tmp_path, capsys):
    code, line = run(tmp_path, capsys, "--do_eval", "--predict_file", str(tmp_path))
    assert (code, line) == (2, f"error: --predict_file {tmp_path}: is a folder, not a data file")


def test_a_missing_data_file(tmp_path, capsys):
    code, line = run(tmp_path, capsys, "--do_train", "--train_file", str(tmp_path / "nope.json"))
    assert (code, line) == (2, f"error: --train_file {tmp_path / 'nope.json'}: no such file")


def test_evaluating_v1_data_without_answers(tmp_path, capsys):
    data = tmp_path / "dev.json"
    data.write_bytes(squad(qa={"answers": []}))
    code, line = run(tmp_path, capsys, "--do_eval", "--predict_file", str(data))
    assert code == 2
    assert line.startswith(f"error: {data}: question q1: ")


def test_v2_data_evaluated_without_the_flag_names_the_question(tmp_path, capsys):
    data = tmp_path / "dev.json"
    data.write_bytes(squad(qa={"answers": [], "is_impossible": True}))
    code, line = run(tmp_path, capsys, "--do_eval", "--predict_file", str(data))
    assert code == 2
    assert "question q1: unanswerable question" in line and "--version_2_with_negative" in line
