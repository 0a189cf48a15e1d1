"""``dvt-serve --backend ray``: the exits of the cascade as a chain of Ray Serve deployments.

Each exit is a deployment (``exit1``, ``exit2``, ...) with replicas of its own (``--replicas 2,1,1``: an exit's
work is the images that reach it times its own cost per image; later exits see fewer images but cost more each).
Each replica reserves half a CPU of the cluster; the HTTP side reserves none. A replica loads the model, compiles
its exit (every batch size with ``--warmup all``) and batches the images sent to it with ``@serve.batch``
(``max_batch_size`` = ``--max_batch``, ``batch_wait_timeout_s`` = ``--max_wait_ms`` / 1000). It decides the batch
as the embedded batcher does (:class:`~dvt_ms.serve.batcher.ExitBatch`: the same padding, threshold rule and
top-k), answers the images that leave, and hands each undecided image, with its rows of the exit's features and
relations (numpy), to the next exit's deployment through a deployment handle.

The HTTP side is the application of :mod:`~dvt_ms.serve.app` over a :class:`RayChain`, the
:class:`~dvt_ms.serve.batcher.Classifier` that sends each image to ``exit1``:

* ``dvt-serve --backend ray`` serves it in its own process (uvicorn, as the embedded backend) and deploys the
  exits on the cluster of ``--ray_address`` (a local Ray instance when unset); stopping the server deletes them.
* ``serve run dvt_ms.serve.ray_app:build_app ckpt=demo/dvt_digits_demo.ckpt replicas=2,1,1`` deploys the same
  application inside Ray, behind Ray's HTTP proxy (:func:`build_app`; the arguments are dvt-serve's flags).

An image whose replica dies under it is answered 503 with ``Retry-After``
(:class:`~dvt_ms.serve.batcher.Unavailable`); Serve starts a new replica and the next requests go to the ones
alive. Needs the ray extra (``pip install -e ".[ray]"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from ..options import ServeSettings, parse_command
from .batcher import (
    BatchObserver,
    ExitBatch,
    ImageResult,
    NotAccepting,
    Outcome,
    PendingRequest,
    QueuedImage,
    QueueFull,
    TooManyImages,
    Unavailable,
    exit_batch_rows,
    warmup_sizes,
)
from .errors import ServeError
from .predictor import build_predictor

__all__ = ["APP_NAME", "ExitReplica", "Forward", "HTTPIngress", "RayChain", "build_app", "exit_chain", "replica_counts"]

log = logging.getLogger(__name__)

APP_NAME = "dvt"
_LOST = (RayActorError, BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError)


class Forward(NamedTuple):
    """One image on its way through the exits: what a replica batches, and hands to the next exit."""

    image: np.ndarray
    features: np.ndarray | None  # its rows of the previous exit's features (None: not read)
    relations: np.ndarray | None  # and of its relations
    alone: bool  # the only image of its request: run on its own, it is a batch of one (unpadded)


def replica_counts(replicas: Sequence[int], num_exits: int) -> list[int]:
    """Replicas per exit from ``--replicas``: one count per exit, or one count for every exit."""
    counts = [int(n) for n in replicas]
    if len(counts) == 1:
        counts *= num_exits
    if len(counts) != num_exits or min(counts) < 1:
        raise ServeError(f"--replicas takes one positive count per exit ({num_exits} exits), got "
                         f"{','.join(map(str, replicas))}")
    return counts


def _lost(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it, through the replicas of later exits) is a replica lost or refusing."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, _LOST):
            return True
        err = getattr(err, "cause", None) or err.__cause__
        seen += 1
    return False


# ---- one exit ----------------------------------------------------------------------------------------------

class ExitReplica:
    """A replica of exit ``k``: batches what it is sent (:meth:`__call__`), runs the exit on each batch in one
    thread, answers the images that leave and forwards the others to ``next_exit``."""

    def __init__(self, settings: ServeSettings, k: int, next_exit: DeploymentHandle | None = None) -> None:
        predictor = build_predictor(settings)
        self.engine = engine = predictor.engine
        self.k, self.max_batch = k, settings.max_batch
        self.last = k == engine.num_exits - 1
        self.threshold = None if self.last else float(engine.thresholds[k])
        self.top_k = min(settings.top_k, predictor.num_classes)
        self.needs = engine.source.needs_state(k)
        self.next_exit = next_exit
        if self.last != (next_exit is None):
            raise ServeError(f"exit {k + 1} of {engine.num_exits}: only the last exit has no next exit")
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dvt-exit{k + 1}")
        self._batch.set_max_batch_size(settings.max_batch)
        self._batch.set_batch_wait_timeout_s(settings.max_wait_ms / 1000.0)
        if settings.warmup == "all":
            self._model_thread.submit(self._warm_up).result()

    def _warm_up(self) -> None:
        """Compile this exit for every batch size it can run (the exits before it run to make its inputs)."""
        engine = self.engine
        sizes = warmup_sizes(engine, self.max_batch)
        for size in sizes:
            images = np.zeros((size, *engine.image_shape), np.float32)
            features = relations = None
            for j in range(self.k + 1):
                wants_features, wants_relations = engine.source.needs_state(j)
                _, features, relations = engine.run_stage(j, images, features if wants_features else None,
                                                          relations if wants_relations else None,
                                                          keep_state=j < self.k)
        log.info("exit %d compiled for batch sizes %s", self.k + 1, ", ".join(map(str, sizes)))

    async def __call__(self, image: np.ndarray, features: np.ndarray | None = None,
                       relations: np.ndarray | None = None, alone: bool = False) -> ImageResult:
        """Where one image leaves, and what it is, from this exit on; ``alone``: it is the only image of its
        request (run on its own, it is a whole batch, as ``dvt-predict`` runs one image: unpadded)."""
        outcome = await self._batch(Forward(np.asarray(image, np.float32), features, relations, alone))
        if isinstance(outcome, ImageResult):
            return outcome
        return await self.next_exit.remote(*outcome)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batch(self, items: list[Forward]) -> list[ImageResult | Forward]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, self._run, items)

    def _run(self, items: Sequence[Forward]) -> list[ImageResult | Forward]:
        """Run the exit on ``items``: each one's :class:`ImageResult`, or what the next exit takes."""
        answers: list[ImageResult | Forward | None] = [None] * len(items)

        def slot(i: int) -> Callable[[Outcome], None]:
            def fill(outcome: Outcome) -> None:
                answers[i] = outcome[0]
            return fill

        # each image is a request of its own here (its HTTP request is tracked by RayChain): slot 0 of it
        queued = [QueuedImage(PendingRequest(1, slot(i)), 0, item.image, item.features, item.relations)
                  for i, item in enumerate(items)]
        batch = ExitBatch(self.k, queued, exit_batch_rows(self.engine, len(items), items[0].alone, self.max_batch))
        images, features, relations = batch.inputs(*self.needs)
        logits, features, relations = self.engine.run_stage(self.k, images, features, relations,
                                                            keep_state=not self.last)
        onward = batch.scatter(logits, features, relations, self.threshold, self.top_k)
        position = {id(q.request): i for i, q in enumerate(queued)}
        for item in onward:
            i = position[id(item.request)]
            answers[i] = Forward(item.image, item.features, item.relations, items[i].alone)
        if any(answer is None for answer in answers):
            raise ServeError(f"exit {self.k + 1} left an image of its batch undecided")
        return answers


