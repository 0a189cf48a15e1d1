"""Volume: dvt-serve over HTTP on 127.0.0.1 under thousands of requests from concurrent clients, as a service
meets them: image files of every mode PIL writes, 1x1 and extreme-aspect images, all-black and all-white ones,
multipart forms mixing readable and unreadable files, bodies that are no image at all, empty bodies, and clients
that go away before their answer. Every readable image is answered as dvt-predict answers it, every bad body
is a 400 naming the reader's problem, nothing stays in flight, and the server's memory stays flat. The request
count is fixed."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import photo_like, write_mode_zoo
from tests.serve.conftest import ServerProcess, _same_as_predicted, get, metric, multipart, predict_records

pytestmark = pytest.mark.slow

REQUESTS = 3000
CLIENTS = 8
DISCONNECT_EVERY = 150  # one request in this many is sent by a client that leaves before its answer


def _bad_bodies(zoo: Path) -> dict[str, bytes]:
    """Bodies that are not a readable image, by what they are."""
    png = (zoo / "flat_0.png").read_bytes()
    jpeg = io.BytesIO()
    Image.fromarray(photo_like(64, 48, np.random.default_rng(3))).save(jpeg, format="JPEG")
    return {"random bytes": np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
            "text": b"a note, not an image\n" * 20,
            "truncated png": png[: len(png) // 2],
            "jpeg header only": jpeg.getvalue()[:40],
            "png signature only": png[:8]}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """Image files of every mode, size edge and magnitude edge, plus photo-like images of ImageNet's shapes."""
    root = tmp_path_factory.mktemp("zoo")
    write_mode_zoo(str(root), seed=4)
    rng = np.random.default_rng(5)
    for i, (w, h) in enumerate(((500, 375), (375, 500), (640, 480), (500, 333))):
        Image.fromarray(photo_like(w, h, rng)).save(root / f"photo_{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def zoo_predicted(zoo, tmp_path_factory) -> dict[str, dict]:
    """dvt-predict's record of every zoo file, by file name."""
    records = predict_records(zoo, tmp_path_factory.mktemp("zoo_predict"))
    assert len(records) == len(os.listdir(zoo)) and all(r["error"] is None for r in records.values())
    return records


class Plan:
    """What request ``i`` sends and what its answer must be: one zoo file as the body (most), a form of zoo
    files with a bad one among them, a bad body, or a client that disconnects."""

    def __init__(self, zoo: Path, predicted: dict[str, dict]) -> None:
        self.names = sorted(predicted)
        self.files = {name: (zoo / name).read_bytes() for name in self.names}
        self.predicted = predicted
        self.bad = sorted(_bad_bodies(zoo).items())

    def kind(self, i: int) -> str:
        if i % DISCONNECT_EVERY == DISCONNECT_EVERY // 2:
            return "disconnect"
        if i % 25 == 3:
            return "bad"
        if i % 10 == 5:
            return "form"
        return "image"

    def form(self, i: int) -> list[tuple[str, bytes]]:
        """2-4 zoo files and, in every other form, a bad file among them."""
        names = [self.names[(i * 7 + j) % len(self.names)] for j in range(2 + i % 3)]
        files = [(name, self.files[name]) for name in names]
        if i % 20 == 5:
            what, data = self.bad[i % len(self.bad)]
            files.insert(1, (f"bad {what}.png", data))
        return files


def _post(connection: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> tuple[int, object]:
    connection.request("POST", "/v1/classify", body, headers)
    answer = connection.getresponse()
    return answer.status, json.loads(answer.read() or b"null")


def _disconnect(port: int, body: bytes) -> None:
    """Send a whole request and leave before the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: soak\r\nContent-Type: image/png\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def _check(plan: Plan, i: int, status: int, answer: object, sent: list[tuple[str, bytes]] | str) -> None:
    if plan.kind(i) == "bad":
        assert status == 400, (i, sent, answer)
        assert answer["detail"].startswith("cannot read image in the request body"), (i, sent, answer)
        return
    assert status == 200, (i, answer)
    if isinstance(sent, str):
        _same_as_predicted(answer, plan.predicted[sent])
        return
    assert isinstance(answer, list) and len(answer) == len(sent)
    for (name, _), record in zip(sent, answer, strict=True):
        if name.startswith("bad "):
            assert record["exit"] is None and record["error"].startswith(f"cannot read image {name}"), record
        else:
            _same_as_predicted(record, plan.predicted[name])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_thousands_of_requests_of_every_kind_from_concurrent_clients(zoo, zoo_predicted):
    plan = Plan(zoo, zoo_predicted)
    process = ServerProcess("--max_batch", "16", "--max_wait_ms", "3", "--top_k", "3", "--max_queue", "256")
    try:
        process.wait_ready()
        port = int(process.url.rsplit(":", 1)[1])
        next_request = iter(range(REQUESTS))
        lock = threading.Lock()
        done = {"answered": 0, "disconnected": 0, "bad": 0, "images": 0}
        failures: list[BaseException] = []
        rss: list[float] = []

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                while not failures:
                    with lock:
                        i = next(next_request, None)
                    if i is None:
                        return
                    if i == REQUESTS // 3:
                        rss.append(_rss_mb(process.process.pid))
                    kind = plan.kind(i)
                    if kind == "disconnect":
                        _disconnect(port, plan.files[plan.names[i % len(plan.names)]])
                        with lock:
                            done["disconnected"] += 1
                        continue
                    if kind == "form":
                        sent: list[tuple[str, bytes]] | str = plan.form(i)
                        body, headers = multipart(sent)
                        images = sum(not name.startswith("bad ") for name, _ in sent)
                    elif kind == "bad":
                        what, body = plan.bad[i % len(plan.bad)]
                        sent, headers, images = what, {"Content-Type": "application/octet-stream"}, 0
                    else:
                        sent = plan.names[i % len(plan.names)]
                        body, headers, images = plan.files[sent], {"Content-Type": "image/png"}, 1
                    status, answer = _post(connection, body, headers)
                    _check(plan, i, status, answer, sent)
                    with lock:
                        done["answered"] += 1
                        done["bad"] += kind == "bad"
                        done["images"] += images
            except BaseException as err:  # reported in the main thread
                failures.append(err)
            finally:
                connection.close()

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
        assert not any(t.is_alive() for t in threads), "the clients did not finish"
        if failures:
            raise failures[0]
        assert done["answered"] + done["disconnected"] == REQUESTS and done["disconnected"] >= REQUESTS // 200

        # nothing stays behind: every admitted image is answered or dropped, and the server still answers
        deadline = 60
        text = get(process.url + "/metrics")[2].decode()
        while metric(text, "dvt_serve_images_in_flight") > 0 and deadline > 0:
            threading.Event().wait(0.1)
            deadline -= 0.1
            text = get(process.url + "/metrics")[2].decode()
        assert metric(text, "dvt_serve_images_in_flight") == 0
        served = metric(text, "dvt_serve_requests_total", code="200")  # and lost clients answered before noticed
        assert done["answered"] - done["bad"] <= served <= done["answered"] - done["bad"] + done["disconnected"]
        assert metric(text, "dvt_serve_requests_total", code="400") == done["bad"]
        left = sum(metric(text, "dvt_serve_images_total", exit=str(k)) for k in (1, 2, 3))
        # a lost client's image is answered when it ran before the server noticed, else dropped
        assert done["images"] <= left <= done["images"] + done["disconnected"]
        assert get(process.url + "/healthz")[0] == 200
        rss.append(_rss_mb(process.process.pid))
        assert rss[1] - rss[0] < 200, f"the server grew from {rss[0]:.0f} MB to {rss[1]:.0f} MB"
        status, out = process.stop(timeout=60)
    finally:
        process.stop()
    assert status == 0, out + "".join(process.lines[-20:])
