"""Interruptions, numeric faults, failed writes and lost workers never cost a run its work."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import run_squad
from cli_helpers import REPO, common_flags, free_port, small_v2_file
from squad_internals import checkpoints, output_folder, qa_model

pytestmark = pytest.mark.slow


def training_flags(squad_dir: Path, tmp_path: Path, steps: int, save_steps: int) -> list[str]:
    train_file = small_v2_file(squad_dir, tmp_path / "train.json", questions=120)
    dev_file = small_v2_file(squad_dir, tmp_path / "dev.json", questions=30)
    return ["--do_train", "--do_eval", "--train_file", str(train_file), "--predict_file", str(dev_file),
            "--max_steps", str(steps), "--save_steps", str(save_steps), "--logging_steps", "1000"]


def start(args: list[str], torchrun: int = 0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    prefix = [sys.executable]
    if torchrun:
        prefix += ["-m", "torch.distributed.run", "--nproc_per_node", str(torchrun), "--master_port",
                   str(free_port()), "--max-restarts", "1"]
    return subprocess.Popen([*prefix, str(REPO / "run_squad.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"run ended before {path} appeared: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert np.array_equal(wa[key], wb[key]), key


def test_sigterm_checkpoints_and_resumes_to_the_unbroken_result(tiny_bert_dir, squad_dir, tmp_path):
    flags = training_flags(squad_dir, tmp_path, steps=300, save_steps=20)
    # Every run in a subprocess with the same thread count: float sums depend on it.
    unbroken = tmp_path / "unbroken"
    finish(start([*common_flags(tiny_bert_dir, unbroken), *flags]))

    broken = tmp_path / "broken"
    process = start([*common_flags(tiny_bert_dir, broken), *flags])
    wait_for(broken / "checkpoint-20" / output_folder.TRAINER_STATE, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 3, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: signal 15: stopped at step ")
    stopped = int(last.split("stopped at step ")[1].split(",")[0])
    assert 20 <= stopped < 300
    assert (broken / f"checkpoint-{stopped}" / output_folder.TRAINER_STATE).is_file()

    finish(start([*common_flags(tiny_bert_dir, broken), *flags, "--resume_from_checkpoint", "latest"]))
    same_weights(unbroken, broken)
    assert (unbroken / "predictions_300.json").read_text() == (broken / "predictions_300.json").read_text()


def test_kill_9_at_any_moment_leaves_loadable_checkpoints(tiny_bert_dir, squad_dir, tmp_path):
    flags = training_flags(squad_dir, tmp_path, steps=400, save_steps=1)  # long enough to be killed midway
    out = tmp_path / "out"
    process = start([*common_flags(tiny_bert_dir, out), *flags])
    wait_for(out / "checkpoint-3" / output_folder.TRAINER_STATE, process)
    time.sleep(random.uniform(0.0, 0.5))  # somewhere inside a later save, most likely
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    found = output_folder.list_checkpoints(out)
    assert found, "at least checkpoint-3 survives"
    for checkpoint in found:
        state = checkpoints.load_trainer_state(checkpoint)
        assert state["position"]["global_step"] == output_folder.checkpoint_step(checkpoint)
        load_file(checkpoint / "model.safetensors")
    # And the run goes on from the newest one (the same run: a resume refuses another --max_steps): it saves the
    # next step's checkpoint, then a SIGTERM stops it.
    resumed = start([*common_flags(tiny_bert_dir, out), *flags, "--resume_from_checkpoint", "latest"])
    wait_for(out / f"checkpoint-{output_folder.checkpoint_step(found[-1]) + 1}" / output_folder.TRAINER_STATE, resumed)
    resumed.send_signal(signal.SIGTERM)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 3, err[-2000:]
    assert not list(out.glob("*.tmp")), "half-written checkpoints are cleaned up"


class NanLoss(torch.nn.Module):
    """Wraps a model and turns the loss of chosen training calls into NaN (a numeric fault)."""

    def __init__(self, module, bad_calls):
        super().__init__()
        self.module = module  # `module`, like DDP, so checkpoints save the real model
        self.config = module.config
        self.bad_calls = bad_calls
        self.calls = 0

    def forward(self, **inputs):
        out = self.module(**inputs)
        if out.loss is not None:
            self.calls += 1
            if self.bad_calls is None or self.calls in self.bad_calls:
                out.loss = out.loss * float("nan")
        return out


def with_nan_loss(monkeypatch, bad_calls):
    original = qa_model.load_model

    def load(*args, **kwargs):
        return NanLoss(original(*args, **kwargs), bad_calls)

    monkeypatch.setattr(qa_model, "load_model", load)


def test_a_nan_step_is_skipped_and_counted(tiny_bert_dir, squad_dir, tmp_path, monkeypatch, capsys):
    with_nan_loss(monkeypatch, {3})
    out = tmp_path / "out"
    flags = training_flags(squad_dir, tmp_path, steps=6, save_steps=0)
    assert run_squad.main([*common_flags(tiny_bert_dir, out), *flags, "--logging_steps", "6"]) == 0
    err = capsys.readouterr().err
    assert "step 3: non-finite loss or gradient, update skipped (1 in a row)" in err
    assert "1 non-finite steps skipped" in err  # and counted in the step-6 log line
    weights = load_file(out / "model.safetensors")
    assert all(np.isfinite(w).all() for w in weights.values())


def test_fp16_overflows_are_skipped_by_the_scaler_and_counted(tiny_bert_dir, squad_dir, tmp_path, monkeypatch, capsys):
    """torch.amp fp16 with a GradScaler (on CPU here): the NaN step and the scaler's own calibration
    overflows skip their updates, lower the scale, and are counted; the weights stay finite. The first training
    call is the first step tried on the fp16 path before training (path_fallback), so step 3 is the 4th call."""
    with_nan_loss(monkeypatch, {4})
    out = tmp_path / "out"
    flags = training_flags(squad_dir, tmp_path, steps=6, save_steps=0)
    assert run_squad.main([*common_flags(tiny_bert_dir, out, "--fp16"), *flags, "--logging_steps", "6"]) == 0
    err = capsys.readouterr().err
    assert "step 3: non-finite loss or gradient, update skipped (" in err
    assert "fp16 loss scale lowered to " in err
    assert "non-finite steps skipped" in err
    weights = load_file(out / "model.safetensors")
    assert all(np.isfinite(w).all() for w in weights.values())


def test_a_persistent_nan_stops_the_run_naming_the_step(tiny_bert_dir, squad_dir, tmp_path, monkeypatch, capsys):
    with_nan_loss(monkeypatch, set(range(4, 100)))
    out = tmp_path / "out"
    flags = training_flags(squad_dir, tmp_path, steps=50, save_steps=2)
    code = run_squad.main([*common_flags(tiny_bert_dir, out), *flags, "--max_nonfinite_steps", "3"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: 3 consecutive non-finite steps ending at step 6; last good checkpoint: "
                   f"{out / 'checkpoint-4'}")


def test_a_failed_checkpoint_write_keeps_the_previous_one(tiny_bert_dir, squad_dir, tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = {"n": 0}

    def disk_full_on_second_checkpoint(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # what torch.save raises when the disk fills: a RuntimeError wrapping the OSError
            try:
                raise OSError(28, "No space left on device")
            except OSError as exc:
                raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed") from exc
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", disk_full_on_second_checkpoint)
    out = tmp_path / "out"
    flags = training_flags(squad_dir, tmp_path, steps=6, save_steps=2)
    code = run_squad.main([*common_flags(tiny_bert_dir, out), *flags])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: could not write checkpoint {out / 'checkpoint-4'} (No space left on device); "
                   f"last good checkpoint: {out / 'checkpoint-2'}")
    assert [p.name for p in output_folder.list_checkpoints(out)] == ["checkpoint-2"]
    assert not list(out.glob("*.tmp"))
    checkpoints.load_trainer_state(out / "checkpoint-2")


def test_save_total_limit_keeps_the_newest_and_the_resumed_one(tiny_bert_dir, squad_dir, tmp_path):
    out, stopped = tmp_path / "out", tmp_path / "stopped"
    flags = training_flags(squad_dir, tmp_path, steps=9, save_steps=1)
    assert run_squad.main([*common_flags(tiny_bert_dir, out), *flags, "--save_total_limit", "2"]) == 0
    assert [p.name for p in output_folder.list_checkpoints(out)] == ["checkpoint-8", "checkpoint-9"]
    # A run that kept every checkpoint and stopped after step 5 (a resume must keep the length of the run, so
    # the later ones are removed), resumed from step 5 with a limit of 1: 6 to 8 are pruned, 5 is protected.
    assert run_squad.main([*common_flags(tiny_bert_dir, stopped), *flags]) == 0
    for step in range(6, 10):
        shutil.rmtree(stopped / f"checkpoint-{step}")
    more = [*flags, "--save_total_limit", "1", "--resume_from_checkpoint", str(stopped / "checkpoint-5")]
    assert run_squad.main([*common_flags(tiny_bert_dir, stopped), *more]) == 0
    assert [p.name for p in output_folder.list_checkpoints(stopped)] == ["checkpoint-5", "checkpoint-9"]


def test_torchrun_restarts_a_lost_worker_and_finishes_like_an_unbroken_run(tiny_bert_dir, squad_dir, tmp_path):
    flags = training_flags(squad_dir, tmp_path, steps=200, save_steps=10)
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    finish(start([*common_flags(tiny_bert_dir, unbroken), *flags], torchrun=2))

    process = start([*common_flags(tiny_bert_dir, broken), *flags], torchrun=2)
    wait_for(broken / "checkpoint-20" / output_folder.TRAINER_STATE, process)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[1]), signal.SIGKILL)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    assert "resumed from" in err
    same_weights(unbroken, broken)
    name = "predictions_200.json"
    assert json.loads((unbroken / name).read_text()) == json.loads((broken / name).read_text())


def test_a_real_write_failure_stops_cleanly_with_one_line(tiny_bert_dir, squad_dir, tmp_path):
    """A file-size limit makes the kernel refuse the optimizer state (EFBIG) the way a full disk would."""
    import resource

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the write error, not the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (6_000_000, 6_000_000))  # model 3.9 MB, optimizer 7.8 MB

    out = tmp_path / "out"
    flags = training_flags(squad_dir, tmp_path, steps=4, save_steps=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(REPO / "run_squad.py"), *common_flags(tiny_bert_dir, out), *flags],
                          capture_output=True, text=True, env=env, preexec_fn=limit_file_size, timeout=600)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"error: could not write checkpoint {out / 'checkpoint-2'} (File too large); "
                    "last good checkpoint: none")
    assert "Traceback" not in done.stderr
    assert not list(out.glob("*.tmp")) and not output_folder.list_checkpoints(out)


def test_a_fresh_run_replaces_an_earlier_runs_checkpoint_of_the_same_step(tiny_bert_dir, squad_dir, tmp_path):
    out = tmp_path / "out"
    flags = training_flags(squad_dir, tmp_path, steps=2, save_steps=2)
    assert run_squad.main([*common_flags(tiny_bert_dir, out), *flags]) == 0
    first = load_file(out / "checkpoint-2" / "model.safetensors")
    again = [*common_flags(tiny_bert_dir, out), *flags, "--learning_rate", "5e-3", "--overwrite_output_dir"]
    assert run_squad.main(again) == 0
    second = load_file(out / "checkpoint-2" / "model.safetensors")
    final = load_file(out / "model.safetensors")
    assert all(np.array_equal(second[k], final[k]) for k in final), "checkpoint-2 holds this run's weights"
    assert any(not np.array_equal(first[k], second[k]) for k in first)
    assert json.loads((out / "checkpoint-2" / "training_args.json").read_text())["learning_rate"] == 5e-3


def test_a_checkpoint_holding_code_is_refused(tiny_bert_dir, squad_dir, tmp_path, capsys):
    out = tmp_path / "out"
    flags = training_flags(squad_dir, tmp_path, steps=2, save_steps=2)
    assert run_squad.main([*common_flags(tiny_bert_dir, out), *flags]) == 0
    marker = tmp_path / "code-ran"
    torch.save({"position": Exploit(str(marker))}, out / "checkpoint-2" / output_folder.TRAINER_STATE)
    code = run_squad.main([*common_flags(tiny_bert_dir, out), *flags[:-4], "--max_steps", "4", "--save_steps", "0",
                           "--resume_from_checkpoint", str(out / "checkpoint-2")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith(f"error: {out / 'checkpoint-2' / output_folder.TRAINER_STATE}: refused to load")
    assert not marker.exists()


class Exploit:
    """Unpickling this runs code: what a malicious checkpoint would carry."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
