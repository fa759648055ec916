"""Every set of files the tool writes is whole for every reader after a kill at any instant.

A writer is killed (SIGKILL, by atomic_io's test hook) before its first, second, ... step of a commit (each
rename, and the journal) until one run finishes; after each kill the readers of the folder are run and must
see the whole old set, the whole new set, or a one-line refusal. The sets: an evaluation's results (with the
tuned threshold in the model folder), a checkpoint rewritten at its step, a final model replaced by another.
The writers use the project's own functions without torch (fast); the final model is loaded for real.
"""

import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import qa_pipeline
import run_squad
import squad_metrics
from cli_helpers import DEMO_DEV, DEMO_TRAIN, REPO, cli_env, without_torch
from squad_internals import atomic_io, cli, folder_lock, output_folder

OLD, NEW = "OLDSET", "NEWSET"


def run_writer(script: str, args: list, kill_at: int) -> int:
    """The writer in a subprocess, killed before its kill_at-th step (0: never); its exit code."""
    done = subprocess.run([sys.executable, "-c", script, str(REPO), *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=cli_env(**{atomic_io.KILL_AT_ENV: str(kill_at)}))
    assert done.returncode in (0, -9), done.stderr
    return done.returncode


def leftovers(*folders: Path) -> list[str]:
    """Temporaries and journals: what a whole folder no longer holds."""
    return sorted(p.name for folder in folders for p in folder.iterdir()
                  if p.name.endswith(".tmp") or p.name.startswith(atomic_io.JOURNAL_PREFIX))


def tag_of(path: Path) -> str:
    text = path.read_text()
    assert (OLD in text) != (NEW in text), f"{path}: {text[:200]}"
    return OLD if OLD in text else NEW


# --------------------------------------------------------------------------------------------
# An evaluation's results, the tuned threshold in the model folder among them
# --------------------------------------------------------------------------------------------

# As eval_output.write_evaluation stages an evaluation's files (predictions, n-best, null odds, plot, threshold,
# eval_results.txt and .json), with the project's own functions.
EVAL_WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from squad_internals import atomic_io, decoding, output_folder
out, model, tag = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
scores = {"best_f1_thresh": 1.5, "best_f1": 50.0, "best_exact": 50.0, "best_exact_thresh": 1.5}
with atomic_io.file_set() as files:
    decoding.write_prediction_files(out, "2", {tag: tag}, {tag: [{"text": tag}]}, {tag: 0.5}, files)
    files.write_text(out / "no_answer_2.png", tag)
    output_folder.write_threshold(model, scores, "2", None, {"set": tag}, files)
    output_folder.write_eval_results(out, "2", {"exact": 50.0, "f1": 50.0, "set": tag}, files)
"""
EVAL_SET = ("nbest_predictions_2.json", "null_odds_2.json", "predictions_2.json", "no_answer_2.png",
            "eval_results.txt", "eval_results.json")


def model_folder_with_files(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, text in {"config.json": '{"model_type": "bert"}', "vocab.txt": "[PAD]\n",
                       output_folder.TRAINING_ARGS: "{}"}.items():
        (folder / name).write_text(text)
    return folder


def evaluation_command(model: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--do_eval", "--predict_file",
            str(DEMO_DEV), "--overwrite_output_dir"]


def test_an_evaluation_killed_at_every_step_leaves_one_whole_set_for_the_next_reader(tmp_path, capsys):
    outcomes = []
    for kill_at in itertools.count(1):
        out, model = tmp_path / f"k{kill_at}" / "out", model_folder_with_files(tmp_path / f"k{kill_at}" / "model")
        out.mkdir()
        assert run_writer(EVAL_WRITER, [out, model, OLD], 0) == 0
        if run_writer(EVAL_WRITER, [out, model, NEW], kill_at) == 0:
            break
        # Whatever the instant, the model folder's threshold is one whole file (its old or its new one).
        tag_of(model / output_folder.THRESHOLD_FILE)
        capsys.readouterr()
        cli.check_run_squad_command(evaluation_command(model, out))  # the next evaluation-only run
        notes = capsys.readouterr().err
        tags = {name: tag_of(out / name) for name in EVAL_SET}
        tags[output_folder.THRESHOLD_FILE] = tag_of(model / output_folder.THRESHOLD_FILE)
        assert len(set(tags.values())) == 1, (kill_at, tags)
        assert leftovers(out) == [], "an evaluation-only run removes a killed run's temporaries too"
        outcomes.append(tags["eval_results.json"])
        if outcomes[-1] == NEW:
            assert f"note: {out}: finished renaming in " in notes, notes
    # Killed before its journal, the old set stays; from the journal on, the complete new set is finished.
    assert outcomes == [OLD] + [NEW] * (len(EVAL_SET) + 1)


def test_the_scorer_finishes_the_set_it_reads_first(tmp_path, capsys):
    out, model = tmp_path / "out", model_folder_with_files(tmp_path / "model")
    out.mkdir()
    assert run_writer(EVAL_WRITER, [out, model, OLD], 0) == 0
    assert run_writer(EVAL_WRITER, [out, model, NEW], 4) == -9  # the journal, 2 renames in
    assert len(set(map(tag_of, (out / name for name in EVAL_SET)))) == 2, "the folder holds two sets until finished"
    capsys.readouterr()
    assert squad_metrics.main([str(DEMO_DEV), str(out / "predictions_2.json"), "--na-prob-file",
                               str(out / "null_odds_2.json")]) == 0
    assert f"note: {out}: finished renaming in " in capsys.readouterr().err
    assert {tag_of(out / name) for name in EVAL_SET} == {NEW} and leftovers(out) == []


def test_a_journal_cut_short_or_naming_a_lost_file_is_rolled_back_or_refused(tmp_path):
    old = {"a.json": "old a", "b.json": "old b"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    files = atomic_io.FileSet()
    for name in old:
        files.write_text(tmp_path / name, "new " + name)
    entries = [atomic_io.journal_entry(tmp_path, tmp, final) for tmp, final in files.staged]
    journal = atomic_io.write_journal(tmp_path, entries)
    text = journal.read_text()
    journal.write_text(text[:len(text) // 2])  # killed while the journal was written: nothing renamed yet
    assert output_folder.finish_writes(tmp_path) == [
        f"{tmp_path}: dropped a set cut short before any of its files was renamed in (the previous files are "
        "unchanged)"]
    assert {n: (tmp_path / n).read_text() for n in old} == old
    journal = atomic_io.write_journal(tmp_path, entries)
    files.staged[1][0].write_text("cut")  # a new file damaged before anything was renamed in: back to the old set
    assert output_folder.finish_writes(tmp_path) == [
        f"{tmp_path}: rolled back a.json, b.json (cut short before any was renamed in, and a new file is missing "
        "or cut short)"]
    assert {n: (tmp_path / n).read_text() for n in old} == old and leftovers(tmp_path) == []
    files = atomic_io.FileSet()
    for name in old:
        files.write_text(tmp_path / name, "new " + name)
    journal = atomic_io.write_journal(tmp_path, [atomic_io.journal_entry(tmp_path, t, f) for t, f in files.staged])
    atomic_io.rename(*files.staged[0])  # a.json in, then b.json's new file lost: neither way is whole
    files.staged[1][0].write_text("cut")
    with pytest.raises(output_folder.UnfinishedWrite) as refused:
        output_folder.finish_writes(tmp_path)
    assert str(refused.value) == (
        f"{journal}: the set a.json, b.json is partly renamed in and {files.staged[1][0].name} (for b.json) is "
        f"missing or cut short: write the set again (run the same command) after deleting {journal.name}")


# --------------------------------------------------------------------------------------------
# A checkpoint rewritten at its step
# --------------------------------------------------------------------------------------------

CHECKPOINT_WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from squad_internals import atomic_io
with atomic_io.folder_atomic(Path(sys.argv[2]) / "checkpoint-2") as tmp:
    for name in ("model.safetensors", "config.json", "trainer_state.pt"):
        (tmp / name).write_text(sys.argv[3] + " " + name)
"""


def checkpoint_tags(out: Path) -> set[str]:
    found = output_folder.list_checkpoints(out)
    assert [p.name for p in found] == ["checkpoint-2"], "the checkpoint of that step is never lost"
    return {tag_of(p) for p in found[0].iterdir()}


@pytest.mark.parametrize("reader", ["the next command", "the training start alone"])
def test_a_checkpoint_rewritten_at_its_step_and_killed_keeps_one_whole_copy(tmp_path, reader):
    outcomes = []
    for kill_at in itertools.count(1):
        out = tmp_path / f"k{kill_at}"
        out.mkdir()
        assert run_writer(CHECKPOINT_WRITER, [out, OLD], 0) == 0
        if run_writer(CHECKPOINT_WRITER, [out, NEW], kill_at) == 0:
            break
        if reader == "the next command":
            cli.check_run_squad_command(["--model_name_or_path", "some-model", "--output_dir", str(out),
                                         "--do_train", "--train_file", str(DEMO_TRAIN), "--overwrite_output_dir"])
        output_folder.clean_output_dir(out, None)  # what a training start does: it deleted both copies before
        tags = checkpoint_tags(out)
        assert len(tags) == 1 and leftovers(out) == [], (kill_at, tags, leftovers(out))
        outcomes.append(tags.pop())
    assert outcomes == [OLD, NEW, NEW]  # before the journal; before the old copy is moved aside; in between


# --------------------------------------------------------------------------------------------
# A final model replaced by another, loaded for real
# --------------------------------------------------------------------------------------------

FINAL_WRITER = """
import shutil, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from squad_internals import atomic_io, output_folder
with atomic_io.files_replacing(Path(sys.argv[2]), output_folder.FINAL_MODEL_TMP, output_folder.PREVIOUS_MODEL_TMP,
                               output_folder.FINAL_MODEL_GLOBS) as tmp:
    for path in sorted(Path(sys.argv[3]).iterdir()):
        shutil.copy(path, tmp / path.name)
"""


@pytest.fixture(scope="module")
def two_models(tiny_bert_dir, tmp_path_factory):
    """Two finished models of the same family (other weights, other step), as a run leaves them."""
    import torch
    from transformers import BertForQuestionAnswering

    folders = []
    for step in (3, 4):
        folder = tmp_path_factory.mktemp(f"model-{step}")
        model = BertForQuestionAnswering.from_pretrained(tiny_bert_dir)
        torch.manual_seed(step)
        with torch.no_grad():
            model.qa_outputs.weight.normal_(0, 1.0)
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny_bert_dir / name, folder / name)
        (folder / output_folder.TRAINING_ARGS).write_text("{}")
        (folder / output_folder.TRAINING_STATE).write_text(json.dumps({"global_step": step}))
        folders.append(folder)
    return folders


