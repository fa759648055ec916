"""One run owns an output folder: a lock file in it, taken at start by the process that writes there, released
on any exit; a second run (or a resume) into a folder another live run holds is refused, naming the holder.

Why a module of its own: two runs writing one --output_dir end with every file the second run's and nothing
said, and one run's stale-temporary cleaner would delete the other's checkpoint in progress. The lock is how a
run knows the folder is its own. cli.py asks (without torch) whether a folder is held, before anything else
is checked; run_squad.py takes it on rank 0 (the only rank that writes there). Standard library only.

The lock is ``fcntl.flock`` on ``.run_squad.lock`` (the kernel releases it when the process dies, even by kill
-9; NFS v4 carries it between machines), and the file holds who took it: host, pid, since when, the command.
A lock file left by a dead holder (kill -9, power loss) is taken over with a warning naming it. Where the
file system has no flock (some cluster file systems), the record alone decides: a holder on this host is
alive when its pid is; one on another host is assumed alive, and the refusal says how to clear it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from squad_internals import atomic_io

logger = logging.getLogger(__name__)

LOCK_NAME = ".run_squad.lock"
# flock unsupported by the file system (Lustre without -o flock, some FUSE mounts): the record decides.
NO_FLOCK_ERRNOS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
ATTEMPTS = 20  # a lock being released (its file unlinked) or a holder that is still writing its record
RETRY_S = 0.05


class FolderLocked(Exception):
    """Another live run holds the output folder (a usage error: exit code 2)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a folder's lock, as its lock file records it."""

    host: str
    pid: int
    since: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.since}, running: {self.command}"


def read_holder(path: Path) -> Holder | None:
    """The record in a lock file; None when absent, empty (its holder is writing it) or unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return Holder(str(record["host"]), int(record["pid"]), str(record["since"]), str(record["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def refusal(folder: Path, holder: Holder | None) -> FolderLocked:
    who = holder.describe() if holder is not None else "a run whose record is not written yet"
    return FolderLocked(f"--output_dir {folder}: in use by another run ({who}); wait for it to end or choose "
                        f"another --output_dir")


def held_by(folder: Path) -> Holder | None:
    """The live run holding ``folder``, if any, without taking the lock (the command line's early check)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # no lock file (or none we may read): nobody holds it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while someone holds it exclusively
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            return read_holder(path) or Holder("?", 0, "?", "?")
        except OSError as exc:
            if exc.errno not in NO_FLOCK_ERRNOS:
                raise
            holder = read_holder(path)
            return holder if holder is not None and _record_says_alive(holder) else None
    finally:
        os.close(fd)


def _record_says_alive(holder: Holder) -> bool:
    """Without flock: a holder on this host is alive when its pid is; another host's cannot be checked."""
    return holder.host != atomic_io.host() or atomic_io.pid_alive(holder.pid)


def this_command(argv: list[str] | None) -> str:
    words = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "run_squad.py",
             *(sys.argv[1:] if argv is None else argv)]
    return " ".join(shlex.quote(w) for w in words)


class FolderLock:
    """The lock of one output folder, held by this process from acquire() to release()."""

    def __init__(self, folder: Path, command: str) -> None:
        self.folder, self.path, self.command = Path(folder), Path(folder) / LOCK_NAME, command
        self.fd: int | None = None
        self.created_folder = False
        self.flock = True

    def acquire(self) -> None:
        """Take the lock or raise FolderLocked naming the live holder; a dead holder's is taken over."""
        if not self.folder.exists():
            atomic_io.make_folder(self.folder)  # its parents too are remembered, and removed by a refused run
            self.created_folder = True
        for attempt in range(ATTEMPTS):
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:
                    continue  # released (unlinked) meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if attempt == ATTEMPTS - 1:
                    self._give_up()
                    raise refusal(self.folder, read_holder(self.path)) from None
                time.sleep(RETRY_S)
                continue
            except OSError as exc:
                if exc.errno not in NO_FLOCK_ERRNOS:
                    os.close(fd)
                    raise
                self.flock = False
                if created:  # created exclusively: ours, by the record alone
                    self.fd = fd
                    self._record()
                    return
                os.close(fd)
                self._acquire_by_record()
                return
            if not self._still_the_lock_file(fd):
                os.close(fd)  # its holder released it (unlinked the file) while we waited: take the new one
                continue
            self.fd = fd
            self._take_over_and_record()
            return
        self._give_up()
        raise refusal(self.folder, read_holder(self.path))

    def _still_the_lock_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _take_over_and_record(self) -> None:
        previous = read_holder(self.path)
        if previous is not None:
            _warn_taken_over(self.path, previous)
        self._record()

    def _record(self) -> None:
        record = json.dumps({"host": atomic_io.host(), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (record + "\n").encode("utf-8"), 0)
        os.fsync(self.fd)

    def _acquire_by_record(self) -> None:
        """No flock here: an exclusive create, or the take-over of a record whose holder is dead."""
        for _ in range(ATTEMPTS):
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self._record()
                return
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is None or _record_says_alive(holder):
                    time.sleep(RETRY_S)  # a record being written, or a live holder
                    continue
                _warn_taken_over(self.path, holder)
                self.path.unlink(missing_ok=True)
        self._give_up()
        holder = read_holder(self.path)
        problem = refusal(self.folder, holder)
        if holder is not None and holder.host != atomic_io.host():
            problem = FolderLocked(f"{problem}; this file system has no flock, so a run on another host cannot "
                                   f"be checked: delete {self.path} if that run is over")
        raise problem

    def _give_up(self) -> None:
        """Leave the folder as found: one this process created for the lock is removed again (if empty)."""
        if self.created_folder:
            try:
                self.folder.rmdir()
            except OSError:
                pass  # another run wrote there meanwhile: it is theirs

    def release(self) -> None:
        """Remove the lock file (ours: checked by inode) and free the lock; a folder this process created only
        for the lock, and left empty, is removed too (a refused run leaves nothing)."""
        if self.fd is None:
            return
        try:
            if not self.flock or self._still_the_lock_file(self.fd):
                self.path.unlink(missing_ok=True)  # before the lock is freed: a waiting run takes a new file
        finally:
            os.close(self.fd)
            self.fd = None
        self._give_up()


def _warn_taken_over(path: Path, holder: Holder) -> None:
    logger.warning("%s: took over the lock of a run that ended without releasing it (%s)", path, holder.describe())


_HELD: list[FolderLock] = []


def hold(folder: Path, argv: list[str] | None = None) -> FolderLock:
    """Take ``folder``'s lock for the rest of this process's run (release_held() gives it back)."""
    lock = FolderLock(folder, this_command(argv))
    lock.acquire()
    _HELD.append(lock)
    return lock


def holds(folder: Path) -> bool:
    """Whether this process holds ``folder``'s lock already (a second flock of it here would be refused)."""
    return any(lock.folder.resolve() == Path(folder).resolve() for lock in _HELD)


def release_held() -> None:
    """Give back every lock this process holds (on any exit: main's finally)."""
    while _HELD:
        _HELD.pop().release()
