"""Atomic writes: every file and folder the project writes reaches its final name by one rename.

Why a module of its own: the scorer (squad_metrics.py, no torch), the feature cache (utils_squad.py) and
the checkpoints (checkpoints.py) all write files that a kill must never leave half-written. They share one
rule for temporary names and one cleaner of the temporaries a killed run leaves behind, so this is the only
module that renames anything into place. Standard library only.

Temporary names are ``<final name>.<host>-<pid>.<random>.tmp`` beside the final path, so a cleaner can tell
a live writer's temporary from an orphan, even in a folder shared by several machines.

A set of files renamed in together (an evaluation's results, a checkpoint rewritten at the same step) is
made whole for every reader by a journal: once every new file is complete on disk, a record naming each of
them (where it waits, where it goes, its size) is written beside them, and only then are they renamed in.
A kill before the journal is complete leaves the old set untouched (the temporaries are dropped); a kill
after it is rolled forward by finish_journals, which every reader of the folder runs first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# A temporary not written to for this long belongs to a run that was killed (in a shared folder, where
# the writer may run on another machine, age is all there is to tell).
ORPHAN_TMP_AGE_S = 3600


def host() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_") or "host"  # the name is split on . and -


def first_line(exc: BaseException) -> str:
    """An exception's first line (its type when it has no message), for the project's one-line errors. Here
    because every module that reports a failure already depends on this one, which imports no torch."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# Test hook (never set in use): a positive N makes this process kill itself with SIGKILL just before its N-th
# step of a commit (each rename, and each journal written), so that tests can stop a writer at every instant
# a set is between two states.
KILL_AT_ENV = "RUN_SQUAD_TEST_KILL_AT"
_steps_done = [0]  # the hook's count (the only state it keeps)


