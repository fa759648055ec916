"""Reading SQuAD JSON / JSON Lines: validation messages, offset repair, v2 handling."""

import json

import pytest

import utils_squad as us
from utils_squad import SquadDataError, read_squad_examples

CONTEXT = "The Normans gave their name to Normandy, a region in France."


def squad(qas, context=CONTEXT, version="v2.0"):
    return {"version": version, "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}


def qa(qid, answers, question="Who?", **extra):
    return {"id": qid, "question": question, "answers": answers, **extra}


def write(tmp_path, obj, name="data.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def error(path, v2=True, training=True, **kw):
    with pytest.raises(SquadDataError) as info:
        read_squad_examples(path, version_2_with_negative=v2, is_training=training, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_reads_v1_and_keeps_every_gold_answer(tmp_path):
    answers = [{"text": "Normans", "answer_start": 4}, {"text": "The Normans", "answer_start": 0}]
    path = write(tmp_path, squad([qa("q1", answers)], version="1.1"))
    examples, report = read_squad_examples(path, False, False)
    assert [(e.qas_id, e.is_impossible, e.title) for e in examples] == [("q1", False, "T")]
    assert examples[0].answers == answers
    assert examples[0].answer_char_span == (4, 11)
    assert (report.format, report.questions, report.answerable, report.repaired) == ("squad-json", 1, 1, 0)


def test_v2_impossible_question(tmp_path):
    path = write(tmp_path, squad([qa("q1", [], is_impossible=True, plausible_answers=[])]))
    examples, report = read_squad_examples(path, True, True)
    assert examples[0].is_impossible and examples[0].answer_char_span is None
    assert report.impossible == 1


@pytest.mark.parametrize("qas", [
    [qa("q1", [], is_impossible=True)],
    [qa("q1", [])],  # no answers in training data
])
def test_unanswerable_without_v2_flag_is_an_error(tmp_path, qas):
    path = write(tmp_path, squad(qas))
    message = error(path, v2=False)
    assert message.startswith(f"{path}: question q1: unanswerable question")
    assert "--version_2_with_negative" in message


def test_jsonl_hf_layout(tmp_path):
    rows = [
        {"id": "a", "title": "T", "context": CONTEXT, "question": "Who?",
         "answers": {"text": ["Normans", "Normans"], "answer_start": [4, 4]}},
        {"id": "b", "title": "T", "context": CONTEXT, "question": "Where?", "answers": {"text": [], "answer_start": []}},
    ]
    path = write(tmp_path, "\n".join(json.dumps(r) for r in rows) + "\n", "data.jsonl")
    examples, report = read_squad_examples(path, True, False)
    assert report.format == "jsonl"
    assert [(e.qas_id, e.is_impossible, len(e.answers)) for e in examples] == [("a", False, 2), ("b", True, 0)]


@pytest.mark.parametrize("offset,text", [(3, "Normans"), (6, "Normans"), (24, "Normans"), (1, "\u00a0Normans")])
def test_offsets_near_the_text_are_repaired_and_counted(tmp_path, offset, text):
    path = write(tmp_path, squad([qa("q1", [{"text": text, "answer_start": offset}])]))
    examples, report = read_squad_examples(path, True, True)
    assert examples[0].answers == [{"text": "Normans", "answer_start": 4}]
    assert report.repaired == 1


def test_bom_shifted_offsets_are_repaired(tmp_path):
    context = "\ufeff" + CONTEXT  # offsets computed without the BOM are one short
    path = write(tmp_path, squad([qa("q1", [{"text": "France", "answer_start": CONTEXT.index("France")}])], context))
    examples, report = read_squad_examples(path, True, True)
    assert examples[0].answers[0]["answer_start"] == context.index("France")
    assert report.repaired == 1


def test_unrepairable_answer_refused_or_skipped(tmp_path):
    bad = qa("q9", [{"text": "Vikings", "answer_start": 4}])
    good = qa("q1", [{"text": "Normans", "answer_start": 4}])
    path = write(tmp_path, squad([good, bad]))
    message = error(path)
    assert message.startswith(f"{path}: question q9: answer text 'Vikings' not found at answer_start 4")
    examples, report = read_squad_examples(path, True, True, skip_bad_answers=True)
    assert [e.qas_id for e in examples] == ["q1"]
    assert (report.skipped, report.skipped_ids) == (1, ["q9"])


@pytest.mark.parametrize("content,expected", [
    ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ("[1, 2]", "top level: expected an object with 'data', got list"),
    ({"version": "v2.0"}, "top level: missing key 'data'"),
    ({"data": {}}, "data: expected list, got dict"),
    ({"data": [{"title": "x"}]}, "data[0]: missing key 'paragraphs'"),
    ({"data": [{"paragraphs": [{"qas": []}]}]}, "data[0].paragraphs[0]: missing key 'context'"),
    ({"data": [{"paragraphs": [{"context": 5, "qas": []}]}]}, "data[0].paragraphs[0].context: expected str, got int"),
    (squad([qa("q1", [])], context="   "), "data[0].paragraphs[0]: empty context"),
    (squad([{"id": "q1", "answers": []}]), "data[0].paragraphs[0].qas[0]: missing key 'question'"),
    (squad([qa("q1", [], question="  ")]), "question q1: empty question"),
    (squad([qa("q1", [{"text": "Normans", "answer_start": 4}]), qa("q1", [{"text": "Normans", "answer_start": 4}])]),
     "question q1: duplicate id (first at data[0].paragraphs[0].qas[0], again at data[0].paragraphs[0].qas[1])"),
    (squad([qa("q1", [{"text": "Normans", "answer_start": 400}])]),
     "question q1: answer_start 400 outside the context (length 60)"),
    (squad([qa("q1", [{"text": "Normans", "answer_start": "4"}])]), "question q1: answer_start: expected int, got str"),
    (squad([qa("q1", [{"text": "Normans"}])]), "question q1: answer without 'text'/'answer_start'"),
    (squad([]), "no questions found"),
])
def test_validation_messages(tmp_path, content, expected):
    path = write(tmp_path, content)
    assert error(path) == f"{path}: {expected}"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    data = json.dumps(squad([qa("q1", [])])).encode().replace(b"Normans", b"Norm\xe9ns")
    path.write_bytes(data)
    bad_at = data.index(b"\xe9")
    assert error(path) == f"{path}: not UTF-8 (invalid byte at offset {bad_at})"


def test_jsonl_bad_line(tmp_path):
    row = {"id": "a", "context": CONTEXT, "question": "Who?", "answers": {"text": [], "answer_start": []}}
    path = write(tmp_path, json.dumps(row) + "\n{broken\n", "data.jsonl")
    assert error(path) == f"{path}: line 2: not valid JSON: Expecting property name enclosed in double quotes at column 2"


def test_file_too_large_for_memory_is_refused_up_front(tmp_path):
    path = write(tmp_path, squad([qa("q1", [{"text": "Normans", "answer_start": 4}])]))
    size = path.stat().st_size
    assert us.check_file_size(path, max_bytes=size * us.JSON_MEMORY_FACTOR) == size
    with pytest.raises(SquadDataError, match="reading it needs about .* MB but only 0 MB is available"):
        us.check_file_size(path, max_bytes=size)


def test_real_sample_reads(squad_dir):
    examples, report = read_squad_examples(squad_dir / "train-v2.0.json", True, True)
    assert (report.questions, report.impossible, report.repaired) == (3743, 1959, 0)
    dev, _ = read_squad_examples(squad_dir / "dev-v2.0.json", True, False)
    assert len(dev) == 888 and max(len(e.answers) for e in dev) > 1
    message = error(squad_dir / "train-v2.0.json", v2=False)
    assert "--version_2_with_negative" in message


# ---------- broken, truncated and empty files ----------
PRETTY_TRUNCATED = '{\n  "version": "v2.0",\n  "data": [\n    {\n      "title": "T",\n'


@pytest.mark.parametrize("content,expected", [
    # several lines start with "{", but line 1 alone is no JSON object: the whole-file error, not JSON Lines
    (PRETTY_TRUNCATED, "not valid JSON (truncated?): Expecting property name enclosed in double quotes "
                       "at line 6 column 1"),
    ('{\n  "data": [\n    {"title": "T", "paragraphs": [}]\n  ]\n}\n',
     "not valid JSON: Expecting value at line 3 column 35"),
    # the decoder's "Unterminated string starting at" must not read "starting at at line"
    ('{"version": "v2.0", "data": [{"title": "Norm', "not valid JSON (truncated?): Unterminated string starting "
                                                    "at line 1 column 40"),
    ('{"id": "a", "context": "c", "question": "q", "answers": {"text": [], "answer_start": []}}\n{"id": "b", "con',
     "line 2: not valid JSON: Unterminated string starting at column 13"),
    ("", "empty file"),
    ("  \n\t\n", "empty file"),
    ("\ufeff\n", "empty file"),  # only a BOM
])
def test_broken_file_messages(tmp_path, content, expected):
    path = write(tmp_path, content)
    assert error(path) == f"{path}: {expected}"


def test_truncated_real_file_names_the_cut(tmp_path):
    text = json.dumps(squad([qa("q1", [{"text": "Normans", "answer_start": 4}])]), indent=2)
    path = write(tmp_path, text[: text.index('"qas"')])
    assert error(path).startswith(f"{path}: not valid JSON (truncated?): ")


def test_jsonl_lines_split_only_at_newlines(tmp_path):
    # U+2028 and U+0085 may stand unescaped inside JSON strings (ensure_ascii=False writes them so)
    context = "The Normans\u2028gave their name\x85to Normandy."
    rows = [{"id": k, "context": context, "question": "Who?", "answers": {"text": ["Normans"], "answer_start": [4]}}
            for k in "ab"]
    path = write(tmp_path, "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "data.jsonl")
    examples, report = read_squad_examples(path, False, False)
    assert report.format == "jsonl" and [e.context for e in examples] == [context, context]


# ---------- skip_bad_answers ----------
GOOD = {"text": "Normans", "answer_start": 4}
BAD = {"text": "Vikings", "answer_start": 4}


def test_evaluation_drops_only_the_bad_gold_answer(tmp_path):
    path = write(tmp_path, squad([qa("q1", [GOOD, BAD, GOOD]), qa("q2", [BAD, BAD]), qa("q3", [GOOD])]))
    examples, report = read_squad_examples(path, True, False, skip_bad_answers=True)
    assert [(e.qas_id, e.answers, e.is_impossible) for e in examples] == [("q1", [GOOD, GOOD], False),
                                                                          ("q3", [GOOD], False)]
    assert (report.dropped_answers, report.dropped_answer_ids) == (1, ["q1"])
    assert (report.skipped, report.skipped_ids) == (1, ["q2"])  # no good answer left: not scored as unanswerable
    message = error(path, training=False)
    assert message.startswith(f"{path}: question q1: answer text 'Vikings' not found at answer_start 4")


@pytest.mark.parametrize("answers", [[GOOD, BAD], [BAD, GOOD]])
def test_training_skips_the_question_with_any_bad_answer(tmp_path, answers):
    path = write(tmp_path, squad([qa("q1", answers), qa("q2", [GOOD])]))
    examples, report = read_squad_examples(path, True, True, skip_bad_answers=True)
    # the label is the first answer of a kept question: never a bad one, never a silent CLS label
    assert [(e.qas_id, e.answers) for e in examples] == [("q2", [GOOD])]
    assert (report.skipped, report.skipped_ids, report.dropped_answers) == (1, ["q1"], 0)


@pytest.mark.parametrize("n,expected", [(1, "1 question with a bad answer"), (2, "2 questions with bad answers")])
def test_every_question_skipped_message(tmp_path, n, expected):
    path = write(tmp_path, squad([qa(f"q{i}", [BAD]) for i in range(n)]))
    assert error(path, skip_bad_answers=True) == f"{path}: every question was skipped ({expected})"


def test_answer_start_just_past_either_end_is_repaired(tmp_path):
    end = {"text": "France", "answer_start": len(CONTEXT) + 2}  # a few characters past the end
    start = {"text": "The", "answer_start": -2}
    path = write(tmp_path, squad([qa("q1", [end]), qa("q2", [start])]))
    examples, report = read_squad_examples(path, True, True)
    assert [e.answers for e in examples] == [[{"text": "France", "answer_start": 53}],
                                            [{"text": "The", "answer_start": 0}]]
    assert report.repaired == 2
    far = write(tmp_path, squad([qa("q1", [{"text": "France", "answer_start": len(CONTEXT) + 40}])]), "far.json")
    assert error(far) == f"{far}: question q1: answer_start 100 outside the context (length 60)"


def test_boolean_flags_after_is_training_are_keyword_only(tmp_path):
    path = write(tmp_path, squad([qa("q1", [GOOD])]))
    with pytest.raises(TypeError):
        read_squad_examples(path, True, True, True)


# ---------- JSON Lines read like SQuAD JSON ----------
def jsonl_row(answers):
    row = {"id": "q1", "context": CONTEXT, "question": "Who?"}
    if answers is not None:
        row["answers"] = {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]}
    return row


def json_qa(answers):
    if answers is None:
        return {"id": "q1", "question": "Who?"}
    return qa("q1", answers, **({} if answers else {"is_impossible": True}))


def outcome(path, v2, training):
    try:
        examples, _ = read_squad_examples(path, version_2_with_negative=v2, is_training=training)
    except SquadDataError as exc:
        return "error", str(exc).rsplit(": ", 1)[-1]  # the problem, without where it is
    return "ok", [(e.qas_id, e.answers, e.is_impossible) for e in examples]


@pytest.mark.parametrize("answers", [None, [], [GOOD]], ids=["no-answers-key", "empty-answers", "answered"])
@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_jsonl_rows_read_like_squad_json(tmp_path, answers, v2, training):
    """No answers: a prediction-only question; empty answer lists: squad_v2's unanswerable (is_impossible)."""
    jsonl = write(tmp_path, json.dumps(jsonl_row(answers)) + "\n", "data.jsonl")
    squad_json = write(tmp_path, squad([json_qa(answers)]), "data.json")
    assert outcome(jsonl, v2, training) == outcome(squad_json, v2, training)


def test_jsonl_v2_rows_without_flag_are_the_squad_json_error(tmp_path):
    rows = [jsonl_row([GOOD]), {**jsonl_row([]), "id": "q2"}]
    path = write(tmp_path, "\n".join(json.dumps(r) for r in rows) + "\n", "data.jsonl")
    for training in (False, True):
        message = error(path, v2=False, training=training)
        assert message == (f"{path}: question q2: unanswerable question (is_impossible or no answers) in data read "
                           "without --version_2_with_negative; pass --version_2_with_negative for SQuAD 2.0 data")


def test_jsonl_prediction_file_without_answers(tmp_path):
    rows = [{k: v for k, v in jsonl_row(None).items()}, {**jsonl_row(None), "id": "q2"}]
    path = write(tmp_path, "\n".join(json.dumps(r) for r in rows) + "\n", "data.jsonl")
    examples, _ = read_squad_examples(path, False, False)
    assert [(e.qas_id, e.answers, e.is_impossible) for e in examples] == [("q1", [], False), ("q2", [], False)]
    assert error(path, v2=False, training=True) == f"{path}: question q1: missing key 'answers'"