def pipeline_answers(folder: Path, questions: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = qa_pipeline.main([str(folder), "--input", str(questions), "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out if code == 0 else captured.err


def test_a_final_model_replaced_and_killed_at_every_step_is_loaded_old_or_new(two_models, tmp_path, capsys):
    old, new = two_models
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "context": "Warsaw is the capital and largest city of "
                                             "Poland. It stands on the Vistula River."}) + "\n"
                                 for q in ("What is the capital of Poland?", "Where does Warsaw stand?")))
    expected = {pipeline_answers(folder, questions, capsys)[1]: folder for folder in (old, new)}
    assert len(expected) == 2, "the two models answer differently"
    outcomes = []
    for kill_at in itertools.count(1):
        out = Path(shutil.copytree(old, tmp_path / f"k{kill_at}"))
        if run_writer(FINAL_WRITER, [out, new], kill_at) == 0:
            break
        code, answers = pipeline_answers(out, questions, capsys)
        assert code == 0 and answers in expected, (kill_at, answers)
        whole = expected[answers]
        assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in whole.iterdir()}
        outcomes.append(whole)
    assert outcomes[0] == old and outcomes[-1] == new and new in outcomes
    assert outcomes == sorted(outcomes, key=lambda folder: folder == new), "old until the marker, new from then on"


