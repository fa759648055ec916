"""A finished model in --output_dir is never replaced by surprise, and a refused run leaves nothing behind.

The folder checks run without torch (cli.py, output_folder.py); the replacement of a final model is
atomic_io.files_replacing, tested here at every rename a kill could interrupt; the whole story (the issue's
re-run of a finished 3-step training with --resume_from_checkpoint latest) runs a tiny BERT on the demo data.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import run_squad
from cli_helpers import DEMO_DEV as DEV
from cli_helpers import DEMO_TRAIN as TRAIN
from cli_helpers import REPO, without_torch
from squad_internals import atomic_io, checkpoints, cli, output_folder

OLD_MODEL = {"config.json": "old config", "model.safetensors": "old weights", "vocab.txt": "old vocab",
             "tokenizer_config.json": "old tokenizer", output_folder.TRAINING_ARGS: "{}",
             output_folder.TRAINING_STATE: json.dumps({"global_step": 30}),
             output_folder.THRESHOLD_FILE: json.dumps({"null_score_diff_threshold": -1.76})}
RESULTS = {"eval_results.json": json.dumps({"30": {"exact": 28.94, "f1": 35.2109}}),
           "predictions_30.json": "{}", "notes.txt": "the user's"}
NEW_MODEL = {"config.json": "new config", "model.safetensors": "new weights", "tokenizer.json": "new tokenizer",
             output_folder.TRAINING_ARGS: "{}", output_folder.TRAINING_STATE: json.dumps({"global_step": 40})}


def make_files(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def contents(folder: Path) -> dict:
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}


def train_command(out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", "some-model", "--output_dir", str(out), "--do_train", "--train_file", str(TRAIN),
            *extra]


WAYS = ("evaluate it with --do_eval --model_name_or_path {out}{elsewhere} (without --do_train); train a new model "
        "into another --output_dir; or replace it with --overwrite_output_dir (it is kept until the new model is "
        "written)")


def ways(out: Path, elsewhere: bool = True) -> str:
    return WAYS.format(out=out, elsewhere=" into another --output_dir" if elsewhere else "")


# --------------------------------------------------------------------------------------------
# Recognising a finished model, and the one-line refusals (no torch)
# --------------------------------------------------------------------------------------------


def test_a_finished_model_is_recognised_with_its_step_and_scores(tmp_path):
    out = make_files(tmp_path / "out", {**OLD_MODEL, **RESULTS})
    finished = output_folder.finished_model(out)
    assert (finished.step, finished.describe()) == ("30", "a finished model (step 30; EM 28.94, F1 35.21)")
    (out / "eval_results.json").write_text(json.dumps({"30": {"exact_match": 81.2, "f1": 88.5}}))  # SQuAD 1.1
    assert output_folder.finished_model(out).describe() == "a finished model (step 30; EM 81.20, F1 88.50)"
    (out / "eval_results.json").unlink()
    assert output_folder.finished_model(out).describe() == "a finished model (step 30, not evaluated there)"
    for needed in ("config.json", "model.safetensors", output_folder.TRAINING_ARGS, output_folder.TRAINING_STATE):
        partial = make_files(tmp_path / f"without-{needed}", {k: v for k, v in OLD_MODEL.items() if k != needed})
        assert output_folder.finished_model(partial) is None, needed


def test_resuming_latest_where_a_finished_model_and_no_checkpoint_are_is_refused_before_torch(tmp_path):
    """The issue's data loss: `latest` with no checkpoint trains from the pretrained weights and replaced the
    finished model. Now one line (exit 2, before torch is imported) says what is there and the ways forward."""
    out = make_files(tmp_path / "debug_squad", {**OLD_MODEL, **RESULTS})
    before = contents(out)
    done = subprocess.run([sys.executable, str(REPO / "run_squad.py"),
                           *train_command(out, "--resume_from_checkpoint", "latest")],
                          capture_output=True, text=True, env=without_torch(tmp_path / "shadow"), timeout=60)
    assert done.returncode == 2
    assert done.stderr == (f"error: --output_dir {out} holds a finished model (step 30; EM 28.94, F1 35.21) and no "
                           f"checkpoint to resume from: {ways(out)}\n")
    assert contents(out) == before


@pytest.mark.parametrize("case", ["finished model", "finished model and checkpoints", "unfinished run", "other files"])
def test_training_into_a_non_empty_folder_names_only_options_that_do_what_they_say(case, tmp_path):
    out = tmp_path / "out"
    files = {"finished model": {**OLD_MODEL, **RESULTS}, "finished model and checkpoints": OLD_MODEL,
             "unfinished run": {}, "other files": {"notes.txt": "x"}}[case]
    make_files(out, files)
    if "checkpoints" in case or case == "unfinished run":
        for step in (10, 20):
            make_files(out / f"checkpoint-{step}", {output_folder.TRAINER_STATE: ""})
    with pytest.raises(cli.InputError) as refused:
        cli.check_run_squad_command(train_command(out))
    expected = {
        "finished model": f"--output_dir {out} holds a finished model (step 30; EM 28.94, F1 35.21): {ways(out)}",
        "finished model and checkpoints": (
            f"--output_dir {out} holds a finished model (step 30, not evaluated there): {ways(out, False)}; or "
            "continue its training from checkpoint-20 with --resume_from_checkpoint latest"),
        "unfinished run": (f"--output_dir {out} holds checkpoints of an unfinished run (the latest checkpoint-20): "
                           "continue it with --resume_from_checkpoint latest, start over into it with "
                           "--overwrite_output_dir (files of the same name are replaced), or choose another "
                           "--output_dir"),
        "other files": (f"--output_dir {out}: exists and is not empty; choose another --output_dir, or pass "
                        "--overwrite_output_dir to write into it (files of the same name are replaced, others kept)"),
    }[case]
    assert str(refused.value) == expected


@pytest.mark.parametrize("extra", [["--resume_from_checkpoint", "latest"], ["--overwrite_output_dir"],
                                   ["--overwrite_output_dir", "--resume_from_checkpoint", "latest"]])
def test_the_ways_forward_are_accepted(extra, tmp_path):
    """Resuming where a checkpoint is (the finished model is replaced at the end, kept until then), or replacing
    the finished model on purpose."""
    out = make_files(tmp_path / "out", OLD_MODEL)
    if extra == ["--resume_from_checkpoint", "latest"]:
        make_files(out / "checkpoint-20", {output_folder.TRAINER_STATE: ""})
    assert cli.check_run_squad_command(train_command(out, *extra)).output_dir == str(out)


# --------------------------------------------------------------------------------------------
# Replacing a final model: the old one is kept until the new one is complete, whatever happens
# --------------------------------------------------------------------------------------------


def replace(folder: Path, files: dict) -> None:
    with atomic_io.files_replacing(folder, output_folder.FINAL_MODEL_TMP, output_folder.PREVIOUS_MODEL_TMP,
                                   output_folder.FINAL_MODEL_GLOBS) as tmp:
        make_files(tmp, files)


def test_a_replaced_model_leaves_none_of_its_files_beside_the_new_one(tmp_path):
    out = make_files(tmp_path / "out", {**OLD_MODEL, **RESULTS})
    replace(out, NEW_MODEL)
    assert contents(out) == {**RESULTS, **NEW_MODEL}  # no old vocab.txt, no threshold tuned for the old weights
    assert sorted(p.name for p in out.iterdir()) == sorted({**RESULTS, **NEW_MODEL})  # no temporaries


def test_a_failure_while_the_new_model_is_written_leaves_the_old_one(tmp_path, monkeypatch):
    out = make_files(tmp_path / "out", {**OLD_MODEL, **RESULTS})

    def full_disk(folder, *args):
        (folder / "model.safetensors").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "write_model_folder", full_disk)
    with pytest.raises(checkpoints.CheckpointWriteError, match="No space left on device"):
        checkpoints.save_final_model(out, None, None, {}, 40)
    assert sorted(p.name for p in out.iterdir()) == sorted({**OLD_MODEL, **RESULTS})
    assert contents(out) == {**OLD_MODEL, **RESULTS}


@pytest.mark.parametrize("failing_rename", [1, 4, 7])
def test_a_failure_while_the_old_model_is_moved_aside_puts_it_back(failing_rename, tmp_path, monkeypatch):
    out = make_files(tmp_path / "out", {**OLD_MODEL, **RESULTS})
    real_replace, calls = atomic_io.os.replace, []

    def replace_failing(src, dst):
        calls.append(src)
        if len(calls) == failing_rename:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, "replace", replace_failing)
    with pytest.raises(OSError, match="Input/output error"):
        replace(out, NEW_MODEL)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == sorted({**OLD_MODEL, **RESULTS})
    assert contents(out) == {**OLD_MODEL, **RESULTS}


KILLED_SWAP = """
import os, shutil, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from squad_internals import atomic_io, output_folder
kill_at, calls = int(sys.argv[2]), []
real_replace = os.replace
def replace(src, dst):
    calls.append(src)
    if len(calls) == kill_at:
        os._exit(9)  # as SIGKILL: no cleanup, no finally
    real_replace(src, dst)
