"""dvt-serve over real HTTP: a server process on 127.0.0.1 (any free port) serving the digits demo checkpoint
answers as dvt-predict does for the same images, whatever the concurrent mix; bad input, size and queue limits,
disconnects, health, metrics, OpenAPI and SIGTERM. Every request loop is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

import pytest

from tests.helpers import importable
from tests.serve.conftest import (
    DEMO_CKPT,
    ServerProcess,
    _same_as_predicted,
    get,
    many_clients,
    metric,
    multipart,
    request,
)

pytestmark = pytest.mark.skipif(
    not all(importable(m) for m in ("fastapi", "uvicorn", "python_multipart", "prometheus_client")),
    reason='needs the serve extra (pip install -e ".[serve]")')


# ---- classify requests (the server process and the HTTP client are in conftest.py) ----------------------

def classify(url: str, data: bytes) -> tuple[int, object]:
    status, _, body = request(url + "/v1/classify", data, {"Content-Type": "application/octet-stream"})
    return status, json.loads(body)


def classify_form(url: str, files: Sequence[tuple[str, bytes]]) -> tuple[int, dict[str, str], object]:
    body, headers = multipart(files)
    status, answer_headers, answer = request(url + "/v1/classify", body, headers)
    return status, answer_headers, json.loads(answer)


# ---- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    """A server of the demo checkpoint with small limits, warming every batch size up to 8 before it is ready."""
    process = ServerProcess("--max_batch", "8", "--max_wait_ms", "5", "--max_body_mb", "0.05", "--top_k", "3",
                            "--max_queue", "64")
    process.first_health = get(process.url + "/healthz")[0]
    process.wait_ready()
    yield process
    process.stop()


# ---- without a model --------------------------------------------------------------------------------------

def test_without_the_serve_extra_dvt_serve_exits_1_naming_the_pip_command(monkeypatch, capsys):
    from dvt_ms.serve.server import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails
    assert main(["--ckpt", DEMO_CKPT]) == 1
    err = capsys.readouterr().err
    assert 'dvt-serve: error: dvt-serve needs uvicorn, which is not installed: pip install -e ".[serve]"' in err
    assert "Traceback" not in err


def test_bad_serve_flags_are_usage_errors(capsys):
    from dvt_ms.serve.server import main

    assert main(["--ckpt", DEMO_CKPT, "--batching", "image"]) == 2
    assert main(["--ckpt", DEMO_CKPT, "--max_body_mb", "0"]) == 2
    assert "--max_body_mb must be positive" in capsys.readouterr().err
    assert main(["--max_batch", "4"]) == 2
    assert "pass exactly one of --exported DIR" in capsys.readouterr().err


def test_a_port_in_use_is_a_clear_error(capsys):
    from dvt_ms.options import ServeSettings
    from dvt_ms.serve.errors import ServeError
    from dvt_ms.serve.server import _listen

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            _listen("127.0.0.1", port)
    assert ServeSettings(ckpt=DEMO_CKPT).batching == "exit"


def test_connections_accepted_on_the_listening_socket_send_without_delay():
    """A kept-alive answer's body must not wait for the client's delayed ACK: asyncio turns TCP_NODELAY on for the
    connections it accepts only when the listening socket names IPPROTO_TCP."""
    import asyncio

    from dvt_ms.serve.server import _listen

    async def accepted_nodelay() -> int:
        found: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            found.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listening = _listen("127.0.0.1", 0)
        server = await asyncio.start_server(on_connection, sock=listening)
        async with server:
            _, writer = await asyncio.open_connection(*listening.getsockname()[:2])
            flag = await asyncio.wait_for(found, 10)
            writer.close()
        return flag

    assert asyncio.run(accepted_nodelay()) != 0


# ---- one server ---------------------------------------------------------------------------------------------

def test_health_docs_model_and_bad_input(server, digits):
    assert server.first_health == 503  # compiling 8 batch sizes takes seconds: not ready at first
    status, _, body = get(server.url + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = get(server.url + "/openapi.json")
    spec = json.loads(body)
    assert status == 200 and {"/v1/classify", "/healthz", "/metrics", "/v1/model"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert get(server.url + "/docs")[0] == 200
    model = json.loads(get(server.url + "/v1/model")[2])
    assert model["model"] == "dvt_vit" and model["exits"] == 3 and model["max_batch"] == 8

    status, answer = classify(server.url, b"this is not an image")
    assert status == 400 and answer["detail"].startswith("cannot read image in the request body: not an image file")
    status, answer = classify(server.url, b"")
    assert status == 400 and "empty body" in answer["detail"]
    status, headers, answer = request(server.url + "/v1/classify", b"\0" * 60_000)  # over --max_body_mb 0.05
    assert status == 413 and "larger than --max_body_mb" in json.loads(answer)["detail"]
    status, _, answer = classify_form(server.url, [("notes.txt", b"hello")])
    assert status == 400 and "cannot read image notes.txt" in answer["detail"]
    body, headers = multipart([])
    status, _, answer = request(server.url + "/v1/classify", body, headers)
    assert status == 400 and "holds no file" in json.loads(answer)["detail"]


def test_single_images_and_forms_answer_as_dvt_predict(server, digits, predicted):
    names = sorted(predicted)[::25][:18]
    for name in names[:6]:
        status, answer = classify(server.url, (digits / name).read_bytes())
        assert status == 200
        _same_as_predicted(answer, predicted[name])
    files = [(name, (digits / name).read_bytes()) for name in names[6:]]
    files.insert(3, ("broken.png", b"\x89PNG\r\n\x1a\n broken"))
    status, _, answers = classify_form(server.url, files)
    assert status == 200 and isinstance(answers, list) and len(answers) == len(files)
    assert answers[3]["exit"] is None and "cannot read image broken.png" in answers[3]["error"]
    for (name, _), answer in zip(files, answers, strict=True):
        if name != "broken.png":
            _same_as_predicted(answer, predicted[name])
    text = get(server.url + "/metrics")[2].decode()
    assert metric(text, "dvt_serve_requests_total", code="200") >= 7
    assert metric(text, "dvt_serve_errors_total", reason="unreadable_image") >= 1
    answered = sum(metric(text, "dvt_serve_images_total", exit=str(k)) for k in (1, 2, 3))
    assert answered >= 6 + len(names) - 6
    assert metric(text, "dvt_serve_exit_batch_images_count", exit="1") >= 1
    assert metric(text, "dvt_serve_queue_wait_seconds_count", exit="1") >= answered
    assert metric(text, "dvt_serve_request_seconds_count") >= 7 and metric(text, "dvt_serve_ready") == 1


# ---- the acceptance test: 450 digits from 16 concurrent clients ---------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("batching", ["exit", "request"])
def test_450_digits_from_16_concurrent_clients_answer_as_dvt_predict(digits, predicted, batching):
    process = ServerProcess("--batching", batching, "--max_batch", "16", "--max_wait_ms", "5", "--top_k", "3")
    try:
        process.wait_ready()
        names = sorted(predicted)
        assert len(names) == 450
        start = time.monotonic()
        answers = many_clients(process.url, digits, names, clients=16)
        seconds = time.monotonic() - start
        failures = [f"{name}: {status} {answer}" for name, (status, _, answer) in answers.items() if status != 200]
        assert not failures, failures[:5]
        assert len(answers) == 450
        for name in names:
            _same_as_predicted(answers[name][2], predicted[name])
        text = get(process.url + "/metrics")[2].decode()
        per_exit = [metric(text, "dvt_serve_images_total", exit=str(k)) for k in (1, 2, 3)]
        want = [sum(r["exit"] == k for r in predicted.values()) for k in (1, 2, 3)]
        assert per_exit == want and all(want)
        assert metric(text, "dvt_serve_requests_total", code="200") == 450
        if batching == "exit":  # later exits mixed the images of several requests
            batches = metric(text, "dvt_serve_exit_batch_images_count", exit="1")
            assert batches < 450 and metric(text, "dvt_serve_exit_batch_images_sum", exit="1") == 450
    finally:
        status, out = process.stop()
    assert status == 0 and "stopped by SIGTERM" in out and "450 x 200" in out, out
    assert seconds < 300


# ---- limits, disconnects and SIGTERM -----------------------------------------------------------------------

@pytest.mark.slow
def test_a_full_queue_is_503_a_lost_client_leaves_nothing_and_sigterm_drains(digits):
    # batches of 8 never fill from at most 4 queued images: every image waits the 1.5 s
    process = ServerProcess("--max_batch", "8", "--max_wait_ms", "1500", "--max_queue", "4", "--warmup", "none")
    try:
        process.wait_ready()
        images = [(name, (digits / name).read_bytes()) for name in sorted(os.listdir(digits))[:6]]
        first: list = []
        waiting = threading.Thread(target=lambda: first.append(classify_form(process.url, images[:3])))
        waiting.start()
        deadline = time.monotonic() + 5
        while metric(get(process.url + "/metrics")[2].decode(), "dvt_serve_images_in_flight") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, headers, answer = classify_form(process.url, images[3:5])
        assert status == 503 and headers.get("retry-after", headers.get("Retry-After")) == "1"
        assert "would exceed --max_queue 4" in answer["detail"]
        waiting.join(60)
        assert first[0][0] == 200 and [a["exit"] for a in first[0][2]] != [None] * 3

        # a client that goes away while its image waits: dropped from the queue, the server goes on
        body = images[5][1]
        with socket.create_connection(("127.0.0.1", int(process.url.rsplit(":", 1)[1])), timeout=10) as raw:
            raw.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.monotonic() + 5
            while metric(get(process.url + "/metrics")[2].decode(), "dvt_serve_images_in_flight") < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        deadline = time.monotonic() + 1.0  # well before its 1.5 s wait would have run it
        text = get(process.url + "/metrics")[2].decode()
        while metric(text, "dvt_serve_images_in_flight") > 0:
            assert time.monotonic() < deadline, "the lost client's image is still queued"
            time.sleep(0.02)
            text = get(process.url + "/metrics")[2].decode()
        assert metric(text, "dvt_serve_errors_total", reason="disconnected") == 1
        assert sum(metric(text, "dvt_serve_images_total", exit=str(k)) for k in (1, 2, 3)) == 3
        assert get(process.url + "/healthz")[0] == 200

        # SIGTERM while a request waits: it is answered, then the process exits 0 and listens no more
        late: list = []
        waiting = threading.Thread(target=lambda: late.append(classify(process.url, images[0][1])))
        waiting.start()
        time.sleep(0.3)
        process.process.send_signal(signal.SIGTERM)
        waiting.join(60)
        status, out = process.stop(timeout=60)
    finally:
        process.stop()
    assert late and late[0][0] == 200 and late[0][1]["exit"] in (1, 2, 3)
    assert status == 0 and "stopped by SIGTERM" in out, out + "".join(process.lines[-20:])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(process.url.rsplit(":", 1)[1])), timeout=2).close()