def test_an_unfinished_replacement_in_a_folder_another_run_holds_is_one_line(two_models, tmp_path, capsys):
    old, new = two_models
    out = Path(shutil.copytree(old, tmp_path / "out"))
    assert run_writer(FINAL_WRITER, [out, new], 3) == -9  # two old files moved aside
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from squad_internals import folder_lock; folder_lock.hold(__import__('pathlib').Path(sys.argv[2]), "
                               "['--output_dir', sys.argv[2]]); print('held', flush=True); time.sleep(60)",
                               str(REPO), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        questions = tmp_path / "q.jsonl"
        questions.write_text(json.dumps({"question": "Who?", "context": "Nobody is here."}) + "\n")
        code, err = pipeline_answers(out, questions, capsys)
        aside = output_folder.pending_writes(out)[0].name
        assert code == 2 and err.startswith(
            f"error: {out}: an interrupted write is unfinished ({aside}), and another run holds the folder (pid "
            f"{holder.pid} on {atomic_io.host()}, since "), err
        assert err.count("\n") == 1 and err.endswith("try again once it has ended (it finishes its own writes)\n")
        assert output_folder.pending_writes(out) == [out / aside], "left as it was for its holder"
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert folder_lock.held_by(out) is None


# --------------------------------------------------------------------------------------------
# A model folder that is not whole: one line naming the file, exit 2
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage, named", [
    ("no tokenizer", "tokenizer.json: missing, and no other tokenizer file is in"),
    ("no config", "config.json: missing, so"),
    ("cut config", "config.json: cannot be read, the file is damaged or cut short ("),
])
def test_a_model_folder_without_its_tokenizer_or_config_is_one_line(two_models, tmp_path, capsys, damage, named):
    folder = Path(shutil.copytree(two_models[0], tmp_path / "model"))
    if damage == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
    elif damage == "no config":
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text('{"model_type": "be')
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "Who?", "context": "Nobody is here."}) + "\n")
    code, err = pipeline_answers(folder, questions, capsys)
    if damage == "no config":  # the pipeline's own check of a model folder says it first
        named = "not a model folder (no config.json)"
    assert code == 2 and err.startswith(f"error: {folder}") and named in err and err.count("\n") == 1, err
    with pytest.raises(cli.InputError) as refused:
        cli.check_run_squad_command(evaluation_command(folder, tmp_path / "eval"))
    expected = "config.json: missing, so" if damage == "no config" else named
    assert str(refused.value).startswith(str(folder)) and expected in str(refused.value)
    assert run_squad.main(evaluation_command(folder, tmp_path / "eval2")) == 2
    assert capsys.readouterr().err.count("\n") == 1
    if damage == "no tokenizer":  # a tokenizer given apart is what the model folder lacks
        qa = qa_pipeline.QuestionAnsweringPipeline(str(folder), tokenizer=str(two_models[0]), device="cpu")
        assert len(qa.tokenizer) > 1000
        cli.check_run_squad_command([*evaluation_command(folder, tmp_path / "eval3"), "--tokenizer_name",
                                     str(two_models[0])])  # accepted