os.replace = replace
if kill_at == 0:  # killed while the old files are deleted, the new ones all in place
    shutil.rmtree = lambda *args, **kwargs: os._exit(9)
with atomic_io.files_replacing(Path(sys.argv[1]), output_folder.FINAL_MODEL_TMP, output_folder.PREVIOUS_MODEL_TMP,
                               output_folder.FINAL_MODEL_GLOBS) as tmp:
    for name, text in %r.items():
        (tmp / name).write_text(text)
"""


def test_a_kill_at_any_moment_of_the_swap_is_finished_on_the_next_start(tmp_path):
    """Killed before each rename of the swap (and while the old files are deleted), the next start leaves the
    folder with exactly the old model (before the marker: old files aside) or exactly the new one (after)."""
    old_files = len(OLD_MODEL) + 1  # the old model's files and tokenizer.json, which the new set brings
    renames = old_files + 1 + len(NEW_MODEL)  # old files aside, the marker, new files in
    outcomes = []
    for kill_at in [*range(1, renames + 1), 0]:
        out = make_files(tmp_path / f"killed-at-{kill_at}", {**OLD_MODEL, **RESULTS, "tokenizer.json": "old tok"})
        done = subprocess.run([sys.executable, "-c", KILLED_SWAP % NEW_MODEL, str(out), str(kill_at), str(REPO)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 9, done.stderr
        repairs = output_folder.finish_interrupted_swap(out)
        assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == [], kill_at
        if contents(out) == {**OLD_MODEL, **RESULTS, "tokenizer.json": "old tok"}:
            outcomes.append("old")
            assert repairs == [f"{out}: restored the previous final model: its replacement was cut short before "
                               "the new model was moved in"]
        else:
            assert contents(out) == {**RESULTS, **NEW_MODEL}, kill_at
            outcomes.append("new")
            assert repairs == [f"{out}: completed the replacement of the final model, cut short while the new "
                               "model was moved in"]
    # Before the marker is in place the old model comes back; from then on the new one is finished.
    assert outcomes == ["old"] * (old_files + 1) + ["new"] * len(NEW_MODEL) + ["new"]


def test_the_next_run_repairs_an_interrupted_swap_before_its_checks(tmp_path, capsys):
    out = make_files(tmp_path / "out", {**OLD_MODEL, **RESULTS})
    aside = make_files(out / f"{output_folder.PREVIOUS_MODEL_TMP}.host-1.abc.tmp", {})
    for name in ("config.json", "model.safetensors"):  # killed while moving the old model aside
        (out / name).replace(aside / name)
    make_files(out / f"{output_folder.FINAL_MODEL_TMP}.host-1.abc.tmp", NEW_MODEL)
    with pytest.raises(cli.InputError, match=r"holds a finished model \(step 30; EM 28.94, F1 35.21\) and no checkpoint"):
        cli.check_run_squad_command(train_command(out, "--resume_from_checkpoint", "latest"))
    assert capsys.readouterr().err == (f"note: {out}: restored the previous final model: its replacement was cut "
                                       "short before the new model was moved in\n")
    assert contents(out) == {**OLD_MODEL, **RESULTS}
    assert sorted(p.name for p in out.iterdir()) == sorted({**OLD_MODEL, **RESULTS})


# --------------------------------------------------------------------------------------------
# The whole story with a real (tiny) model on the demo data
# --------------------------------------------------------------------------------------------


def demo_run(model: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--version_2_with_negative",
            "--do_train", "--do_eval", "--train_file", str(TRAIN), "--predict_file", str(DEV), "--no_cuda",
            "--max_seq_length", "256", "--per_gpu_train_batch_size", "8", "--per_gpu_eval_batch_size", "64",
            "--learning_rate", "1e-3", "--max_steps", "3", "--save_steps", "500", "--logging_steps", "500", *extra]


def model_files(out: Path) -> dict:
    names = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_args.json",
             "training_state.json", "null_score_diff_threshold.json")
    return {name: (out / name).read_bytes() for name in names}


@pytest.mark.slow
def test_the_issue_rerun_into_a_finished_folder(tiny_bert_dir, tmp_path, capsys):
    """30 steps and --save_steps 500 in the issue (3 here): re-run with --resume_from_checkpoint latest, the
    finished model and its results stay and the refusal says what to do; --overwrite_output_dir replaces it."""
    out = tmp_path / "debug_squad"
    assert run_squad.main(demo_run(tiny_bert_dir, out)) == 0
    first, results = model_files(out), (out / "eval_results.json").read_text()
    scores = json.loads(results)["3"]
    capsys.readouterr()

    assert run_squad.main(demo_run(tiny_bert_dir, out, "--resume_from_checkpoint", "latest")) == 2
    assert capsys.readouterr().err == (
        f"error: --output_dir {out} holds a finished model (step 3; EM {scores['exact']:.2f}, F1 {scores['f1']:.2f}) "
        f"and no checkpoint to resume from: {ways(out)}\n")
    assert model_files(out) == first and (out / "eval_results.json").read_text() == results

    assert run_squad.main(demo_run(tiny_bert_dir, out, "--overwrite_output_dir", "--seed", "8")) == 0
    second = model_files(out)
    assert second.keys() == first.keys() and second["model.safetensors"] != first["model.safetensors"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# A refused run leaves nothing behind
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["--max_seq_length 32", "no such model", "too few features for one step"])
def test_a_refused_run_leaves_no_folder_behind(case, tiny_bert_dir, tmp_path, capsys):
    out, cache = tmp_path / "runs" / "first" / "out", tmp_path / "cache" / "features"
    model = tmp_path / "no-model" if case == "no such model" else tiny_bert_dir
    command = ["--model_name_or_path", str(model), "--output_dir", str(out), "--version_2_with_negative",
               "--features_cache_dir", str(cache), "--no_cuda"]
    command += {"--max_seq_length 32": ["--do_eval", "--predict_file", str(DEV), "--max_seq_length", "32"],
                "no such model": ["--do_eval", "--predict_file", str(DEV)],
                "too few features for one step": ["--do_train", "--train_file", str(TRAIN),
                                                  "--per_gpu_train_batch_size", "200",
                                                  "--gradient_accumulation_steps", "4"]}[case]
    assert run_squad.main(command) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert {"--max_seq_length 32": "--max_seq_length (32) must be larger than --max_query_length (64) + 3 special",
            "no such model": f"--model_name_or_path {model}: cannot load a config",
            "too few features for one step": "too few features (302) for one optimizer step"}[case] in err
    assert not (tmp_path / "runs").exists()
    if case == "too few features for one step":  # the features were built: the cache keeps them, complete
        assert [p.suffix for p in cache.iterdir()] == [".npz"]
    else:
        assert not (tmp_path / "cache").exists()


def test_a_refused_run_keeps_an_empty_folder_it_did_not_create(tiny_bert_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    assert run_squad.main(["--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(out), "--do_eval",
                           "--version_2_with_negative", "--predict_file", str(DEV), "--max_seq_length", "32",
                           "--no_cuda"]) == 2
    assert out.is_dir()
