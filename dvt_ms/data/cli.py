"""``python -m dvt_ms data-check``: find every unreadable image of an image folder before a run does.

Usage::

    python -m dvt_ms data-check --data_dir /data/imagenet                  # train/ and val/, header check
    python -m dvt_ms data-check --data_dir /data/imagenet --split train --data_check full --output bad.txt

Prints each unreadable file (``path<TAB>reason``) and a summary. Exit status: 0 every file reads, 1 some do
not (or the folder cannot be listed), 2 bad usage. ``dvt-train`` runs the same check before compiling.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ..command import run_command
from ..files import atomic_output
from ..options import DataCheckSettings, parse_command
from .datasets import SPLIT_DIRS
from .errors import DataError
from .folder import scan_image_folder
from .health import CheckReport, check_images
from .loader import worker_count

PROG = "python -m dvt_ms data-check"


@dataclass
class SplitCheck:
    """The check of one split: its folder and what was found."""

    split: str
    root: str
    report: CheckReport


def split_folders(data_dir: str, split: str) -> list[tuple[str, str]]:
    """``(split, folder)`` to check: ``data_dir/train`` and/or ``data_dir/val``; with ``all`` and neither
    present, ``data_dir`` itself as one split."""
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory not found: {data_dir}")
    names = ("train", "val") if split == "all" else (split,)
    found = [(name, os.path.join(data_dir, SPLIT_DIRS[name][0])) for name in names
             if os.path.isdir(os.path.join(data_dir, SPLIT_DIRS[name][0]))]
    if found:
        return found
    if split != "all":
        raise DataError(f"{data_dir} has no {SPLIT_DIRS[split][0]}/ directory")
    return [("folder", data_dir)]


def check_data(settings: DataCheckSettings) -> list[SplitCheck]:
    """Check every image file of the splits ``settings`` name; writes ``settings.output`` when given."""
    workers = worker_count(settings.num_parallel_workers) if settings.num_parallel_workers else 1
    checks = []
    for split, root in split_folders(settings.data_dir, settings.split):
        samples, _ = scan_image_folder(root)
        checks.append(SplitCheck(split, root, check_images([p for p, _ in samples], settings.data_check, workers)))
    if settings.output:
        with atomic_output(settings.output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{bad.path}\t{bad.reason}\n" for c in checks for bad in c.report.bad)
    return checks


def _run(settings: DataCheckSettings) -> str:
    checks = check_data(settings)
    for check in checks:
        for bad in check.report.bad:
            print(f"{bad.path}\t{bad.reason}")
    summary = "; ".join(f"{c.split} ({c.root}): {c.report.summary()}" for c in checks)
    bad = sum(len(c.report.bad) for c in checks)
    if bad:
        listed = f", listed above and in {settings.output}" if settings.output else ", listed above"
        raise DataError(f"{bad} unreadable image files{listed}. {summary}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dvt_ms data-check``; returns the exit status (see :mod:`dvt_ms.command`)."""
    return run_command(PROG, lambda: parse_command(DataCheckSettings, argv, __doc__.split("\n\n")[0], PROG), _run,
                       (DataError,))


if __name__ == "__main__":
    sys.exit(main())