def _kill_point() -> None:
    """The test hook's count of one step (a no-op unless its variable is set)."""
    kill_at = int(os.environ.get(KILL_AT_ENV, "0") or 0)
    if kill_at > 0:
        _steps_done[0] += 1
        if _steps_done[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace, through which every rename of this module goes (the test hook counts them)."""
    _kill_point()
    os.replace(src, dst)


def temporary_path(final: str | os.PathLike) -> Path:
    """Where to write ``final`` before renaming it into place: same folder, writer named."""
    final = Path(final)
    return final.parent / f"{final.name}.{host()}-{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"


def writer_of(tmp: Path, suffix: str = "tmp") -> tuple[str, int] | None:
    """(host, pid) of a temporary named by temporary_path (or a journal: suffix "json"), else None (an older
    naming, or not ours)."""
    parts = tmp.name.rsplit(".", 3)
    if len(parts) != 4 or parts[3] != suffix:
        return None
    name, _, pid = parts[1].rpartition("-")
    return (name, int(pid)) if name and pid.isdigit() else None


class PartlyReplaced(OSError):
    """A set's renames failed after some of its files were in place (``replaced``): the folder holds part of
    the new set beside the rest of the previous one."""

    def __init__(self, errno: int, strerror: str, filename: str, replaced: list[Path]):
        super().__init__(errno, strerror, filename)
        self.replaced = replaced


def write_file_atomic(path: str | os.PathLike, write: Callable[[IO], Any], binary: bool = False) -> None:
    """Run ``write(file)`` on a temporary beside ``path``, flush it to disk, then rename it over ``path``.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact. The
    temporary is opened normally (not via mkstemp) so the result gets umask permissions. An OSError about
    the temporary is re-raised naming ``path``: the user never chose the temporary name.
    """
    path = os.fspath(path)
    tmp = os.fspath(temporary_path(path))
    with _removed_on_failure(tmp, path, lambda exc: exc.filename == tmp):
        _write_new(tmp, write, binary, sync=True)
        rename(tmp, path)


def _write_new(tmp: str | os.PathLike, write: Callable[[IO], Any], binary: bool, sync: bool) -> None:
    """Create ``tmp`` (it must not exist) and run ``write(file)`` on it; ``sync``: flush it to disk too."""
    with open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8") as handle:
        write(handle)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


@contextmanager
def _removed_on_failure(tmp: str | os.PathLike, final: str | os.PathLike,
                        about_tmp: Callable[[OSError], bool]) -> Iterator[None]:
    """Remove ``tmp`` when the block raises; an OSError ``about_tmp`` is re-raised naming ``final``."""
    try:
        yield
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and about_tmp(exc):
            raise OSError(exc.errno, exc.strerror, os.fspath(final)) from exc
        raise


def _json_text(obj: Any, indent: int | None) -> str:
    """json.dumps(obj, indent=indent) plus a newline (the classic prediction file layout)."""
    return json.dumps(obj, indent=indent) + "\n"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_file_atomic(path, lambda handle: handle.write(text))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 4) -> None:
    """json.dumps(obj, indent=indent) plus a newline (the classic prediction file layout), atomically."""
    write_text_atomic(path, _json_text(obj, indent))


def fsync_files(folder: Path) -> None:
    """Flush every file under ``folder`` to disk, so that a folder complete under its final name after a
    crash of the machine (not only of the process) holds complete files."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then act as they would have.

    For the renames that put a set of complete files in place: a few system calls, which a Ctrl-C must not
    split into half an old set and half a new one. Python runs signal handlers in the main thread only, so
    only there are they swapped; elsewhere the block runs as is (no handler can interrupt it there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)  # delivered now, to the handler that was in place


class FileSet:
    """Files that belong together (the predictions, n-best, null odds, scores and threshold of one evaluation),
    written aside and then renamed in together: `stage` gives each final path its temporary beside it (same
    folder, so same file system: the rename is atomic), `commit` flushes them all to disk and only then
    renames them in, in the order staged, with SIGINT/SIGTERM held back; `discard` removes the temporaries.

    What "together" means: a failed or interrupted write (a full disk, Ctrl-C, an exception) happens before
    any rename, so every earlier file is unchanged and no temporary is left. Once everything is written and
    flushed, the set's journal is written in the folder of the last staged file, then the renames run; a
    crash of the process or machine between two of them (kill -9, power loss) leaves part of the new set
    beside part of the old until the next reader rolls it forward (finish_journals). Stage last the file
    that marks the set complete (eval_results.json), in the folder its readers open.
    """

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def stage(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        if any(f == final for _, f in self.staged):
            raise ValueError(f"{final} is staged twice in one set")
        tmp = temporary_path(final)
        self.staged.append((tmp, final))
        return tmp

    def write(self, final: str | os.PathLike, write: Callable[[IO], Any], binary: bool = False) -> Path:
        """Stage ``final`` and run ``write(file)`` on its temporary; an OSError names ``final``."""
        return self.write_path(final, lambda tmp: _write_new(tmp, write, binary, sync=False))  # commit syncs

    def write_path(self, final: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
        """Stage ``final`` and run ``write(temporary path)`` (a writer that opens the file itself); a failed
        write leaves nothing staged for ``final`` and raises, an OSError naming ``final``."""
        tmp = self.stage(final)
        try:
            with _removed_on_failure(tmp, str(final), lambda exc: exc.filename is None
                                     or str(exc.filename).startswith(str(tmp))):
                write(tmp)
        except BaseException:
            self.staged.pop()  # not part of the set: a caller may go on without it
            raise
        return tmp

    def write_text(self, final: str | os.PathLike, text: str) -> Path:
        return self.write(final, lambda handle: handle.write(text))

    def write_json(self, final: str | os.PathLike, obj: Any, indent: int | None = 4) -> Path:
        """json.dumps(obj, indent=indent) plus a newline, as write_json_atomic."""
        return self.write_text(final, _json_text(obj, indent))

    def commit(self) -> list[Path]:
        """Flush every temporary, write the set's journal, then rename them all in; returns the final paths.
        A rename that fails after others succeeded (PartlyReplaced) leaves the journal and the remaining
        temporaries, so that the next reader of the folder finishes the set (finish_journals)."""
        for tmp, final in self.staged:
            try:
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(final)) from exc
        if not self.staged:
            return []
        folder = self.staged[-1][1].parent  # the folder of the file that marks the set complete
        done: list[Path] = []
        with signals_deferred():
            journal = write_journal(folder, [journal_entry(folder, tmp, final) for tmp, final in self.staged])
            for tmp, final in self.staged:
                try:
                    rename(tmp, final)
                except OSError as exc:
                    if not done:
                        journal.unlink(missing_ok=True)
                        raise OSError(exc.errno, exc.strerror, str(final)) from exc
                    self.staged = []  # the rest stay for the journal's roll-forward
                    raise PartlyReplaced(exc.errno, exc.strerror, str(final), replaced=done) from exc
                done.append(final)
            journal.unlink()
        self.staged = []
        return done

    def discard(self) -> None:
        for tmp, _ in self.staged:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # a read-only folder: the stale-temporary cleaner of a later run takes it
        self.staged = []


@contextmanager
def file_set() -> Iterator[FileSet]:
    """A FileSet committed when the block ends normally, discarded when it raises (or is interrupted)."""
    files = FileSet()
    try:
        yield files
        files.commit()
    finally:
        files.discard()  # after a commit there is nothing left to discard


@contextmanager
def folder_atomic(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``final`` whole, on failure it is removed.

    A folder already at ``final`` (an earlier run's) is swapped out first and then deleted: at every
    moment ``final`` is either the old complete folder or the new complete one.
    """
    tmp = temporary_path(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_files(tmp)
        if final.exists():
            _swap_folder(tmp, final)
        else:
            rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_folder(new: Path, final: Path) -> None:
    """``new`` (complete on disk) in place of the folder at ``final``: a journal first, then the old folder
    moved aside and the new one in (two renames, signals held back), then the old one deleted. A kill between
    the two renames is rolled forward by the next reader (finish_journals): the complete new folder is never
    deleted as a stray temporary, nor the old one before the new one is in place."""
    old = temporary_path(final)
    with signals_deferred():
        journal = write_journal(final.parent, [journal_entry(final.parent, new, final, aside=old)])
        try:
            rename(final, old)
            rename(new, final)
        except BaseException:
            if old.exists() and not final.exists():
                rename(old, final)  # the old folder back: the failure leaves things as they were
            journal.unlink(missing_ok=True)
            raise
        journal.unlink()
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Journals: what makes a set whole for every reader, whenever its writer was killed
# --------------------------------------------------------------------------------------------

JOURNAL_PREFIX = "set-journal"  # <folder>/set-journal.<host>-<pid>.<random>.json, while a set is renamed in
LIVE_WRITER_WAIT_S = 2.0  # a live writer's renames take microseconds; a reader waits this long for them


class UnfinishedSet(Exception):
    """A set left between two renames that cannot be finished here (a file its journal names is missing or cut
    short, or its writer still runs); the message names the journal, what is wrong and what to do."""


def _sizes(path: Path) -> dict[str, int]:
    """The size of a file ({"": size}), or of every file in a folder by relative path."""
    if path.is_dir():
        return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
    return {"": path.stat().st_size}


def journal_entry(folder: Path, new: Path, final: Path, aside: Path | None = None) -> dict:
    """One member of a set, paths relative to the journal's folder (a moved tree keeps its journals valid):
    where it waits (``new``, complete on disk), where it goes, where an old folder is moved aside, its sizes."""
    def rel(path: Path) -> str:
        return os.path.relpath(path, folder)
    return {"new": rel(new), "final": rel(final), "aside": rel(aside) if aside else None, "sizes": _sizes(new)}


def write_journal(folder: Path, entries: list[dict]) -> Path:
    """The set's journal, created in place and flushed (no rename: a journal that does not parse as whole
    was cut short before any of the set's renames, which all come after it)."""
    path = Path(folder) / f"{JOURNAL_PREFIX}.{host()}-{os.getpid()}.{uuid.uuid4().hex[:12]}.json"
    _kill_point()
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(json.dumps({"entries": entries, "complete": True}))
            handle.flush()
            os.fsync(handle.fileno())
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)  # the journal's name is on disk before any rename it permits
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def pending_journals(folder: str | os.PathLike) -> list[Path]:
    return sorted(Path(folder).glob(f"{JOURNAL_PREFIX}.*.json"))


def finish_journals(folder: str | os.PathLike) -> list[str]:
    """Finish each set that a killed writer left between its renames in ``folder``: forward when every file
    its journal names is complete on disk (sizes as recorded), back when the journal itself was cut short
    (nothing had been renamed) or nothing was renamed yet. Call it holding the folder's lock, before reading
    the folder. Returns one sentence per set; raises UnfinishedSet when a set can go neither way."""
    done = []
    for journal in pending_journals(folder):
        if _finished_by_live_writer(journal):
            continue
        done.append(_finish_journal(Path(folder), journal))
    return done


def _finished_by_live_writer(journal: Path) -> bool:
    """Wait (a moment) for a journal whose writer, another live process of this host, is renaming its set."""
    deadline = time.monotonic() + LIVE_WRITER_WAIT_S
    while journal.exists() and _written_by_another_live_process(journal, "json"):
        if time.monotonic() > deadline:
            raise UnfinishedSet(f"{journal}: a set is being renamed in by pid {writer_of(journal, 'json')[1]}, "
                                "which still runs: try again once it is done")
        time.sleep(0.05)
    return not journal.exists()


def _read_journal(journal: Path, folder: Path) -> list[dict] | None:
    """The journal's entries with paths resolved, or None when it was cut short while being written."""
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        entries = record["entries"] if record.get("complete") is True else None
        return None if entries is None else [
            {**e, **{k: folder / e[k] if e[k] else None for k in ("new", "final", "aside")}} for e in entries]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def _complete(entry: dict) -> bool:
    """Whether a member is complete on disk: still waiting, or already in place, with its recorded sizes."""
    path = entry["new"] if os.path.lexists(entry["new"]) else entry["final"]
    try:
        return _sizes(path) == entry["sizes"]
    except OSError:
        return False


def _remove(path: Path | None) -> None:
    """Delete a file or a folder, if there."""
    if path is None or not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _finish_journal(folder: Path, journal: Path) -> str:
    entries = _read_journal(journal, folder)
    if entries is None:
        journal.unlink()
        return "dropped a set cut short before any of its files was renamed in (the previous files are unchanged)"
    names = ", ".join(os.path.relpath(e["final"], folder) for e in entries)
    if all(_complete(e) for e in entries):
        for entry in entries:
            if os.path.lexists(entry["new"]):
                if entry["aside"] is not None and entry["final"].exists() and not entry["aside"].exists():
                    rename(entry["final"], entry["aside"])
                rename(entry["new"], entry["final"])
        journal.unlink()
        for entry in entries:
            _remove(entry["aside"])
        return f"finished renaming in {names} (cut short by a kill once every new file was complete)"
    if all(os.path.lexists(e["new"]) for e in entries):  # nothing renamed in yet: the previous set is whole
        for entry in entries:
            if entry["aside"] is not None and entry["aside"].exists() and not entry["final"].exists():
                rename(entry["aside"], entry["final"])
            _remove(entry["new"])
        journal.unlink()
        return f"rolled back {names} (cut short before any was renamed in, and a new file is missing or cut short)"
    broken = next(e for e in entries if not _complete(e))
    raise UnfinishedSet(f"{journal}: the set {names} is partly renamed in and {os.path.relpath(broken['new'], folder)} "
                        f"(for {os.path.relpath(broken['final'], folder)}) is missing or cut short: write the set "
                        f"again (run the same command) after deleting {journal.name}")


# The marker a replacement writes into its aside folder once every old file is there: from then on the
# new set is what the folder must end with (it was complete on disk before anything moved).
REPLACEMENT_MARKER = "old-files-all-here"


@contextmanager
def files_replacing(folder: Path, name: str, aside_name: str, old_globs: Sequence[str]) -> Iterator[Path]:
    """Files renamed into ``folder`` as a set that replaces an earlier set as a whole (a final model over an
    earlier one).

    The new files are written into a temporary folder and flushed. Then the old set (the files of
    ``folder`` matching ``old_globs``, and any file the new set will replace) is moved into a second
    temporary folder (``aside_name``, with the same suffix), a marker says it all is, the new files are
    renamed in and the old ones deleted. So no old file is ever left beside the new set, and none is lost
    before the new set is complete: a failure before the marker puts the old set back; a kill at any point
    is finished by finish_replacements on the next start (back before the marker, forward after it).
    """
    new = temporary_path(folder / name)
    new.mkdir(parents=True)
    try:
        yield new
        fsync_files(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    aside = folder / (aside_name + new.name[len(name):])
    with signals_deferred():  # SIGINT/SIGTERM wait for the swap: the folder ends with one whole model
        try:
            aside.mkdir()
            replaced = {p.name for p in new.iterdir()}
            for old in sorted({p for g in old_globs for p in folder.glob(g)} | {folder / n for n in replaced}):
                if old.is_file():
                    rename(old, aside / old.name)
            write_text_atomic(aside / REPLACEMENT_MARKER, "")
        except BaseException:
            _put_back(folder, aside, new)
            raise
        try:
            _move_in(folder, aside, new)
        except BaseException:
            with contextlib.suppress(OSError):  # once more (an interrupt between two renames); else the next start
                _move_in(folder, aside, new)
            raise


def _put_back(folder: Path, aside: Path, new: Path) -> None:
    """Undo a replacement that had not moved the whole old set aside: old files back, new ones dropped."""
    if aside.is_dir():
        for kept in sorted(aside.iterdir()):
            if not kept.name.startswith(REPLACEMENT_MARKER):  # nor the marker's own temporary
                rename(kept, folder / kept.name)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def _move_in(folder: Path, aside: Path, new: Path) -> None:
    """Finish a replacement whose old set is all aside: the new files in, then the old ones deleted."""
    if new.is_dir():
        for item in sorted(new.iterdir()):
            rename(item, folder / item.name)
        new.rmdir()
    shutil.rmtree(aside, ignore_errors=True)


def finish_replacements(folder: Path, name: str, aside_name: str) -> list[str]:
    """Finish what a killed files_replacing(folder, name, aside_name, ...) left behind; call it before
    anything else uses the folder (which belongs to one run at a time). Each replacement goes back to the
    old set when its marker is missing, forward to the new set when it is there. Returns "restored" or
    "completed" for each one found."""
    done = []
    for aside in sorted(Path(folder).glob(f"{aside_name}.*.tmp")):
        if not aside.is_dir():
            continue
        new = aside.parent / (name + aside.name[len(aside_name):])
        if (aside / REPLACEMENT_MARKER).is_file():
            _move_in(folder, aside, new)
            done.append("completed")
        else:
            _put_back(folder, aside, new)
            done.append("restored")
    return done


def check_writable(folder: Path) -> None:
    """Raise OSError unless a file can be written where ``folder`` is (or would be created): a read-only
    target fails before hours of work, not after. Permission bits alone do not tell (root ignores them)."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(existing))
    with tempfile.TemporaryFile(dir=existing):
        pass


# The folders make_folder created in this process, parents first (see remove_created_folders).
_CREATED: list[Path] = []


def make_folder(path: str | os.PathLike) -> None:
    """mkdir -p that remembers which folders it created, so that a run refused after creating them can
    remove them again (remove_created_folders): a refusal leaves no empty folder behind."""
    missing, folder = [], Path(path)
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    Path(path).mkdir(parents=True, exist_ok=True)
    _CREATED.extend(reversed(missing))


def remove_created_folders(keep: bool = False) -> None:
    """Remove the folders make_folder created that are still empty, deepest first (unless ``keep``: the
    run succeeded), and forget them. A folder something was written into is never touched."""
    while _CREATED:
        folder = _CREATED.pop()
        if not keep:
            with contextlib.suppress(OSError):  # not empty, or gone: left as it is
                folder.rmdir()


def move_aside(path: Path, new_name: str) -> Path:
    """Rename ``path`` to ``new_name`` in its folder (to keep a file that is about to be replaced)."""
    kept = path.with_name(new_name)
    rename(path, kept)
    return kept


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _may_be_live(tmp: Path, now: float) -> bool:
    """Whether some process could still be writing tmp: recently modified, or its writer runs here."""
    try:
        if now - tmp.stat().st_mtime < ORPHAN_TMP_AGE_S:
            return True
    except FileNotFoundError:
        return True  # renamed or removed meanwhile: nothing to do
    writer = writer_of(tmp)
    if writer is not None and writer[0] == host():
        return pid_alive(writer[1])  # a hung but live writer keeps its file
    return False  # another host (shared folder) or an older name: only the age tells


def _written_by_another_live_process(tmp: Path, suffix: str = "tmp") -> bool:
    """Whether tmp's writer (named in its name) is a process of this host, other than this one, that runs."""
    writer = writer_of(tmp, suffix)
    return writer is not None and writer[0] == host() and writer[1] != os.getpid() and pid_alive(writer[1])


def remove_stale_temporaries(folder: str | os.PathLike, final_glob: str, owned: bool = False) -> int:
    """Delete the temporaries (files or folders) of final names matching ``final_glob`` that no live
    process is writing; returns how many.

    owned=False (a folder others may share, such as the feature cache): a temporary is stale once its
    writer on this host has exited and it is older than ORPHAN_TMP_AGE_S (PID namespaces of containers
    can hide a live writer), or from another host and that old. owned=True (this run's --output_dir, whose
    lock this process holds): a temporary is stale unless its writer is another live process on this host
    (one that wrote there without the lock, or a moment before it was released), whatever its age; those of
    another host are stale, since no run that holds the folder's lock writes from there now.
    """
    now, removed = time.time(), 0
    for tmp in Path(folder).glob(f"{final_glob}.*.tmp"):
        if _written_by_another_live_process(tmp) if owned else _may_be_live(tmp, now):
            continue
        try:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed += 1
        except OSError:
            pass  # removed by a concurrent cleaner, or not ours to delete
    return removed
