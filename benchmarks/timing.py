"""Timing and worker-process helpers shared by the benchmark scripts.

A comparison runs each side in its own process (:class:`Worker`): the worker prints its answers as
``RESULT``-prefixed JSON lines (:func:`answer`; both code bases print other things too) and times one round
each time the parent writes ``round`` to its stdin, so that the parent can alternate the sides.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

RESULT = "@@result "


def timed(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def answer(payload: dict) -> None:
    """Send ``payload`` to the parent (a worker's side of the protocol)."""
    print(RESULT + json.dumps(payload), flush=True)


class Worker:
    """One side of a comparison: ``cmd`` in its own process, answering ``round`` lines with timings."""

    def __init__(self, side: str, cmd: list[str], close_timeout: float = 300.0) -> None:
        env = dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3"))
        self.side, self.close_timeout = side, close_timeout
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def read(self) -> dict:
        """The worker's next answer."""
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
        raise SystemExit(f"the {self.side} worker ended without an answer (exit code {self.proc.wait()})")

    def round(self) -> dict:
        """Ask for one round of timings and return them."""
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=self.close_timeout)
