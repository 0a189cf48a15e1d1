"""Ctrl-C that stops a command where it can stop cleanly.

A terminal's Ctrl-C sends SIGINT to the whole process group. Raising ``KeyboardInterrupt`` wherever it lands
is not clean here: inside a graph compilation MindSpore catches it, prints its traceback and writes
``rank_0/om/analyze_fail.ir`` into the working folder; while MindSpore runs a graph, its runtime turns the
SIGINT into a SIGTERM to its own process, which then dies with status 143.

So a command runs inside :func:`deferred`: SIGINT and SIGTERM (the form MindSpore turns a SIGINT into) only set
a flag, and the command's loops call :func:`check` where stopping is safe (between batches, steps, exported
graphs), which raises ``KeyboardInterrupt``; training asks :func:`requested` instead, to save its state
first. A second signal raises at once. Outside :func:`deferred` nothing changes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["check", "deferred", "held", "immediate", "requested"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested = threading.Event()
_depth = 0
_held = 0


def requested() -> bool:
    """Whether an interrupt arrived inside :func:`deferred` and has not been acted on yet."""
    return _requested.is_set()


def check() -> None:
    """Raise ``KeyboardInterrupt`` when an interrupt arrived (the place calling this can stop cleanly), unless
    inside :func:`held`."""
    if _requested.is_set() and not _held:
        raise KeyboardInterrupt


@contextlib.contextmanager
def held() -> Iterator[None]:
    """:func:`check` does not raise inside the block: for work that its caller finishes before it acts on an
    interrupt itself (training validates the epoch it just trained, saves it, then stops)."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1


@contextlib.contextmanager
def immediate() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` and SIGTERM ends the process at once inside the block (Python's and
    the system's defaults), also inside :func:`deferred`: for work that cannot stop in order, e.g. a
    data-parallel run whose launcher ends the job when one process goes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _on_signal(signum, frame) -> None:
    if _requested.is_set():
        raise KeyboardInterrupt
    _requested.set()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM set the flag that :func:`check` and :func:`requested` read; a second
    one raises ``KeyboardInterrupt`` at once. Nested blocks share one flag; the outermost one installs the
    handlers (main thread only: elsewhere the block changes nothing) and puts the previous ones back."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _requested.clear()
        previous = {sig: signal.signal(sig, _on_signal) for sig in _SIGNALS}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _requested.clear()