def exit_chain(settings: ServeSettings, num_exits: int) -> Any:
    """The Ray Serve application of the exits: ``exit1`` bound to ``exit2`` and so on, each with its replicas;
    calling it classifies one image."""
    counts = replica_counts(settings.replicas, num_exits)
    ongoing = max(settings.max_queue, 2 * settings.max_batch)
    bound = None
    for k in reversed(range(num_exits)):
        deployment = serve.deployment(ExitReplica, name=f"exit{k + 1}", num_replicas=counts[k],
                                      max_ongoing_requests=ongoing, max_queued_requests=-1,
                                      ray_actor_options={"num_cpus": 0.5})
        bound = deployment.bind(settings, k, bound)
    return bound


# ---- the classifier the HTTP application drives ------------------------------------------------------------

class RayChain:
    """The :class:`~dvt_ms.serve.batcher.Classifier` of the Ray backend: every image of a request goes to the
    first exit's deployment (``connect()`` returns its handle, after deploying the chain if needed); the answers
    come back on a private event loop. ``disconnect()``, if given, runs on :meth:`stop` after the last answer."""

    def __init__(self, connect: Callable[[], DeploymentHandle], *, max_batch: int = 32, max_queue: int = 256,
                 observer: BatchObserver | None = None, on_fatal: Callable[[BaseException], Any] | None = None,
                 disconnect: Callable[[], Any] | None = None) -> None:
        self.max_batch, self.max_queue = max_batch, max_queue
        self.observer = observer or BatchObserver()
        self.on_fatal = on_fatal
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._connect, self._disconnect = connect, disconnect
        self._handle: DeploymentHandle | None = None
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    @property
    def in_flight(self) -> int:
        """Images admitted and not answered yet."""
        return self._in_flight

    def submit(self, images: Sequence[np.ndarray], on_done: Callable[[Outcome], Any]) -> PendingRequest:
        """Send a request's images to the first exit; ``on_done`` is called from the chain's loop thread."""
        n = len(images)
        if n > self.max_queue:
            raise TooManyImages(f"a request of {n} images exceeds --max_queue {self.max_queue}")
        with self._cond:
            if self._stopping or self.error is not None or self._handle is None:
                raise NotAccepting("the server is stopping" if self.error is None and self._stopping else
                                   "the exits are not deployed" if self.error is None else
                                   f"the Ray deployments failed: {self.error}")
            if self._in_flight + n > self.max_queue:
                raise QueueFull(f"{self._in_flight} images are in flight; {n} more would exceed --max_queue "
                                f"{self.max_queue}")
            self._in_flight += n
            self.observer.in_flight(self._in_flight)
        request = PendingRequest(n, on_done)
        asyncio.run_coroutine_threadsafe(self._classify(request, [np.asarray(x, np.float32) for x in images]),
                                         self._loop)
        return request

    def cancel(self, request: PendingRequest) -> None:
        """Nobody waits for ``request``: its answers are thrown away as they come."""
        request.cancel()

    async def _classify(self, request: PendingRequest, images: list[np.ndarray]) -> None:
        async def one(i: int, image: np.ndarray) -> None:
            try:
                result = await self._handle.remote(image, alone=len(images) == 1)
            except Exception as err:  # every failure ends the request: a lost replica as 503, else 500
                if _lost(err):
                    request.fail(Unavailable(f"a Ray replica was lost while it held this request "
                                             f"({type(err).__name__}); retry"))
                else:
                    log.error("image %d of a request failed: %s", i, err)
                    request.fail(ServeError(f"{type(err).__name__}: {err}"))
                return
            request.fill(i, result)
            self.observer.images_left(result.exit, 1)

        try:
            await asyncio.gather(*(one(i, image) for i, image in enumerate(images)))
        finally:
            with self._cond:
                self._in_flight -= len(images)
                self.observer.in_flight(self._in_flight)
                self._cond.notify_all()

    def start(self, warmup: bool = True) -> None:
        """Start the loop thread and connect (deploying the exits, which compile while they start: ``warmup`` is
        the replicas' ``--warmup``); ``ready`` is set once every replica is up."""
        if self._thread is not None:
            raise RuntimeError("the chain was started already")
        self._thread = threading.Thread(target=self._main, name="dvt-serve-ray", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            handle = self._connect()
        except BaseException as err:  # nothing can be served: say why, stop the server
            log.exception("the Ray deployments did not start")
            self.error = err
            if self.on_fatal is not None:
                self.on_fatal(err)
            return
        with self._cond:
            self._handle = handle
        self.ready.set()
        self._loop.run_forever()

    def stop(self, timeout: float | None = None) -> None:
        """Admit nothing more, wait (at most ``timeout`` seconds) for the images in flight, disconnect."""
        with self._cond:
            self._stopping = True
            self._cond.wait_for(lambda: self._in_flight == 0, timeout)
        self.ready.clear()
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if self._disconnect is not None and self.error is None:
            with contextlib.suppress(Exception):
                self._disconnect()


# ---- serve run ---------------------------------------------------------------------------------------------

class HTTPIngress:
    """The HTTP application of :mod:`~dvt_ms.serve.app` as a Ray Serve ingress over the exit chain."""

    def __init__(self, settings: ServeSettings, first_exit: DeploymentHandle) -> None:
        from .app import Service, create_app
        from .metrics import ServeMetrics

        predictor = build_predictor(settings)  # preprocessing, class names, GFLOPs (the exits run elsewhere)
        top_k = min(settings.top_k, predictor.num_classes)
        metrics = ServeMetrics(predictor.engine.num_exits, settings.max_batch)
        chain = RayChain(lambda: first_exit, max_batch=settings.max_batch, max_queue=settings.max_queue,
                         observer=metrics)
        service = Service(predictor, chain, metrics, top_k, int(settings.max_body_mb * 1024 * 1024),
                          f"{settings.batching} (ray)", settings.num_parallel_workers, settings.warmup == "all")
        self._app = create_app(service)

    def __serve_build_asgi_app__(self) -> Any:
        return self._app


def build_app(args: dict[str, str]) -> Any:
    """The application of ``serve run dvt_ms.serve.ray_app:build_app key=value ...``: the arguments are dvt-serve's
    flags without their dashes (``ckpt=... replicas=2,1,1 max_batch=16``). ``host`` / ``port`` / ``ray_address``
    do not apply: the application is served by Ray Serve's HTTP proxy (port 8000 unless Serve was started with
    other HTTP options) on the cluster ``serve run`` joins (its ``--address``)."""
    argv = [item for key, value in args.items() for item in (f"--{key}", str(value))]
    settings = parse_command(ServeSettings, argv, "dvt-serve on Ray Serve", "serve run dvt_ms.serve.ray_app:build_app")
    settings.backend = "ray"
    num_exits = _num_exits(settings)  # read from the model, so a wrong replicas= fails here, not in every replica
    # no CPU reserved for the HTTP side (it decodes images and waits; dvt-serve's own process reserves none either),
    # so the exits' replicas fit as they do under dvt-serve: 2,1,1 on a 2-CPU machine
    ingress = serve.deployment(serve.ingress()(HTTPIngress), name="http", max_ongoing_requests=settings.max_queue,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(settings, exit_chain(settings, num_exits))


def _num_exits(settings: ServeSettings) -> int:
    """How many exits the model of ``settings`` has (read from the model, which is loaded without compiling)."""
    return build_predictor(settings).engine.num_exits
