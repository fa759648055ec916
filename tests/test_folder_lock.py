"""One run owns an output folder: its lock is refused to a second holder naming the first, taken over from a
dead one with a warning, released on every exit, and a folder made only for it is removed again."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cli_helpers import REPO
from squad_internals import atomic_io, folder_lock

HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from squad_internals import folder_lock
    folder_lock.hold(__import__("pathlib").Path(sys.argv[1]), ["--output_dir", sys.argv[1]])
    print("held", flush=True)
    time.sleep(120)
""")


def holder_process(folder) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(REPO)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    holder = holder_process(out)
    try:
        with pytest.raises(folder_lock.FolderLocked) as refused:
            folder_lock.FolderLock(out, "run_squad.py --second").acquire()
        message = str(refused.value)
        assert message.startswith(f"--output_dir {out}: in use by another run (pid {holder.pid} on {atomic_io.host()}, "
                                   "since ")
        assert message.endswith(f"running: -c --output_dir {out}); wait for it to end or choose another --output_dir")
        assert folder_lock.held_by(out).pid == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    holder = holder_process(out)
    holder.send_signal(signal.SIGKILL)  # no chance to release it
    holder.wait()
    assert (out / folder_lock.LOCK_NAME).is_file() and folder_lock.held_by(out) is None
    lock = folder_lock.FolderLock(out, "run_squad.py --next")
    lock.acquire()
    assert f"took over the lock of a run that ended without releasing it (pid {holder.pid} on" in caplog.text
    record = json.loads((out / folder_lock.LOCK_NAME).read_text())
    assert (record["pid"], record["command"]) == (os.getpid(), "run_squad.py --next")
    lock.release()
    assert sorted(p.name for p in out.iterdir()) == []


def test_release_removes_the_lock_and_a_folder_made_only_for_it(tmp_path):
    made = tmp_path / "made"
    lock = folder_lock.FolderLock(made, "x")
    lock.acquire()
    assert [p.name for p in made.iterdir()] == [folder_lock.LOCK_NAME]
    lock.release()
    assert not made.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    lock = folder_lock.FolderLock(kept, "x")
    lock.acquire()
    (kept / "predictions_2.json").write_text("{}")
    lock.release()
    assert [p.name for p in kept.iterdir()] == ["predictions_2.json"]
    again = folder_lock.FolderLock(kept, "y")
    again.acquire()  # free again
    again.release()


def test_without_flock_the_record_decides(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(folder_lock.fcntl, "flock", no_flock)
    monkeypatch.setattr(folder_lock, "RETRY_S", 0.0)
    out = tmp_path / "out"
    first = folder_lock.FolderLock(out, "first")
    first.acquire()
    with pytest.raises(folder_lock.FolderLocked, match=f"pid {os.getpid()} on"):
        folder_lock.FolderLock(out, "second").acquire()  # this process is alive
    first.release()
    out.mkdir(exist_ok=True)
    (out / folder_lock.LOCK_NAME).write_text(json.dumps(
        {"host": "otherhost", "pid": 1, "since": "then", "command": "run_squad.py"}))
    with pytest.raises(folder_lock.FolderLocked, match="delete .*run_squad.lock if that run is over"):
        folder_lock.FolderLock(out, "third").acquire()
