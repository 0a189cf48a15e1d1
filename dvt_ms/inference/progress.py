"""Progress bars of the evaluation passes: tqdm, counting images."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress_bar"]

LOG_INTERVAL_S = 10.0  # a log file or pipe gets at most one progress line this often (and the final one)


class _Lines:
    """tqdm's file on a non-terminal: tqdm redraws with ``"\\r" + state``, which a log keeps as one long
    line; here each state is written as a line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, desc: str, stream: TextIO | None = None) -> tqdm:
    """A tqdm bar for ``total`` images on ``stream`` (default: stderr), with images per second and ETA.

    Use it as a context manager and call ``update(n)`` per batch. On a terminal it is redrawn in place; on
    anything else (a log file, a pipe to ``tee``, CI) it writes a line at most every :data:`LOG_INTERVAL_S`
    seconds, and the final state.
    """
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit="img", file=stream, dynamic_ncols=True)
    return tqdm(total=total, desc=desc, unit="img", file=_Lines(stream), mininterval=LOG_INTERVAL_S,
                maxinterval=LOG_INTERVAL_S, ascii=True)
