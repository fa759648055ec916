"""atomic_io: every write reaches its final name by one rename; a failure or a kill leaves the old state."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import FullDiskAfterHalf
from squad_internals import atomic_io, decoding


def test_write_json_atomic(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("old")
    atomic_io.write_json_atomic(path, {"a": [1, "é"]})
    assert path.read_text() == json.dumps({"a": [1, "é"]}, indent=4) + "\n"
    with pytest.raises(TypeError):
        atomic_io.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": [1, "é"]}   # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]   # no temporary left behind


def test_write_text_atomic_error_names_the_path(tmp_path):
    folder = tmp_path / "adir"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as err:
        atomic_io.write_text_atomic(folder, "x")
    assert err.value.filename == str(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["adir"] and not any(folder.iterdir())


def test_the_scorer_writes_through_atomic_io():

    assert decoding.write_json_atomic is atomic_io.write_json_atomic


def test_a_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    final = tmp_path / "checkpoint-2"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_io.folder_atomic(final) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("disk full")
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"], "no temporary left behind"
    with atomic_io.folder_atomic(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]


def test_temporary_names_name_their_writer(tmp_path):
    tmp = atomic_io.temporary_path(tmp_path / "predictions_12.json")
    assert tmp.parent == tmp_path and tmp.name.startswith("predictions_12.json.") and tmp.suffix == ".tmp"
    assert atomic_io.writer_of(tmp) == (atomic_io.host(), os.getpid())
    assert atomic_io.writer_of(tmp_path / "notes.tmp") is None


def test_an_owned_folder_drops_every_temporary_a_shared_one_only_orphans(tmp_path):
    recent = atomic_io.temporary_path(tmp_path / "checkpoint-4")
    recent.mkdir()  # a folder, written a moment ago by this (live) process
    old_file = tmp_path / "predictions_4.json.otherhost-12.ab.tmp"
    old_file.write_text("partial")
    then = time.time() - atomic_io.ORPHAN_TMP_AGE_S - 60
    os.utime(old_file, (then, then))
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's")
    assert atomic_io.remove_stale_temporaries(tmp_path, "*.json") == 1  # shared: only the old one
    assert recent.exists() and not old_file.exists()
    assert atomic_io.remove_stale_temporaries(tmp_path, "checkpoint-*", owned=True) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("exc, line", [(OSError("disk full\nerrno 28"), "disk full"), (RuntimeError("  \n "), "RuntimeError"),
                                       (ValueError(), "ValueError")])
def test_first_line_of_any_exception(exc, line):
    assert atomic_io.first_line(exc) == line


def test_a_file_set_appears_whole_or_not_at_all(tmp_path):
    for name in ("predictions_3.json", "nbest_predictions_3.json", "eval_results.json"):
        (tmp_path / name).write_text(f"old {name}")
    with pytest.raises(OSError) as err, atomic_io.file_set() as files:
        files.write_json(tmp_path / "nbest_predictions_3.json", {"q": ["new"]})
        files.write(tmp_path / "predictions_3.json", lambda handle: FullDiskAfterHalf(handle).write("new predictions"))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "predictions_3.json")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        name: f"old {name}" for name in ("predictions_3.json", "nbest_predictions_3.json", "eval_results.json")}
    with atomic_io.file_set() as files:
        files.write_json(tmp_path / "nbest_predictions_3.json", {"q": ["new"]})
        files.write_text(tmp_path / "predictions_3.json", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_results.json", "nbest_predictions_3.json",
                                                          "predictions_3.json"]
    assert (tmp_path / "predictions_3.json").read_text() == "new"


def test_a_file_set_is_renamed_in_the_order_staged_after_every_file_is_written(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((Path(dst).name, sorted(p.name for p in tmp_path.glob("*.tmp"))))
        real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, "replace", replace)
    with atomic_io.file_set() as files:
        for name in ("b.json", "a.json", "eval_results.json"):
            files.write_text(tmp_path / name, name)
    assert [name for name, _ in seen] == ["b.json", "a.json", "eval_results.json"]
    assert len(seen[0][1]) == 3, "every temporary is written before the first rename"


def test_an_interrupt_while_a_set_is_written_leaves_the_old_files(tmp_path):
    (tmp_path / "predictions_3.json").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_io.file_set() as files:
        files.write_text(tmp_path / "predictions_3.json", "new")
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while the next file would be written
    assert [p.name for p in tmp_path.iterdir()] == ["predictions_3.json"]
    assert (tmp_path / "predictions_3.json").read_text() == "old"


def test_ctrl_c_waits_until_the_renames_are_done():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with atomic_io.signals_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("renames")
    assert done == ["renames"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_owned_folder_keeps_the_temporaries_of_another_live_process(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f"checkpoint-4.{atomic_io.host()}-{other.pid}.abc.tmp"
        live.mkdir()  # another run's checkpoint in progress
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        orphan = tmp_path / f"checkpoint-2.{atomic_io.host()}-{int(dead.stdout)}.abc.tmp"
        orphan.mkdir()  # a killed run's
        assert atomic_io.remove_stale_temporaries(tmp_path, "checkpoint-*", owned=True) == 1
        assert live.exists() and not orphan.exists()
    finally:
        other.kill()
        other.wait()