# --------------------------------------------------------------------------------------------
# An --output_dir that cannot be a folder is refused before torch is imported
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, reason", [("loop", "a loop of symbolic links"),
                                          ("nowhere", "a symbolic link to nowhere ({target} does not exist)"),
                                          ("below nowhere", "a symbolic link to nowhere ({target} does not exist)")])
def test_an_output_dir_behind_a_bad_link_is_one_line_before_torch(tmp_path, case, reason):
    target = tmp_path / "gone"
    if case == "loop":
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
        out = flagged = tmp_path / "a"
    else:
        (tmp_path / "link").symlink_to(target)
        flagged, out = tmp_path / "link", tmp_path / "link" / ("run" if case == "below nowhere" else "")
    done = subprocess.run([sys.executable, str(REPO / "run_squad.py"), "--model_name_or_path", "some-model",
                           "--output_dir", str(out), "--do_train", "--train_file", str(DEMO_TRAIN)],
                          capture_output=True, text=True, env=without_torch(tmp_path / "shadow"), timeout=60)
    assert done.returncode == 2
    problem = reason.format(target=target)
    if case == "below nowhere":
        problem = f"{flagged} on its way is {problem}"
    assert done.stderr == f"error: --output_dir {out}: {problem}\n"


# --------------------------------------------------------------------------------------------
# A damaged tuned threshold stops only what reads it
# --------------------------------------------------------------------------------------------


def test_a_damaged_threshold_file_stops_only_calls_that_use_it(two_models, tmp_path, capsys):
    folder = Path(shutil.copytree(two_models[0], tmp_path / "model"))
    threshold = folder / output_folder.THRESHOLD_FILE
    threshold.write_text('{"null_score_diff_threshold": ')
    qa = qa_pipeline.QuestionAnsweringPipeline(str(folder), device="cpu")
    pair = [("What is the capital of Poland?", "Warsaw is the capital of Poland.")]
    assert qa.answer(pair)[0][0]["answer"], "a call without handle_impossible_answer does not read it"
    with pytest.raises(qa_pipeline.PipelineInputError) as refused:
        qa.answer(pair, handle_impossible_answer=True)
    assert str(refused.value).startswith(f"{threshold}: not valid JSON (")
    untuned = qa_pipeline.QuestionAnsweringPipeline(str(folder), device="cpu", null_threshold=None)
    assert untuned.answer(pair, handle_impossible_answer=True)
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": pair[0][0], "context": pair[0][1]}) + "\n")
    assert pipeline_answers(folder, questions, capsys)[0] == 0
    capsys.readouterr()
    assert qa_pipeline.main([str(folder), "--input", str(questions), "--handle_impossible_answer"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {threshold}: not valid JSON (") and err.count("\n") == 1
    assert "--no_threshold goes without it" in err
