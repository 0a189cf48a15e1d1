"""A dependency-free progress bar with images per second."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``desc [#####-----] done/total  img/s  elapsed<eta``, redrawn in place on a terminal.

    On a non-terminal stream (a log file, a pipe) a line is written about every 10 % instead.
    """

    def __init__(self, total: int, desc: str, stream: TextIO | None = None, width: int = 28) -> None:
        self.total, self.desc, self.width = max(int(total), 0), desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.start = time.perf_counter()
        self._next_line = 0.1
        self._closed = False

    @property
    def rate(self) -> float:
        """Images per second so far."""
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def _line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = round(self.width * fraction)
        elapsed = time.perf_counter() - self.start
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.desc} [{'#' * filled}{'-' * (self.width - filled)}] {self.done}/{self.total} "
                f"{rate:8.1f} img/s  {_clock(elapsed)}<{_clock(eta)}")

    def update(self, n: int) -> None:
        """Count ``n`` more images."""
        self.done += int(n)
        if self.tty:
            self.stream.write("\r" + self._line())
            self.stream.flush()
        elif self.total and self.done / self.total >= self._next_line and self.done < self.total:
            self.stream.write(self._line() + "\n")
            self.stream.flush()
            while self._next_line <= self.done / self.total:
                self._next_line += 0.1

    def close(self) -> None:
        """Write the final state (once)."""
        if self._closed:
            return
        self._closed = True
        self.stream.write(("\r" if self.tty else "") + self._line() + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
