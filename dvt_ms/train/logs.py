"""Training logs: rank 0 on the console, every rank into its own file."""

from __future__ import annotations

import logging
import os
import sys

PROG = "dvt-train"
LOGGER_NAME = "dvt_ms.train"
_PACKAGE_LOGGER = "dvt_ms"  # its handlers also take what the library logs (data workers, kernel builds)


def setup_logging(log_dir: str, rank: int, console: bool | None = None) -> logging.Logger:
    """The ``dvt_ms.train`` logger, whose records (and those of every other ``dvt_ms`` logger) go to
    ``<log_dir>/train_rank<rank>.log`` (appending, so a resumed run continues the same file) and, on rank 0 (or
    when ``console``), to stdout."""
    os.makedirs(log_dir, exist_ok=True)
    logger = logging.getLogger(_PACKAGE_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    file_handler = logging.FileHandler(os.path.join(log_dir, f"train_rank{rank}.log"), encoding="utf-8")
    file_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    if console if console is not None else rank == 0:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(stream)
    return logging.getLogger(LOGGER_NAME)


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
