"""``dvt-serve`` (``python -m dvt_ms serve``): classify images sent over HTTP, with real early exit.

    dvt-serve --ckpt demo/dvt_digits_demo.ckpt -c configs/dvt_digits_demo.yaml --port 8000
    dvt-serve --exported outputs/export --budget 1.0 --max_batch 32 --max_wait_ms 5
    curl --data-binary @digit.png http://127.0.0.1:8000/v1/classify

Serves a checkpoint (``--ckpt``) or an export folder (``--exported``: MindIR or ONNX, as dvt-predict picks) with
the thresholds of ``--thresholds`` / ``--budget`` (else the stored calibrated ones). ``POST /v1/classify`` takes
one image file's bytes, or a multipart form of image files, and answers what dvt-predict writes per image;
``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /docs`` (OpenAPI). ``--batching exit`` (default) gathers
the images of many requests into each exit's batches; ``--batching request`` runs each request on its own.
``--backend ray`` runs each exit as a Ray Serve deployment (``--replicas 2,1,1``, ``--ray_address``; see
:mod:`~dvt_ms.serve.ray_app`) behind the same HTTP application. SIGTERM or Ctrl-C: stop accepting, answer what is
in flight, exit 0. Needs the serve extra (``pip install -e ".[serve]"``), and the ray extra for ``--backend ray``
(``pip install -e ".[ray]"``).
Exit status: 0 when stopped by a signal, 1 when the server cannot start or its model fails, 2 for bad usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from ..checkpoint import CheckpointError
from ..command import run_command
from ..data import DataError
from ..device import DeviceError
from ..inference.operating_point import ThresholdError
from ..options import ServeSettings, parse_command
from .batcher import Classifier, ExitBatcher, RequestBatcher
from .errors import ManifestError, ServeError, ServeUnavailable
from .predictor import build_predictor

__all__ = ["PIP", "RAY_PIP", "ServeSummary", "main", "require_ray_extra", "require_serve_extra", "serve"]

PROG = "dvt-serve"
PIP = 'pip install -e ".[serve]"  (or: pip install fastapi uvicorn httptools python-multipart prometheus_client)'
#: import name -> package of what the HTTP server needs
RAY_PIP = 'pip install -e ".[ray]"  (or: pip install "ray[serve]")'
HTTP_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart",
                "prometheus_client": "prometheus_client"}

log = logging.getLogger(__name__)


def require_serve_extra() -> None:
    """Raise :class:`~dvt_ms.serve.errors.ServeUnavailable` with the pip command unless every package of the
    ``serve`` extra imports."""
    missing = []
    for module, package in HTTP_MODULES.items():
        try:
            import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ServeUnavailable(f"dvt-serve needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                               f"not installed: {PIP}")


def require_ray_extra() -> None:
    """Raise :class:`~dvt_ms.serve.errors.ServeUnavailable` with the pip command unless Ray Serve imports."""
    try:
        import_module("ray.serve")
    except ImportError:
        raise ServeUnavailable(f"dvt-serve --backend ray needs Ray Serve, which is not installed: {RAY_PIP}") from None


@dataclass
class ServeSummary:
    """How a server run ended: the address it served, requests answered by status, images per exit, the signal
    that stopped it."""

    url: str
    requests: dict[str, int]
    images_per_exit: list[int]
    stopped_by: str | None

    def describe(self) -> str:
        answered = sum(self.requests.values())
        codes = ", ".join(f"{n} x {code}" for code, n in sorted(self.requests.items()))
        return (f"served {self.url}: {answered} classify requests ({codes or 'none'}), images per exit "
                f"{self.images_per_exit}; stopped by {self.stopped_by or 'request'}")


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto named: asyncio sets TCP_NODELAY on accepted connections only when the listener says IPPROTO_TCP;
        # without it a kept-alive response's body waits for the client's delayed ACK (about 40 ms)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped in order by SIGINT / SIGTERM (a second SIGINT: at once) without raising the
        signal again afterwards, so the command ends with its own status."""

        stopped_by: str | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def _on_signal(self, sig: int, frame: Any) -> None:
            self.stopped_by = self.stopped_by or signal.Signals(sig).name
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    return Server


