"""Atomic writes: every file and folder the project writes reaches its final name by one rename.

Why a module of its own: the scorer (squad_metrics.py, no torch), the feature cache (utils_squad.py) and
the checkpoints (checkpoints.py) all write files that a kill must never leave half-written. They share one
rule for temporary names and one cleaner of the temporaries a killed run leaves behind, so this is the only
module that renames anything into place. Standard library only.

Temporary names are ``<final name>.<host>-<pid>.<random>.tmp`` beside the final path, so a cleaner can tell
a live writer's temporary from an orphan, even in a folder shared by several machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
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


def temporary_path(final: str | os.PathLike) -> Path:
    """Where to write ``final`` before renaming it into place: same folder, writer named."""
    final = Path(final)
    return final.parent / f"{final.name}.{host()}-{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"


def writer_of(tmp: Path) -> tuple[str, int] | None:
    """(host, pid) of a temporary named by temporary_path, else None (an older naming, or not ours)."""
    parts = tmp.name.rsplit(".", 3)
    if len(parts) != 4 or parts[3] != "tmp":
        return None
    name, _, pid = parts[1].rpartition("-")
    return (name, int(pid)) if name and pid.isdigit() else None


def write_file_atomic(path: str | os.PathLike, write: Callable[[IO], Any], binary: bool = False) -> None:
    """Run ``write(file)`` on a temporary beside ``path``, flush it to disk, then rename it over ``path``.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact. The
    temporary is opened normally (not via mkstemp) so the result gets umask permissions. An OSError about
    the temporary is re-raised naming ``path``: the user never chose the temporary name.
    """
    path = os.fspath(path)
    tmp = os.fspath(temporary_path(path))
    try:
        with open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.filename == tmp:
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_file_atomic(path, lambda handle: handle.write(text))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 4) -> None:
    """json.dumps(obj, indent=indent) plus a newline (the classic prediction file layout), atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def fsync_files(folder: Path) -> None:
    """Flush every file under ``folder`` to disk, so that a folder complete under its final name after a
    crash of the machine (not only of the process) holds complete files."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


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
            old = temporary_path(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def files_atomic(folder: Path, name: str) -> Iterator[Path]:
    """Yield a temporary folder whose files are each renamed into ``folder`` once all are complete.

    For a set of files that must sit directly in ``folder`` (a model saved in the output folder): a kill
    before the renames leaves the old files; each rename replaces one complete file.
    """
    tmp = temporary_path(folder / name)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_files(tmp)
        for item in sorted(tmp.iterdir()):
            os.replace(item, folder / item.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# The marker a replacement writes into its aside folder once every old file is there: from then on the
# new set is what the folder must end with (it was complete on disk before anything moved).
REPLACEMENT_MARKER = "old-files-all-here"


@contextmanager
def files_replacing(folder: Path, name: str, aside_name: str, old_globs: Sequence[str]) -> Iterator[Path]:
    """files_atomic for a set that replaces an earlier set as a whole (a final model over an earlier one).

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
    try:
        aside.mkdir()
        replaced = {p.name for p in new.iterdir()}
        for old in sorted({p for g in old_globs for p in folder.glob(g)} | {folder / n for n in replaced}):
            if old.is_file():
                os.replace(old, aside / old.name)
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
                os.replace(kept, folder / kept.name)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def _move_in(folder: Path, aside: Path, new: Path) -> None:
    """Finish a replacement whose old set is all aside: the new files in, then the old ones deleted."""
    if new.is_dir():
        for item in sorted(new.iterdir()):
            os.replace(item, folder / item.name)
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
    os.replace(path, kept)
    return kept


def _pid_alive(pid: int) -> bool:
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
        return _pid_alive(writer[1])  # a hung but live writer keeps its file
    return False  # another host (shared folder) or an older name: only the age tells


def remove_stale_temporaries(folder: str | os.PathLike, final_glob: str, owned: bool = False) -> int:
    """Delete the temporaries (files or folders) of final names matching ``final_glob`` that no live
    process is writing; returns how many.

    owned=False (a folder others may share, such as the feature cache): a temporary is stale once its
    writer on this host has exited and it is older than ORPHAN_TMP_AGE_S (PID namespaces of containers
    can hide a live writer), or from another host and that old. owned=True (this run's --output_dir, which
    no other process writes): every temporary there is stale.
    """
    now, removed = time.time(), 0
    for tmp in Path(folder).glob(f"{final_glob}.*.tmp"):
        if not owned and _may_be_live(tmp, now):
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
