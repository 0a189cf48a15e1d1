"""dvt-serve --backend ray: the exits as Ray Serve deployments on a local two-node Ray cluster answer the 450 demo
digits from 16 concurrent clients as dvt-predict does; a replica killed while requests are in flight costs those
requests a 503 with Retry-After, never a lost answer; SIGTERM stops the server with status 0. Every request loop
is bounded. The cluster's nodes are started by this process (``ray.cluster_utils.Cluster``) and the server joins
it with ``--ray_address``."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import importable
from tests.serve.conftest import DEMO_CKPT, ServerProcess, _same_as_predicted, get, many_clients, metric

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
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        # On Linux, Ray replaces 127.0.0.1 in an address by the machine's IP (ray.init would then look for the
        # GCS where it does not listen) unless cluster mode is off, as it is on macOS and Windows. The variable
        # reaches every Ray process started from here (nodes, replicas, dvt-serve); Ray read it already in this one.
        patch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1"})
        try:
            nodes.add_node(num_cpus=2, node_ip_address="127.0.0.1")
            nodes.wait_for_nodes(timeout=60)
            ray.init(address=nodes.address, logging_level="WARNING")
            yield nodes
        finally:
            ray.shutdown()
            nodes.shutdown()


def _replicas(deployment: str) -> list[str]:
    from ray.util import list_named_actors

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"])


def _replica_nodes() -> set[str]:
    from ray.util.state import list_actors

    return {a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if (a.name or "").startswith("SERVE_REPLICA::")}


def _post_all(url: str, folder: Path, names: Sequence[str],
              **kwargs: Any) -> dict[str, tuple[int, dict[str, str], Any]]:
    """:func:`many_clients` from 16 clients, every image of ``names`` answered within 5 minutes."""
    answers = many_clients(url, folder, names, clients=16, deadline_s=300.0, **kwargs)
    assert sorted(answers) == sorted(names), f"{len(names) - len(answers)} images unanswered after 5 minutes"
    return answers


@needs_ray
@pytest.mark.slow
def test_450_digits_on_a_two_node_cluster_and_a_killed_replica(cluster, digits, request):
    import ray

    timings: dict[str, float] = {}
    start = time.monotonic()
    process = ServerProcess("--backend", "ray", "--ray_address", cluster.address, "--replicas", "2,1,1",
                            "--max_batch", "8", "--max_wait_ms", "5", "--top_k", "3")
    try:
        predicted = request.getfixturevalue("predicted")  # dvt-predict runs while the replicas start
        process.wait_ready(timeout=600)
        timings["start s"] = time.monotonic() - start
        assert len(_replicas("exit1")) == 2 and len(_replicas("exit2")) == 1 and len(_replicas("exit3")) == 1
        assert len(_replica_nodes()) == 2  # the replicas are spread over both nodes
        names = sorted(predicted)
        assert len(names) == 450

        start = time.monotonic()
        answers = _post_all(process.url, digits, names)
        timings["450 images s"] = time.monotonic() - start
        for name in names:
            status, _, answer = answers[name]
            assert status == 200, (name, status, answer)
            _same_as_predicted(answer, predicted[name])
        text = get(process.url + "/metrics")[2].decode()
        per_exit = [metric(text, "dvt_serve_images_total", exit=str(k)) for k in (1, 2, 3)]
        assert per_exit == [sum(r["exit"] == k for r in predicted.values()) for k in (1, 2, 3)]

        # kill one replica of exit 1 while 16 clients have requests in flight
        killed, kill_failed = threading.Event(), []
        victim = _replicas("exit1")[0]

        def kill_after(answered: int) -> None:
            if answered >= 40 and not killed.is_set():
                killed.set()
                try:
                    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
                except Exception as err:  # reported by the test, not lost with the client's thread
                    kill_failed.append(err)

        start = time.monotonic()
        answers = _post_all(process.url, digits, names[:240], on_answer=kill_after)
        timings["240 images, one replica killed s"] = time.monotonic() - start
        assert killed.is_set() and not kill_failed, kill_failed
        assert victim not in _replicas("exit1")
        lost = {name: a for name, a in answers.items() if a[0] not in (200, 503)}
        assert not lost, list(lost.items())[:5]
        refused = [name for name, (status, _, _) in answers.items() if status == 503]
        for name, (status, headers, answer) in answers.items():
            if status == 200:
                _same_as_predicted(answer, predicted[name])
            else:
                assert "a Ray replica was lost" in answer["detail"], answer
                assert {k.lower(): v for k, v in headers.items()}.get("retry-after") == "1", headers
        text = get(process.url + "/metrics")[2].decode()
        assert metric(text, "dvt_serve_errors_total", reason="unavailable") == len(refused)
        timings["answered"], timings["503"] = len(answers) - len(refused), len(refused)

        # the survivors (and the replica Serve starts again) answer what comes next
        answers = many_clients(process.url, digits, names[240:250], clients=1, deadline_s=300.0)
        assert sorted(answers) == names[240:250]
        for name, (status, _, answer) in answers.items():
            assert status == 200, (name, status, answer)
            _same_as_predicted(answer, predicted[name])
    finally:
        status, out = process.stop(timeout=120)
        print("timings:", timings)
    assert status == 0 and "stopped by SIGTERM" in out, out + "".join(process.lines[-30:])


@needs_ray
def test_a_replica_runs_the_lone_image_of_a_one_image_request_unpadded():
    from dvt_ms.options import ServeSettings, parse_command
    from dvt_ms.serve.ray_app import ExitReplica, Forward

    settings = parse_command(ServeSettings, ["--ckpt", DEMO_CKPT, "--max_batch", "8", "--warmup", "none",
                                             "--thresholds", "1,1"], "test", "test")  # nothing leaves early
    replicas = [ExitReplica(settings, 0, next_exit=object()), ExitReplica(settings, 1, next_exit=object())]
    rows: list[int] = []

    def counted(run_stage):
        def run(k, images, *args, **kwargs):
            rows.append(len(images))
            return run_stage(k, images, *args, **kwargs)
        return run

    for replica in replicas:
        replica.engine.run_stage = counted(replica.engine.run_stage)
    engine = replicas[0].engine
    images = np.random.default_rng(0).standard_normal((2, *engine.image_shape)).astype(np.float32)
    padded = engine.padded_size(1, 8)
    assert padded > 1  # an image of a larger request, alone in its exit batch, is padded as the engine pads a subset

    alone = replicas[0]._run([Forward(images[0], None, None, True)])
    assert rows == [1] and alone[0].alone  # exit 2 learns that the image is alone too
    replicas[1]._run(alone)
    assert rows == [1, 1]
    rows.clear()
    of_two = replicas[0]._run([Forward(images[0], None, None, False)])
    assert rows == [padded] and not of_two[0].alone
    rows.clear()
    mixed = replicas[0]._run([Forward(images[0], None, None, True), Forward(images[1], None, None, False)])
    assert rows == [engine.padded_size(2, 8)] and [m.alone for m in mixed] == [True, False]
    for other in (of_two[0], mixed[0]):  # image 0's state for exit 2 whatever its batch
        for got, want in ((other.features, alone[0].features), (other.relations, alone[0].relations)):
            if want is not None:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
