"""Nothing done is lost: a full disk midway through an evaluation's files, two runs racing for a folder, a resume
with changed settings, SIGINT/SIGTERM in each phase, a damaged checkpoint, an unusable feature cache."""

import errno
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

import qa_pipeline
import run_squad
import utils_squad
from cli_helpers import REPO, FullDiskAfterHalf, cli_env, common_flags, small_squad_file, small_v2_file
from squad_internals import atomic_io, checkpoints, cli, folder_lock, output_folder

pytestmark = pytest.mark.slow


def train_flags(squad_dir: Path, tmp_path: Path, steps: int, save_steps: int, questions: int = 120) -> list[str]:
    train = small_v2_file(squad_dir, tmp_path / "train.json", questions=questions)
    return ["--do_train", "--train_file", str(train), "--max_steps", str(steps), "--save_steps", str(save_steps),
            "--logging_steps", "1000"]


def eval_flags(squad_dir: Path, tmp_path: Path, questions: int = 30) -> list[str]:
    dev = small_v2_file(squad_dir, tmp_path / "dev.json", questions=questions)
    return ["--do_eval", "--predict_file", str(dev)]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*.tmp")]


class Run:
    """run_squad.py in a subprocess whose stderr lines are read as they come (to act at a phase's log line)."""

    def __init__(self, args: list[str], **env):
        self.process = subprocess.Popen([sys.executable, str(REPO / "run_squad.py"), *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=cli_env(**env))
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"ended before {text!r}: {''.join(self.seen)[-3000:]}")
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} within {timeout} s")

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        self.process.wait(timeout=timeout)
        while (line := self.lines.get(timeout=10)) is not None:
            self.seen.append(line)
        return self.process.returncode, "".join(self.seen)


# --------------------------------------------------------------------------------------------
# Results written as a set
# --------------------------------------------------------------------------------------------


def disk_full_when_writing(monkeypatch, name_prefix: str) -> None:
    """Every file atomic_io opens for writing whose final name starts with name_prefix hits a full disk halfway."""
    real_open = open

    def opening(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDiskAfterHalf(handle) if "x" in mode and Path(file).name.startswith(name_prefix) else handle

    monkeypatch.setattr(atomic_io, "open", opening, raising=False)


def test_a_full_disk_midway_through_an_evaluation_keeps_the_previous_set(tiny_bert_dir, squad_dir, tmp_path,
                                                                         monkeypatch, capsys):
    out = tmp_path / "out"
    flags = [*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path, 2, 0), *eval_flags(squad_dir, tmp_path)]
    assert run_squad.main(flags) == 0
    before = snapshot(out)
    assert {"predictions_2.json", "nbest_predictions_2.json", "null_odds_2.json", "eval_results.json",
            output_folder.THRESHOLD_FILE} <= set(before)
    again = [*common_flags(out, out), *eval_flags(squad_dir, tmp_path), "--overwrite_output_dir",
             "--null_score_diff_threshold", "-3"]  # other predictions for the same step
    disk_full_when_writing(monkeypatch, "null_odds_")
    capsys.readouterr()
    assert run_squad.main(again) == 1
    assert last_line(capsys.readouterr().err) == (
        f"error: could not write the evaluation results of step 2 to {out} (null_odds_2.json: No space left on "
        "device): the previous results are unchanged")
    assert snapshot(out) == before, "every file of the previous evaluation is as it was"
    assert not temporaries(out)
    monkeypatch.undo()
    assert run_squad.main(again) == 0
    predictions = json.loads((out / "predictions_2.json").read_text())
    odds = json.loads((out / "null_odds_2.json").read_text())
    assert all((predictions[q] == "") == (odds[q] > -3) for q in predictions), "the new set belongs together"
    assert json.loads((out / "eval_results.json").read_text())["2"] != json.loads(before["eval_results.json"])["2"]


# --------------------------------------------------------------------------------------------
# One run owns an output folder
# --------------------------------------------------------------------------------------------


def test_a_second_run_a_resume_and_an_evaluation_into_a_held_folder_are_refused(tiny_bert_dir, squad_dir, tmp_path,
                                                                                monkeypatch, capsys):
    out = tmp_path / "out"
    flags = [*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path, 3000, 20)]
    first = Run(flags)
    try:
        first.wait_for("saved " + str(out / "checkpoint-20"))
        refusal = (f"error: --output_dir {out}: in use by another run (pid {first.process.pid} on "
                   f"{atomic_io.host()}, since ")
        for extra in (["--overwrite_output_dir"], ["--resume_from_checkpoint", "latest"]):
            second = Run([*flags, *extra])
            code, err = second.finish()
            assert code == 2 and last_line(err).startswith(refusal), err[-2000:]
            assert "running: run_squad.py --model_name_or_path" in last_line(err)
        evaluation = Run([*common_flags(out / "checkpoint-20", out), *eval_flags(squad_dir, tmp_path),
                          "--overwrite_output_dir"])
        code, err = evaluation.finish()
        assert code == 2 and last_line(err).startswith(refusal), err[-2000:]
        # The lock itself, where the early check of the command line does not see it:
        monkeypatch.setattr(folder_lock, "held_by", lambda folder: None)
        assert run_squad.main([*flags, "--resume_from_checkpoint", "latest"]) == 2
        assert last_line(capsys.readouterr().err).startswith(refusal)
        assert first.process.poll() is None, "the first run goes on"
    finally:
        first.process.send_signal(signal.SIGTERM)
    code, err = first.finish()
    assert code == 3, err[-2000:]
    assert not (out / folder_lock.LOCK_NAME).exists(), "released when the run ends"


