"""What the dvt-serve tests over real HTTP share: a server process on 127.0.0.1 (:class:`ServerProcess`), a small
HTTP client (:func:`request`, :func:`get`), a Prometheus sample reader (:func:`metric`), the 450 demo digits and
dvt-predict's record of each (the ``digits`` / ``predicted`` fixtures, one set per test module), the check that an
answer is dvt-predict's (:func:`_same_as_predicted`) and concurrent clients posting a fixed list of images
(:func:`many_clients`). Test modules import the helpers from ``tests.serve.conftest``; the fixtures reach them
as fixtures do."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, flat_digits

DEMO_CKPT = os.path.join(REPO, "demo", "dvt_digits_demo.ckpt")
START_TIMEOUT = 240.0
CLASSIFY_TIMEOUT = 120.0  # seconds one client waits for the answer to one image


# ---- a server process and an HTTP client ----------------------------------------------------------------

class ServerProcess:
    """``python -m dvt_ms serve --port 0 ...`` in a subprocess; :attr:`url` once it listens."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])]),
               "GLOG_v": "3"}
        self.process = subprocess.Popen([sys.executable, "-m", "dvt_ms", "serve", "--ckpt", DEMO_CKPT, "--host",
                                         "127.0.0.1", "--port", "0", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.lines: list[str] = []
        self._listening: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.url = self._listening.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self.stop()
            raise AssertionError("the server did not start:\n" + "".join(self.lines[-30:])) from None

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self._listening.put(found.group(1))
        self._listening.put("")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> list[int]:
        """Poll /healthz until 200; the statuses seen."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen.append(get(self.url + "/healthz")[0])
            if seen[-1] == 200:
                return seen
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout} s: {seen[-5:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, str]:
        """Send ``sig`` and wait: (exit status, stdout)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return self.process.returncode, out or ""


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` (GET without one): (status, headers, body), an HTTP error status included."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` within 10 s; a connection that fails fails the test."""
    try:
        return request(url, timeout=10.0)
    except (urllib.error.URLError, ConnectionError) as err:
        raise AssertionError(f"GET {url}: {err}") from None


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$"
    for line in text.splitlines():
        found = re.match(pattern, line)
        if found:
            return float(found.group(1))
    raise AssertionError(f"no sample {name}{{{want}}} in the metrics")


def multipart(files: Sequence[tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    boundary = "dvt-serve-test-boundary"
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
              f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"}


# ---- the digits and what dvt-predict says of them ------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 450 validation digits as one flat folder (``<label>_<name>.png``)."""
    return flat_digits(tmp_path_factory.mktemp("digits"))


def predict_records(folder: Path, out: Path) -> dict[str, dict]:
    """dvt-predict's record (top 3) of every image of ``folder`` with the demo checkpoint, by file name."""
    from dvt_ms.serve.predict import JSONL_NAME
    from dvt_ms.serve.predict import main as predict_main

    assert predict_main(["--ckpt", DEMO_CKPT, "--images", str(folder), "--top_k", "3", "--examples_per_exit", "0",
                         "--num_parallel_workers", "0", "--output_dir", str(out)]) == 0
    with open(out / JSONL_NAME, encoding="utf-8") as f:
        return {os.path.basename(r["path"]): r for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def predicted(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """dvt-predict's record of every digit, by file name."""
    return predict_records(digits, tmp_path_factory.mktemp("predict"))


def _same_as_predicted(answer: dict, want: dict) -> None:
    """Assert that the server's ``answer`` for one image is dvt-predict's record ``want`` of it."""
    assert set(answer) == {"exit", "gflops", "top_k", "error"} and answer["error"] is None
    assert answer["exit"] == want["exit"] and answer["gflops"] == pytest.approx(want["gflops"])
    assert [t["class"] for t in answer["top_k"]] == [t["class"] for t in want["top_k"]]
    assert [t["name"] for t in answer["top_k"]] == [t["name"] for t in want["top_k"]]
    assert [t["probability"] for t in answer["top_k"]] == pytest.approx([t["probability"] for t in want["top_k"]],
                                                                        abs=1e-5)


# ---- concurrent clients ------------------------------------------------------------------------------------

def many_clients(url: str, folder: Path, names: Sequence[str], clients: int, *,
                 on_answer: Callable[[int], Any] | None = None,
                 deadline_s: float = 600.0) -> dict[str, tuple[int, dict[str, str], Any]]:
    """POST each image of ``names`` (files of ``folder``) once to ``url``/v1/classify from ``clients`` threads
    taking the next name in turn: name -> (status, headers, JSON answer). A request that times out or loses its
    connection is status 0 with the error as its answer; a name still unanswered after ``deadline_s`` is
    missing from the result. ``on_answer(n)`` is called in the client's thread after the ``n``-th answer."""
    todo: queue.Queue[str] = queue.Queue()
    for name in names:
        todo.put(name)
    answers: dict[str, tuple[int, dict[str, str], Any]] = {}
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                name = todo.get_nowait()
            except queue.Empty:
                return
            try:
                status, headers, body = request(url + "/v1/classify", (folder / name).read_bytes(),
                                                {"Content-Type": "application/octet-stream"}, CLASSIFY_TIMEOUT)
                answer = (status, headers, json.loads(body))
            except (urllib.error.URLError, OSError) as err:  # ConnectionError and TimeoutError are OSErrors
                answer = (0, {}, f"{type(err).__name__}: {err}")
            with lock:
                answers[name] = answer
                answered = len(answers)
            if on_answer is not None:
                on_answer(answered)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    with lock:
        return dict(answers)
