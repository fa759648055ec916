"""Nothing done is lost: a full disk midway through an evaluation's files, two runs racing for a folder, a resume
with changed settings, SIGINT/SIGTERM in each phase, a damaged checkpoint, an unusable feature cache."""

import errno
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import atomic_io
import folder_lock
import output_folder
import run_squad
from cli_helpers import REPO, common_flags, small_v2_file

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
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
        self.process = subprocess.Popen([sys.executable, str(REPO / "run_squad.py"), *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=environment)
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


class FullDiskAfterHalf:
    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        self.handle.write(data[:len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


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
