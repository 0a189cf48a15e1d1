"""The worker processes of a ``mindspore.dataset`` pipeline, seen from the process that owns them.

MindSpore forks the workers of a ``map`` with ``python_multiprocessing`` when the pipeline's iterator is
created, and handles their loss itself: its SIGCHLD handler logs a line and sends the main process SIGTERM
(exit status 143), wherever the run is. Training wants to end such a run with its own message (which
worker, the likely cause, the state to resume from) and status 1, so :class:`WorkerWatch` switches
MindSpore's watchdog off while it watches the workers from a thread of its own. Without either, a lost
worker leaves the pipeline waiting for ever.

:func:`workers_ignore_sigint` makes workers forked inside it ignore SIGINT, which a terminal's Ctrl-C sends
to the whole process group: the main process decides what an interrupt does (MindSpore's workers would
otherwise die of it, and the run with them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["LostWorker", "WorkerWatch", "child_processes", "workers_ignore_sigint"]


@dataclass(frozen=True)
class LostWorker:
    """A worker process that ended while the pipeline still needed it."""

    pid: int
    signal: int | None  # the signal that killed it, or None when it exited
    exit_code: int | None

    def cause(self) -> str:
        """What ended it, and what that most often means."""
        if self.signal is None:
            return "ended" if self.exit_code is None else f"exited with status {self.exit_code}"
        name = signal.Signals(self.signal).name if self.signal in signal.valid_signals() else str(self.signal)
        text = f"was killed by signal {self.signal} ({name})"
        if self.signal == signal.SIGKILL:
            text += ", most often the kernel's out-of-memory killer: lower --num_parallel_workers or --batch_size"
        return text

    def describe(self) -> str:
        return f"data worker process {self.pid} {self.cause()}"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def child_processes(pid: int | None = None) -> list[int]:
    """The direct children of process ``pid`` (this one by default), from ``/proc``."""
    pid = os.getpid() if pid is None else pid
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        text = _read(f"/proc/{pid}/task/{task}/children")
        if text:
            children.extend(int(v) for v in text.split())
    return sorted(set(children))


def _state(pid: int) -> str | None:
    """The process state letter of ``/proc/<pid>/stat`` (``Z`` for a zombie), None when it is gone."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    return text[text.rfind(b")") + 2:].split(b" ", 1)[0].decode()


class WorkerWatch:
    """Watch the data worker processes forked from this process while the block runs.

    Workers are this process's children that run its own command line (forks; a compiler or other program
    started meanwhile is not one). Every ``interval`` seconds a thread looks for new ones and for watched ones
    that ended; the first one that ended is handed to ``on_lost`` once, from the watching thread (the main
    thread may be blocked in the pipeline for ever: ``on_lost`` typically reports and ends the process). The
    ended worker is left unreaped (``waitid`` with ``WNOWAIT``), as its owner expects to reap it.
    MindSpore's own watchdog is off inside the block (it must be before the pipeline's iterator is created)
    and restored after it. Leave the block before the pipeline is torn down: its workers end then.
    """

    def __init__(self, on_lost: Callable[[LostWorker], None], interval: float = 0.5) -> None:
        self.on_lost, self.interval = on_lost, float(interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: set[int] = set()
        self._command = _read("/proc/self/cmdline")
        self._previous_watchdog: bool | None = None

    def __enter__(self) -> WorkerWatch:
        import mindspore.dataset as ds

        self._previous_watchdog = ds.config.get_enable_watchdog()
        ds.config.set_enable_watchdog(False)
        self._thread = threading.Thread(target=self._run, name="dvt-worker-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import mindspore.dataset as ds

        self.stop()
        if self._previous_watchdog is not None:
            ds.config.set_enable_watchdog(self._previous_watchdog)
            self._previous_watchdog = None

    def stop(self) -> None:
        """Stop watching (before the pipeline is torn down); MindSpore's watchdog stays off until the block ends."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def watched(self) -> list[int]:
        """The worker pids seen so far."""
        return sorted(self._watched)

    def poll(self) -> LostWorker | None:
        """One look: record new workers; the first watched one that ended, if any."""
        if self._command:
            for pid in child_processes():
                if pid not in self._watched and _read(f"/proc/{pid}/cmdline") == self._command:
                    self._watched.add(pid)
        for pid in sorted(self._watched):
            state = _state(pid)
            if state is None:  # reaped by somebody else: no status left to read
                return LostWorker(pid, None, None)
            if state == "Z":
                return self._ended(pid)
        return None

    def _ended(self, pid: int) -> LostWorker:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        if info is None:
            return LostWorker(pid, None, None)
        if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            return LostWorker(pid, info.si_status, None)
        return LostWorker(pid, None, info.si_status)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            lost = self.poll()
            if lost is not None and not self._stop.is_set():
                self.on_lost(lost)
                return


@contextlib.contextmanager
def workers_ignore_sigint() -> Iterator[None]:
    """Processes forked inside the block start with SIGINT ignored (this process's handler is put back after).
    Only the main thread may change signal handlers: elsewhere the block does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
