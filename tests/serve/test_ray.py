"""dvt-serve --backend ray: the exits as Ray Serve deployments on a local two-node Ray cluster answer the 450 demo
digits from 16 concurrent clients as dvt-predict does; a replica killed while requests are in flight costs those
requests a 503, never a lost answer. Every request loop is bounded."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import urllib.error
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers import importable
from tests.serve import test_http
from tests.serve.test_http import DEMO_CKPT, ServerProcess, _same_as_predicted, get, metric, request

digits = test_http.digits  # the fixtures of the 450 digits and of dvt-predict's records
predicted = test_http.predicted

pytestmark = pytest.mark.skipif(
    not all(importable(m) for m in ("fastapi", "uvicorn", "python_multipart", "prometheus_client")),
    reason='needs the serve extra (pip install -e ".[serve]")')
needs_ray = pytest.mark.skipif(not importable("ray"), reason='needs the ray extra (pip install -e ".[ray]")')


def test_without_ray_backend_ray_exits_1_naming_the_pip_command(monkeypatch, capsys):
    from dvt_ms.serve.server import main

    monkeypatch.setitem(sys.modules, "ray.serve", None)  # import ray.serve now fails
    assert main(["--ckpt", DEMO_CKPT, "--backend", "ray"]) == 1
    err = capsys.readouterr().err
    assert 'needs Ray Serve, which is not installed: pip install -e ".[ray]"' in err and "Traceback" not in err


def test_bad_replicas_are_usage_errors(capsys):
    from dvt_ms.serve.server import main

    assert main(["--ckpt", DEMO_CKPT, "--backend", "ray", "--replicas", "2,0,1"]) == 2
    assert "--replicas takes positive counts" in capsys.readouterr().err


@needs_ray
def test_replica_counts():
    from dvt_ms.serve.errors import ServeError
    from dvt_ms.serve.ray_app import replica_counts

    assert replica_counts([2, 1, 1], 3) == [2, 1, 1] and replica_counts([2], 3) == [2, 2, 2]
    with pytest.raises(ServeError, match="one positive count per exit"):
        replica_counts([1, 1], 3)


# ---- a two-node cluster ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two nodes on 127.0.0.1 (2 logical CPUs each), this process connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1"})
    try:
        nodes.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, logging_level="WARNING")
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def _send(url: str, folder: Path, names: Sequence[str], clients: int, on_answer=None) -> dict[str, list]:
    """POST every image of ``names`` once from ``clients`` threads: name -> [status, answer]. A timeout or a
    broken connection is recorded as status 0."""
    todo: queue.Queue[str] = queue.Queue()
    for name in names:
        todo.put(name)
    answers: dict[str, list] = {}

    def client() -> None:
        while True:
            try:
                name = todo.get_nowait()
            except queue.Empty:
                return
            try:
                status, _, body = request(url + "/v1/classify", (folder / name).read_bytes(),
                                          {"Content-Type": "application/octet-stream"}, timeout=120.0)
                answers[name] = [status, json.loads(body)]
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
                answers[name] = [0, f"{type(err).__name__}: {err}"]
            if on_answer is not None:
                on_answer(len(answers))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    return answers


def _replicas(deployment: str) -> list[str]:
    from ray.util import list_named_actors

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"])


def _replica_nodes() -> set[str]:
    from ray.util.state import list_actors

    return {a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if (a.name or "").startswith("SERVE_REPLICA::")}


@needs_ray
@pytest.mark.slow
def test_450_digits_on_a_two_node_cluster_and_a_killed_replica(cluster, digits, predicted):
    import ray

    timings: dict[str, float] = {}
    start = time.monotonic()
    process = ServerProcess("--backend", "ray", "--ray_address", cluster.address, "--replicas", "2,1,1",
                            "--max_batch", "8", "--max_wait_ms", "5", "--top_k", "3")
    try:
        process.wait_ready(timeout=600)
        timings["start"] = time.monotonic() - start
        assert len(_replicas("exit1")) == 2 and len(_replicas("exit2")) == 1 and len(_replicas("exit3")) == 1
        assert len(_replica_nodes()) == 2  # the replicas are spread over both nodes
        names = sorted(predicted)
        assert len(names) == 450

        start = time.monotonic()
        answers = _send(process.url, digits, names, clients=16)
        timings["450 images"] = time.monotonic() - start
        assert sorted(answers) == names
        for name in names:
            status, answer = answers[name]
            assert status == 200, (name, status, answer)
            _same_as_predicted(answer, predicted[name])
        text = get(process.url + "/metrics")[2].decode()
        per_exit = [metric(text, "dvt_serve_images_total", exit=str(k)) for k in (1, 2, 3)]
        assert per_exit == [sum(r["exit"] == k for r in predicted.values()) for k in (1, 2, 3)]

        # kill one replica of exit 1 while 16 clients have requests in flight
        killed = threading.Event()
        victim = _replicas("exit1")[0]

        def kill_after(answered: int) -> None:
            if answered >= 40 and not killed.is_set():
                killed.set()
                ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

        start = time.monotonic()
        answers = _send(process.url, digits, names[:240], clients=16, on_answer=kill_after)
        timings["240 images, one replica killed"] = time.monotonic() - start
        assert killed.is_set() and sorted(answers) == names[:240]
        lost = {name: a for name, a in answers.items() if a[0] not in (200, 503)}
        assert not lost, list(lost.items())[:5]
        refused = [name for name, (status, _) in answers.items() if status == 503]
        for name, (status, answer) in answers.items():
            if status == 200:
                _same_as_predicted(answer, predicted[name])
            else:
                assert "replica was lost" in answer["detail"] or "retry" in answer["detail"].lower(), answer
        text = get(process.url + "/metrics")[2].decode()
        assert metric(text, "dvt_serve_errors_total", reason="unavailable") == len(refused)
        timings["503s"] = len(refused)

        # the survivors (and the replica Serve starts again) answer what comes next
        for name in names[240:250]:
            status, _, body = request(process.url + "/v1/classify", (digits / name).read_bytes(),
                                      {"Content-Type": "application/octet-stream"}, timeout=120.0)
            assert status == 200
            _same_as_predicted(json.loads(body), predicted[name])
    finally:
        status, out = process.stop(timeout=120)
        print("timings:", timings)
    assert status == 0 and "stopped by SIGTERM" in out, out + "".join(process.lines[-30:])