def serve(settings: ServeSettings, on_listening: Callable[[str], Any] | None = None) -> ServeSummary:
    """Serve ``settings`` until SIGINT / SIGTERM (in the main thread) and return how it went. The model is
    loaded and the port bound before anything is served (:class:`~dvt_ms.serve.errors.ServeError` and the
    loading errors otherwise); ``on_listening(url)`` is called once the server accepts connections."""
    require_serve_extra()
    if settings.backend == "ray":
        require_ray_extra()
    import uvicorn

    from .app import Service, create_app
    from .metrics import ServeMetrics

    predictor = build_predictor(settings)
    engine = predictor.engine
    top_k = min(settings.top_k, predictor.num_classes)
    metrics = ServeMetrics(engine.num_exits, settings.max_batch)
    failure: list[BaseException] = []
    server_box: list[Any] = []

    def on_fatal(err: BaseException) -> None:  # the model worker died: stop serving
        failure.append(err)
        if server_box:
            server_box[0].should_exit = True

    common = {"max_batch": settings.max_batch, "max_queue": settings.max_queue, "top_k": top_k,
              "observer": metrics, "on_fatal": on_fatal}
    if settings.backend == "ray":
        batcher: Classifier = _ray_chain(settings, engine.num_exits, metrics, on_fatal)
    elif settings.batching == "exit":
        batcher = ExitBatcher(engine, max_wait_ms=settings.max_wait_ms, **common)
    else:
        batcher = RequestBatcher(engine, **common)
    batching = f"{settings.batching} (ray)" if settings.backend == "ray" else settings.batching
    service = Service(predictor, batcher, metrics, top_k, int(settings.max_body_mb * 1024 * 1024),
                      batching, settings.num_parallel_workers, settings.warmup == "all")
    sock = _listen(settings.host, settings.port)
    url = _url(sock)
    config = uvicorn.Config(create_app(service), log_config=None, log_level="warning", access_log=False,
                            lifespan="on", loop="asyncio")
    server = _server_class()(config)
    server_box.append(server)
    log.info("%s: serving %s (%s) on %s with --batching %s, thresholds %s (%s)", PROG, predictor.model,
             predictor.source, url, batching, ", ".join(f"{t:.4f}" for t in engine.thresholds[:-1]),
             predictor.thresholds_chosen_by)
    log.info("listening on %s (POST /v1/classify, GET /healthz, /metrics, /docs)", url)
    if on_listening is not None:
        on_listening(url)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    if failure:
        raise ServeError(f"the model worker failed: {type(failure[0]).__name__}: {failure[0]}")
    if not server.started:
        raise ServeError(f"the server on {url} did not start (see the messages above)")
    return ServeSummary(url, metrics.requests_by_code(), metrics.images_by_exit(), server.stopped_by)


def _ray_chain(settings: ServeSettings, num_exits: int, metrics: Any,
               on_fatal: Callable[[BaseException], Any]) -> Classifier:
    """The exits deployed on the Ray cluster of ``settings.ray_address`` (joined here, in the main thread), as the
    classifier of the HTTP application; stopping it deletes the deployments and leaves the cluster."""
    import ray
    from ray import serve

    from .ray_app import APP_NAME, RayChain, exit_chain, replica_counts

    replica_counts(settings.replicas, num_exits)  # a bad --replicas before anything starts
    try:
        ray.init(address=settings.ray_address, logging_level=logging.WARNING, ignore_reinit_error=True)
        serve.start(proxy_location="Disabled")
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ServeError(f"cannot join the Ray cluster {settings.ray_address or '(local)'}: {err}") from None
    log.info("deploying %d exits on Ray (replicas %s)", num_exits,
             ",".join(map(str, replica_counts(settings.replicas, num_exits))))

    def connect() -> Any:
        return serve.run(exit_chain(settings, num_exits), name=APP_NAME, route_prefix=None)

    def disconnect() -> None:
        serve.delete(APP_NAME)
        ray.shutdown()

    return RayChain(connect, max_batch=settings.max_batch, max_queue=settings.max_queue, observer=metrics,
                    on_fatal=on_fatal, disconnect=disconnect)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dvt-serve``; returns the exit status (see :mod:`dvt_ms.command`)."""
    return run_command(PROG, lambda: parse_command(ServeSettings, argv, __doc__.split("\n\n")[0], PROG),
                       lambda settings: serve(settings).describe(),
                       (ServeError, ManifestError, ThresholdError, DataError, CheckpointError, DeviceError))


if __name__ == "__main__":
    sys.exit(main())
