"""Writing files so that nobody sees them half-written, and checking the files a command is given.

* :func:`atomic_output`: a temporary path next to the target, renamed onto it on success;
* :func:`atomic_directory`: the same for a whole folder (an export);
* :func:`require_file`: an existing (non-empty) file, or an error naming what was expected;
* :func:`current_umask`: the process's file-creation mask, read without changing it.

Errors are :class:`FileError` (a ``ValueError`` whose message names the path); callers that own a
kind of file pass their own error class to :func:`require_file`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

__all__ = ["FileError", "atomic_directory", "atomic_output", "current_umask", "require_file", "usual_mode"]


class FileError(ValueError):
    """A file or folder that cannot be written or is not what was expected; the message names it."""


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's file-creation mask.

    Linux reports it in ``/proc/self/status``, which leaves the mask alone; elsewhere the mask is set
    and restored under a lock (``os.umask`` can only be read by writing it), so two threads reading it
    here never see each other's temporary value."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def usual_mode(directory: bool = False) -> int:
    """The mode ``open`` / ``mkdir`` would give a new file (or folder) under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, error: type[Exception] = FileError) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same suffix); on success it is renamed to ``path``,
    on any error it is removed, so ``path`` is never seen half-written. A folder that does not exist or
    cannot be written raises ``error``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise error(f"cannot write {path}: directory {directory} does not exist")
    base = os.path.basename(path)
    suffix = os.path.splitext(base)[1]
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".partial{suffix}", dir=directory)
    except OSError as err:
        raise error(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, usual_mode())  # mkstemp makes 0600 and MindSpore 0400: use the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, marker: str) -> Iterator[str]:
    """Yield a staging folder beside ``path``; on success it replaces ``path`` whole.

    ``path`` may already hold an earlier result, recognised by the file ``marker`` in it: it is replaced
    only once the new folder is complete, and comes back if writing the new one fails. A non-empty folder
    without ``marker`` is never replaced."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileError(f"{path} exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path) and not os.path.isfile(os.path.join(path, marker)):
        raise FileError(f"{path} is a non-empty folder without {marker} (not an earlier result of this "
                        "command): choose another folder")
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    except OSError as err:
        raise FileError(f"cannot write {path}: {err.strerror or err}") from None
    os.chmod(staging, usual_mode(directory=True))  # mkdtemp makes 0700
    retired = staging + ".old"
    try:
        yield staging
        if os.path.exists(path):
            os.rename(path, retired)
        os.rename(staging, path)
    except BaseException:
        if os.path.exists(retired) and not os.path.exists(path):
            os.rename(retired, path)  # the earlier result comes back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def require_file(path: str, what: str = "file", error: type[Exception] = FileError,
                 allow_empty: bool = True) -> None:
    """Raise ``error`` naming ``what`` and ``path`` unless ``path`` is an existing (non-empty) file."""
    if not os.path.exists(path):
        raise error(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise error(f"{what} path is not a file: {path}")
    if not allow_empty and os.path.getsize(path) == 0:
        raise error(f"{what} {path} is empty (0 bytes): an interrupted download?")
