"""The training split's health check before anything compiles, and the bad-image policy.

Every rank checks its share of the files (:func:`dvt_ms.data.health.check_images`); the shares are summed
over the devices, so every rank knows every bad file. With ``--bad_images fail`` the run stops with status 1
naming them; with ``skip`` they leave the sample order (every rank leaves out the same files, so the order
is the same everywhere and on every restart) and the run records them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.health import CheckReport, check_images, format_bad_images, require_readable
from ..data.loader import worker_count
from ..files import atomic_output
from .distributed import Runtime, sum_over_devices

__all__ = ["BAD_IMAGES_FILE", "DataCheck", "check_training_images"]

BAD_IMAGES_FILE = "bad_images.txt"


@dataclass
class DataCheck:
    """What the check found: its level, the files checked, and the files training leaves out (relative to the
    split's folder)."""

    level: str
    checked: int = 0
    seconds: float = 0.0
    skipped_images: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What ``results.json`` and the training state keep of it."""
        return {"data_check": self.level, "checked_images": self.checked, "skipped_images": self.skipped_images}


def _check_share(paths: list[str], level: str, workers: int, runtime: Runtime) -> CheckReport:
    """Each rank checks every ``group_size``-th file; the flags are summed over the devices, and the bad files
    of the other ranks' shares are checked again here for their reasons (few)."""
    if not runtime.distributed or runtime.group_size == 1:
        return check_images(paths, level, workers)
    mine = check_images(paths[runtime.rank::runtime.group_size], level, workers)
    flags = np.zeros(len(paths), np.float32)
    index = {p: i for i, p in enumerate(paths)}
    for bad in mine.bad:
        flags[index[bad.path]] = 1.0
    everywhere = sum_over_devices(runtime, flags)
    others = [p for p in (paths[i] for i in np.flatnonzero(everywhere)) if p not in {b.path for b in mine.bad}]
    again = check_images(others, level, workers)
    bad = sorted([*mine.bad, *again.bad], key=lambda b: index[b.path])
    return CheckReport(len(paths), level, mine.seconds + again.seconds, bad)


def check_training_images(reader: Any, level: str, policy: str, workers: int, runtime: Runtime, run_dir: str,
                          log: logging.Logger) -> tuple[Any, DataCheck]:
    """Check the files of ``reader`` (an :class:`~dvt_ms.data.ImageFolder`; other readers, e.g. CIFAR's binary
    files, have no files to check) at ``level`` (``header``, ``full`` or ``off``); returns the reader to train
    on (without the bad files under ``policy`` ``skip``) and what was found. Rank 0 lists the bad files in
    ``<run_dir>/bad_images.txt``; under ``fail`` a :class:`~dvt_ms.data.DataError` names them."""
    samples = getattr(reader, "samples", None)
    if level == "off" or samples is None:
        return reader, DataCheck("off" if level == "off" else "n/a")
    paths = [path for path, _ in samples]
    report = _check_share(paths, level, worker_count(workers) if workers else 1, runtime)
    log.info("data check: %s (%.0f s per 100k files)", report.summary(),
             report.seconds / max(report.checked, 1) * 1e5)
    listing = os.path.join(run_dir, BAD_IMAGES_FILE)
    if report.bad and runtime.is_main:
        os.makedirs(run_dir, exist_ok=True)
        with atomic_output(listing) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{bad.path}\t{bad.reason}\n" for bad in report.bad)
    if policy == "fail":
        require_readable(report, f"training images in {reader.root}", listing)
    found = DataCheck(level, report.checked, report.seconds,
                      [os.path.relpath(bad.path, reader.root) for bad in report.bad])
    if report.bad:
        log.warning("leaving out %d unreadable training images (--bad_images skip; listed in %s): %s",
                    len(report.bad), listing, format_bad_images(report.bad, reader.root))
        reader = reader.excluding(bad.path for bad in report.bad)
    return reader, found