# --------------------------------------------------------------------------------------------
# A resume checks the checkpoint against the run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpointed(tiny_bert_dir, squad_dir, tmp_path_factory):
    """A run of 2 steps with checkpoint-2, and its flags."""
    tmp = tmp_path_factory.mktemp("checkpointed")
    out = tmp / "out"
    flags = [*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp, 2, 2)]
    assert run_squad.main(flags) == 0
    return out, flags, tmp


def config_folder(tiny_bert_dir: Path, target: Path, **changes) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))
    return target


@pytest.mark.parametrize("extra, named", [
    (["--max_seq_length", "128"], "--max_seq_length 192 there, 128 here"),
    (["--doc_stride", "32"], "--doc_stride 64 there, 32 here"),
    (["--per_gpu_train_batch_size", "4", "--seed", "8"], "--per_gpu_train_batch_size 8 there, 4 here; --seed 7 there, 8 here"),
    (["--do_lower_case"], "--do_lower_case false there, true here"),
    (["--learning_rate", "2e-3", "--lr_scheduler_type", "cosine"], "--learning_rate 0.001 there, 0.002 here; "
                                                                    "--lr_scheduler_type \"linear\" there, \"cosine\" here"),
    (["--max_steps", "5"], "--max_steps 2 there, 5 here"),
    (["--packing"], "packed batches (--packing) false there, true here"),
])
def test_a_resume_with_a_changed_setting_is_refused_naming_both_values(checkpointed, capsys, extra, named):
    out, flags, _ = checkpointed
    assert run_squad.main([*flags, *extra, "--resume_from_checkpoint", "latest"]) == 2
    line = last_line(capsys.readouterr().err)
    checkpoint = out / "checkpoint-2"
    assert line == (f"error: --resume_from_checkpoint {checkpoint}: made with other settings than this run's: {named}. "
                    f"Resume with its settings, or start fresh from its weights on purpose: --model_name_or_path "
                    f"{checkpoint} without --resume_from_checkpoint, into a new --output_dir")


def test_a_resume_with_other_data_or_model_config_is_refused(checkpointed, tiny_bert_dir, squad_dir, capsys):
    out, flags, tmp = checkpointed
    changed = small_squad_file(squad_dir / "train-v2.0.json", tmp / "other.json", questions=100)
    other = [*flags[:flags.index("--train_file") + 1], str(changed), *flags[flags.index("--train_file") + 2:]]
    assert run_squad.main([*other, "--resume_from_checkpoint", "latest"]) == 2
    line = last_line(capsys.readouterr().err)
    sha = json.loads((out / "checkpoint-2" / "training_args.json").read_text())["train_file_sha256"]
    assert f"the training data (sha256) {sha[:12]} there, {utils_squad.file_sha256(changed)[:12]} here" in line

    heads = config_folder(tiny_bert_dir, tmp / "heads", num_attention_heads=4)  # the same weight shapes
    assert run_squad.main([*flags, "--config_name", str(heads), "--resume_from_checkpoint", "latest"]) == 2
    assert ": model config num_attention_heads 2 there, 4 here. Resume" in last_line(capsys.readouterr().err)

    wider = config_folder(tiny_bert_dir, tmp / "wider", hidden_size=64)  # other shapes: one line, no load table
    assert run_squad.main([*flags, "--config_name", str(wider), "--resume_from_checkpoint", "latest"]) == 2
    err = capsys.readouterr().err
    assert ": model config hidden_size 32 there, 64 here. Resume" in last_line(err)
    assert "MISMATCH" not in err and "ignore_mismatched_sizes" not in err


def test_auto_find_batch_size_keeps_the_checkpoints_micro_batches_but_not_another_global_batch(checkpointed, capsys):
    out, flags, _ = checkpointed
    assert run_squad.main([*flags, "--auto_find_batch_size", "--per_gpu_train_batch_size", "4",
                           "--gradient_accumulation_steps", "2", "--resume_from_checkpoint", "latest"]) == 0
    assert run_squad.main([*flags, "--auto_find_batch_size", "--per_gpu_train_batch_size", "4",
                           "--resume_from_checkpoint", "latest"]) == 2
    assert ("batch per process (--per_gpu_train_batch_size x --gradient_accumulation_steps) 8 there, 4 here"
            in last_line(capsys.readouterr().err))


