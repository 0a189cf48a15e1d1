"""Data health: find every unreadable image of a split before a run spends hours on it.

:func:`check_images` opens each file, in parallel processes for large sets, at one of two levels:

* ``header``: PIL identifies the format and reads the size and mode from the file's first bytes (what
  finds empty files, files of another kind under an image name, cut-off headers); some fifteen thousand
  files a second per process from the page cache;
* ``full``: every file is decoded whole and converted to RGB, as training reads it (also finds truncated
  or corrupt pixel data), at the speed of decoding.

:class:`BadImagePolicy` is what training does with the result: ``fail`` stops before the first step,
naming every bad file; ``skip`` leaves them out of the sample order (the same files every time, so the
order and a resume stay deterministic) and lists them.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from .errors import DataError
from .folder import READ_ERRORS, to_rgb

__all__ = ["CHECK_LEVELS", "BadImage", "CheckReport", "check_image", "check_images", "format_bad_images"]

CHECK_LEVELS = ("header", "full")
_CHUNK = 256  # files per task: enough to hide the pool's overhead, small enough to balance the processes
_PARALLEL_FROM = 4096  # fewer files are checked in a fraction of a second without starting processes


@dataclass(frozen=True)
class BadImage:
    """A file that cannot be read as an image, and PIL's reason."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class CheckReport:
    """What :func:`check_images` found: files checked, the bad ones (in the order given), the level, the time."""

    checked: int
    level: str
    seconds: float
    bad: list[BadImage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad

    def summary(self) -> str:
        rate = self.checked / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.checked} files checked ({self.level}) in {self.seconds:.1f} s ({rate:,.0f} files/s): "
                f"{len(self.bad)} unreadable")


def check_image(path: str, level: str = "header") -> str | None:
    """Why ``path`` cannot be read as an image at ``level`` (see the module doc), or None when it can."""
    if level not in CHECK_LEVELS:
        raise ValueError(f"unknown check level {level!r}: use one of {', '.join(CHECK_LEVELS)}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width < 1 or height < 1:
                return f"empty image ({width}x{height} pixels)"
            if level == "full":
                image.load()
                to_rgb(image)
    except READ_ERRORS as err:
        return str(err) or type(err).__name__
    return None


def _check_chunk(paths: Sequence[str], level: str) -> list[BadImage]:
    return [BadImage(p, reason) for p in paths if (reason := check_image(p, level)) is not None]


def check_images(paths: Sequence[str], level: str = "header", workers: int = 8,
                 progress: Callable[[int], None] | None = None) -> CheckReport:
    """Check every file of ``paths``; ``progress(n)`` is called as chunks of ``n`` files finish. The bad files come
    back in the order of ``paths``.

    ``workers`` > 1 and more than a few thousand files: that many forked processes share the work (PIL parses
    headers in Python, so threads would mostly wait for each other); otherwise this process checks them."""
    if level not in CHECK_LEVELS:
        raise ValueError(f"unknown check level {level!r}: use one of {', '.join(CHECK_LEVELS)}")
    start = time.perf_counter()
    chunks = [list(paths[i:i + _CHUNK]) for i in range(0, len(paths), _CHUNK)]
    bad: list[BadImage] = []
    processes = min(int(workers), len(chunks)) if len(paths) >= _PARALLEL_FROM else 1
    with contextlib.ExitStack() as stack:
        if processes > 1 and "fork" in multiprocessing.get_all_start_methods():
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(processes))
            results = pool.imap(functools.partial(_check_chunk, level=level), chunks)
        else:
            results = (_check_chunk(chunk, level) for chunk in chunks)
        for chunk, found in zip(chunks, results, strict=True):
            bad.extend(found)
            if progress is not None:
                progress(len(chunk))
    return CheckReport(len(paths), level, time.perf_counter() - start, bad)


def format_bad_images(bad: Sequence[BadImage], root: str | None = None, limit: int = 5) -> str:
    """``a.jpg (reason), b.png (reason), ... and N more``: paths relative to ``root`` when given."""
    def name(path: str) -> str:
        return os.path.relpath(path, root) if root else path

    shown = ", ".join(f"{name(b.path)} ({b.reason})" for b in bad[:limit])
    return shown + (f" and {len(bad) - limit} more" if len(bad) > limit else "")


def require_readable(report: CheckReport, what: str, listing: str | None = None) -> None:
    """A :class:`DataError` naming the bad files of ``report`` (``listing``: where all of them are written)."""
    if report.ok:
        return
    where = f"; all of them are listed in {listing}" if listing else ""
    raise DataError(f"{len(report.bad)} of {report.checked} {what} cannot be read ({report.level} check): "
                    f"{format_bad_images(report.bad)}{where}. Remove or replace them, or pass --bad_images skip to "
                    "train without them")
