"""Training logs: rank 0 on the console, every rank into its own file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

PROG = "dvt-train"
LOGGER_NAME = "dvt_ms.train"
_PACKAGE_LOGGER = "dvt_ms"  # its handlers also take what the library logs (data workers, kernel builds)


@contextlib.contextmanager
def training_log(log_dir: str, rank: int, console: bool | None = None) -> Iterator[logging.Logger]:
    """While the block runs, the ``dvt_ms.train`` logger's records (and those of every other ``dvt_ms``
    logger) go to ``<log_dir>/train_rank<rank>.log`` (appending, so a resumed run continues the same file) and,
    on rank 0 (or when ``console``), to stdout; yields that logger. The handlers that were there before come
    back afterwards, so that what a process does after training logs where it did before."""
    os.makedirs(log_dir, exist_ok=True)
    package = logging.getLogger(_PACKAGE_LOGGER)
    previous, level, propagate = list(package.handlers), package.level, package.propagate
    for handler in previous:
        package.removeHandler(handler)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(os.path.join(log_dir, f"train_rank{rank}.log"),
                                                           encoding="utf-8")]
    handlers[0].setFormatter(fmt)
    if console if console is not None else rank == 0:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handlers.append(stream)
    for handler in handlers:
        package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False
    try:
        yield logging.getLogger(LOGGER_NAME)
    finally:
        for handler in handlers:
            package.removeHandler(handler)
            handler.close()
        for handler in previous:
            package.addHandler(handler)
        package.setLevel(level)
        package.propagate = propagate


def format_duration(seconds: float) -> str:
    """``1d02h03m`` / ``02h03m04s`` / ``03m04s`` style durations for ETAs."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours:02d}h{minutes:02d}m{secs:02d}s"
    return f"{minutes:02d}m{secs:02d}s"
