"""The worker watch: it sees forked workers, tells how one ended without reaping it, and ignores other children;
workers forked inside ``workers_ignore_sigint`` survive a SIGINT."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

from dvt_ms.data.workers import LostWorker, WorkerWatch, child_processes, workers_ignore_sigint


def _sleep(seconds: float, code: int = 0) -> None:
    time.sleep(seconds)
    os._exit(code)


def _until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_a_killed_or_failed_worker_is_reported_and_left_to_its_owner():
    fork = multiprocessing.get_context("fork")
    watch = WorkerWatch(lambda lost: None)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # not a fork: not watched
    killed, failed = fork.Process(target=_sleep, args=(30,)), fork.Process(target=_sleep, args=(0.3, 3))
    killed.start()
    failed.start()
    try:
        assert watch.poll() is None
        assert {killed.pid, failed.pid} <= set(watch.watched) and other.pid not in watch.watched
        assert other.pid in child_processes()
        lost = _until(watch.poll)  # the failing one ends first
        assert lost == LostWorker(failed.pid, None, 3) and lost.cause() == "exited with status 3"
        assert os.path.exists(f"/proc/{failed.pid}")  # a zombie: its owner reaps it
        failed.join()
        gone = watch.poll()
        assert gone == LostWorker(failed.pid, None, None) and gone.cause() == "ended"  # reaped: still lost
        watch = WorkerWatch(lambda lost: None)
        assert watch.poll() is None and killed.pid in watch.watched
        os.kill(killed.pid, signal.SIGKILL)
        lost = _until(watch.poll)
        assert lost.pid == killed.pid and lost.signal == signal.SIGKILL
        assert "data worker process" in lost.describe() and "out-of-memory killer" in lost.describe()
    finally:
        other.kill()
        other.wait()
        for process in (killed, failed):
            if process.is_alive():
                process.kill()
            process.join()


def test_workers_forked_inside_the_block_ignore_sigint():
    fork = multiprocessing.get_context("fork")
    with workers_ignore_sigint():
        worker = fork.Process(target=_sleep, args=(1.0,))
        worker.start()
    try:
        time.sleep(0.2)
        os.kill(worker.pid, signal.SIGINT)
        worker.join(timeout=10)
        assert worker.exitcode == 0  # slept to the end
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process's handler is back
    finally:
        if worker.is_alive():
            worker.kill()


def test_the_watch_calls_back_once_from_its_thread():
    fork = multiprocessing.get_context("fork")
    seen = []
    worker = fork.Process(target=_sleep, args=(0.3, 5))
    with WorkerWatch(seen.append, interval=0.05):
        worker.start()
        _until(lambda: seen)
        time.sleep(0.2)
    worker.join()
    assert seen == [LostWorker(worker.pid, None, 5)]