def test_starting_fresh_from_a_checkpoints_weights_is_the_documented_way(checkpointed, tmp_path):
    out, flags, _ = checkpointed
    fresh = tmp_path / "fresh"
    command = [*flags, "--max_seq_length", "128", "--model_name_or_path", str(out / "checkpoint-2"),
               "--output_dir", str(fresh)]
    assert run_squad.main(command) == 0
    assert json.loads((fresh / "training_args.json").read_text())["max_seq_length"] == 128


@pytest.mark.parametrize("name", output_folder.RESUME_SETTINGS)
def test_every_compared_setting_is_named_with_both_values(name):
    saved = {n: 1 for n in output_folder.RESUME_SETTINGS}
    label = output_folder.SETTING_NAMES.get(name, f"--{name}")
    assert output_folder.resume_mismatches(saved, {**saved, name: 2}, auto_batch=False) == [f"{label} 1 there, 2 here"]
    assert output_folder.resume_mismatches({k: v for k, v in saved.items() if k != name}, {**saved, name: 2},
                                           auto_batch=False) == [], "a setting an older checkpoint lacks is not compared"


def test_the_length_of_the_run_is_max_steps_when_set_else_the_epochs():
    assert output_folder.resume_mismatches({"max_steps": -1, "num_train_epochs": 2.0},
                                           {"max_steps": -1, "num_train_epochs": 3.0}, False) == [
        "--num_train_epochs 2.0 there, 3.0 here"]
    assert output_folder.resume_mismatches({"max_steps": 100, "num_train_epochs": 2.0},
                                           {"max_steps": 100, "num_train_epochs": 3.0}, False) == []
    assert output_folder.resume_mismatches({"world_size": 8}, {"world_size": 4}, False) == ["processes 8 there, 4 here"]


# --------------------------------------------------------------------------------------------
# Interrupts anywhere
# --------------------------------------------------------------------------------------------


def interrupted_line(name: str, last_good: str = "none") -> str:
    return f"interrupted: {name}: stopped at once, nothing half-written left; last good checkpoint: {last_good}"


def assert_ended_in_one_line(run: Run, sig: int) -> None:
    """The run died of ``sig`` (as the shell reports a signal) after one line saying so, and no traceback."""
    code, err = run.finish()
    assert code == -sig, err[-3000:]
    assert last_line(err) == interrupted_line(signal.Signals(sig).name)
    assert "Traceback" not in err


def test_a_signal_the_run_was_started_ignoring_stays_ignored():
    """A shell's background job (`python run_squad.py ... &`) ignores Ctrl-C; the tool must not take it back."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        previous = cli.install_interrupt_handlers()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.SIGINT not in previous and signal.SIGTERM in previous
        cli.restore_handlers(previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        previous = cli.install_interrupt_handlers()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and signal.SIGINT in previous
        cli.restore_handlers(previous)
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_while_torch_is_imported_is_one_line(tiny_bert_dir, squad_dir, tmp_path):
    out = tmp_path / "out"
    run = Run([*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path, 2, 0)])
    time.sleep(1.5)  # the command line is checked in ~0.1 s; importing torch and transformers takes seconds
    run.process.send_signal(signal.SIGINT)
    code, err = run.finish()
    assert code == -signal.SIGINT, err[-3000:]
    assert err.strip() == "interrupted: SIGINT: stopped at once, nothing half-written left"
    assert not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_data_preparation_is_one_line_and_leaves_nothing(tiny_bert_dir, squad_dir, tmp_path, sig):
    out, cache = tmp_path / "out", tmp_path / "cache"
    train = small_v2_file(squad_dir, tmp_path / "train.json", articles=10, questions=4000)
    run = Run([*common_flags(tiny_bert_dir, out), "--do_train", "--train_file", str(train), "--max_steps", "2"],
              RUN_SQUAD_CACHE=str(cache))
    run.wait_for(f"from {train}")  # read: tokenizer, features and model are next
    run.process.send_signal(sig)
    assert_ended_in_one_line(run, sig)
    assert not out.exists(), "the folder this run made is removed again"
    assert not temporaries(cache)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_evaluation_is_one_line_and_writes_nothing(minilm_path, squad_dir, tmp_path, sig):
    out = tmp_path / "out"
    run = Run([*common_flags(minilm_path, out), *eval_flags(squad_dir, tmp_path, questions=400)])
    run.wait_for("evaluating the model: ")
    run.process.send_signal(sig)
    assert_ended_in_one_line(run, sig)
    assert not out.exists(), "no predictions, no temporaries, and the folder this run made is removed again"


def test_a_second_ctrl_c_during_training_stops_at_once_with_one_line(minilm_path, squad_dir, tmp_path):
    out = tmp_path / "out"
    run = Run([*common_flags(minilm_path, out), *train_flags(squad_dir, tmp_path, 1000, 0)])
    run.wait_for("training: ")
    time.sleep(1.5)  # the loop runs (the stop flag is installed just after that line)
    run.process.send_signal(signal.SIGINT)
    run.wait_for("SIGINT: finishing this step, then writing a checkpoint (Ctrl-C again to stop at once)")
    run.process.send_signal(signal.SIGINT)  # during the step or its checkpoint
    assert_ended_in_one_line(run, signal.SIGINT)
    assert not temporaries(out) and not output_folder.list_checkpoints(out)


def test_ctrl_c_while_the_final_model_is_saved_keeps_the_previous_one(tiny_bert_dir, squad_dir, tmp_path, monkeypatch,
                                                                     capsys):
    out = tmp_path / "out"
    flags = [*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path, 2, 0)]
    assert run_squad.main(flags) == 0
    before = snapshot(out)
    real_write = checkpoints.write_model_folder

    def interrupted_midway(folder, *args):
        real_write(folder, *args)
        signal.raise_signal(signal.SIGINT)  # Ctrl-C once the new weights are written aside

    monkeypatch.setattr(checkpoints, "write_model_folder", interrupted_midway)
    capsys.readouterr()
    assert run_squad.main([*flags, "--overwrite_output_dir", "--learning_rate", "5e-3"]) == 130
    err = capsys.readouterr().err
    assert last_line(err) == interrupted_line("SIGINT")
    assert "Traceback" not in err
    after = snapshot(out)
    for name in ("model.safetensors", "config.json", "training_args.json", "training_state.json"):
        assert after[name] == before[name], name
    assert not temporaries(out)


# --------------------------------------------------------------------------------------------
# A checkpoint that does not load
# --------------------------------------------------------------------------------------------


def cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damaged", ["model.safetensors", output_folder.TRAINER_STATE])
def test_latest_passes_over_a_damaged_newest_checkpoint(tiny_bert_dir, squad_dir, tmp_path, capsys, damaged):
    out = tmp_path / "out"
    flags = [*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path, 4, 2)]
    assert run_squad.main(flags) == 0
    cut(out / "checkpoint-4" / damaged)
    assert run_squad.main([*flags, "--resume_from_checkpoint", str(out / "checkpoint-4")]) == 2
    line = last_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out / 'checkpoint-4' / damaged}: cannot be read, the file is damaged or cut short (")
    assert run_squad.main([*flags, "--resume_from_checkpoint", "latest"]) == 0
    err = capsys.readouterr().err
    assert (f"--resume_from_checkpoint latest: passing over {out / 'checkpoint-4'}, it does not load: "
            f"{out / 'checkpoint-4' / damaged}: cannot be read") in err
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in err
    assert checkpoints.checkpoint_problem(out / "checkpoint-4") is None, "written again by the resumed run"


def test_the_pipeline_names_a_cut_weights_file(tiny_bert_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    cut(model / "model.safetensors")
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "Who?", "context": "Nobody is here."}) + "\n")
    assert qa_pipeline.main([str(model), "--input", str(questions)]) == 2
    assert last_line(capsys.readouterr().err).startswith(
        f"error: {model / 'model.safetensors'}: cannot be read, the file is damaged or cut short (")


# --------------------------------------------------------------------------------------------
# The feature cache degrades
# --------------------------------------------------------------------------------------------


def test_a_file_where_the_cache_folder_should_be_is_warned_about_and_done_without(tiny_bert_dir, squad_dir, tmp_path,
                                                                                 capsys):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    out = tmp_path / "out"
    command = [*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path, 1, 0),
               "--features_cache_dir", str(blocker)]
    assert run_squad.main(command) == 0
    err = capsys.readouterr().err
    assert (f"feature cache {blocker} cannot be used (a file is where the folder should be): features are built "
            "without it") in err
    assert (out / "model.safetensors").is_file() and blocker.read_text() == "not a folder"


def test_a_full_cache_disk_is_warned_about_and_leaves_no_partial_file(tiny_bert_dir, squad_dir, tmp_path, monkeypatch,
                                                                      capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"

    def full(handle, **arrays):
        handle.write(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils_squad.np, "savez", full)
    command = [*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path, 1, 0),
               "--features_cache_dir", str(cache)]
    assert run_squad.main(command) == 0
    assert f"feature cache {cache} cannot be written (No space left on device): going on without it" in \
        capsys.readouterr().err
    assert list(cache.iterdir()) == []
    assert load_file(out / "model.safetensors")
