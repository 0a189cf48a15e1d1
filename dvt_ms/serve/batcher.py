"""Batching for serving: the model runs in one worker thread, fed by queues that any number of requests fill.

:class:`ExitBatcher` (``dvt-serve --batching exit``) keeps one queue per exit. A request's images enter exit 1's
queue; an exit runs when its queue holds ``max_batch`` images, when its oldest image has waited ``max_wait_ms``,
or (a later exit) when no image waits at an earlier exit, so that none could join it before a new exit-1 batch
runs. Exit 1 does not wait at all while most of the last requests arrived with no other request in flight: then
none is likely to come and fill its batch, and a lone client gets the latency of the bare engine. The deepest
ready exit runs first: its images are the oldest. An exit batch gathers rows of many requests
(:class:`ExitBatch`); the images that clear the exit's threshold fill their request's result slots, the others
carry their rows of the exit's features and relations into the next exit's queue, where they mix with other
requests' images. The decision is :func:`~dvt_ms.inference.thresholds.leaves_at` on
:func:`~dvt_ms.inference.thresholds.softmax_confidence`, as in the early-exit engine, and each batch is padded
to the engine's sizes (:meth:`~dvt_ms.inference.engine.EarlyExitEngine.padded_size`), so an image is decided as
``dvt-predict`` decides it whatever it was batched with. The one image of a one-image request that runs an exit
alone is a whole batch to the engine, as in ``dvt-predict`` on one image: it runs unpadded.

:class:`RequestBatcher` (``--batching request``) is the baseline: each request goes through the engine on its
own, in arrival order, in chunks of ``max_batch`` images.

Both admit at most ``max_queue`` images that are not answered yet (:class:`QueueFull` beyond), compile every
batch size they can meet before :attr:`ready <_Worker.ready>` is set (``warmup``), drop the images of a
cancelled request, and on :meth:`stop <_Worker.stop>` answer what they admitted before the thread ends. A
request's bookkeeping is a :class:`PendingRequest`; :class:`BatchObserver` receives what metrics count.

What the HTTP application needs of a batcher is :class:`Classifier`; the Ray backend
(:mod:`~dvt_ms.serve.ray_backend`) implements it too, deciding each image with :class:`ExitBatch` as well.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..inference.thresholds import leaves_at, softmax_confidence, softmax_top_k
from .errors import ServeError

__all__ = ["RECENT_REQUESTS", "BatchObserver", "Classifier", "ExitBatch", "ExitBatcher", "ImageResult", "NotAccepting",
           "PendingRequest", "QueueFull", "QueuedImage", "RequestBatcher", "TooManyImages", "Unavailable",
           "exit_batch_rows", "warmup_sizes"]

log = logging.getLogger(__name__)

#: how many of the last requests exit 1 looks back on to decide whether waiting could fill its batch
RECENT_REQUESTS = 15


# ---- one request ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageResult:
    """Where one image left and what it was: ``exit`` (0-based), its top classes and their probabilities."""

    exit: int
    classes: np.ndarray  # int64 [k]
    probabilities: np.ndarray  # float32 [k]


#: what a request ends with: a result per image, in request order, or the error that ended it
Outcome = list[ImageResult] | BaseException


class PendingRequest:
    """One request's images in flight: a result slot per image, filled in any order as its images leave their
    exits; ``on_done`` gets the results in request order when the last slot is filled, or the error that ended
    the request (:meth:`fail`). A cancelled request takes no more results and never calls ``on_done``.
    Filled from the worker thread; :meth:`cancel` may come from any thread."""

    def __init__(self, size: int, on_done: Callable[[Outcome], Any], received: float | None = None) -> None:
        if size < 1:
            raise ValueError(f"a request holds at least one image, got {size}")
        self.size = size
        self.received = time.monotonic() if received is None else received
        self._results: list[ImageResult | None] = [None] * size
        self._missing = size
        self._on_done = on_done
        self.cancelled = False
        self.finished = False

    @property
    def open(self) -> bool:
        """Whether the request still waits for results."""
        return not (self.cancelled or self.finished)

    def fill(self, index: int, result: ImageResult) -> bool:
        """Put the result of image ``index``; True when that completed the request (``on_done`` was called)."""
        if not self.open:
            return False
        if self._results[index] is not None:
            raise ValueError(f"image {index} of the request already has its result")
        self._results[index] = result
        self._missing -= 1
        if self._missing:
            return False
        self.finished = True
        self._on_done(list(self._results))
        return True

    def fail(self, error: BaseException) -> None:
        """End the request with ``error`` (its other images are not answered)."""
        if self.open:
            self.finished = True
            self._on_done(error)

    def cancel(self) -> None:
        """Nobody waits for the answer any more: take no more results, never call ``on_done``."""
        self.cancelled = True


@dataclass
class QueuedImage:
    """One image between exits: its request and place in it, the image, its rows of the previous exit's reuse
    state (None before exit 1, or where the next exit reads none) and when it entered its current queue."""

    request: PendingRequest
    index: int
    image: np.ndarray  # float32 [C, H, W]
    features: np.ndarray | None = None
    relations: np.ndarray | None = None
    queued_at: float = 0.0


class ExitBatch:
    """The images one exit runs together, gathered from any number of requests (:meth:`inputs`, padded to
    ``padded`` rows by repeating the last one, as the engine pads), and the scatter of the exit's outputs back
    (:meth:`scatter`)."""

    def __init__(self, exit_index: int, items: Sequence[QueuedImage], padded: int | None = None) -> None:
        if not items:
            raise ValueError("an exit batch holds at least one image")
        self.exit = exit_index
        self.items = list(items)
        self.rows = len(self.items)
        self.padded = max(self.rows, padded or 0)
        self.left = 0  # images that left at this exit (set by scatter)

    def _stack(self, rows: list[np.ndarray | None], what: str) -> np.ndarray:
        if any(row is None for row in rows):
            raise ValueError(f"exit {self.exit + 1} reads the {what} of exit {self.exit}, which an image lacks")
        stacked = np.stack(rows)
        if self.padded > self.rows:
            stacked = np.concatenate([stacked, np.repeat(stacked[-1:], self.padded - self.rows, axis=0)])
        return stacked

    def inputs(self, features: bool, relations: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(images, features or None, relations or None)``, ``padded`` rows each; ``features`` / ``relations``:
        whether the exit reads them."""
        return (self._stack([item.image for item in self.items], "images"),
                self._stack([item.features for item in self.items], "features") if features else None,
                self._stack([item.relations for item in self.items], "relations") if relations else None)

    def scatter(self, logits: np.ndarray, features: np.ndarray | None, relations: np.ndarray | None,
                threshold: float | None, top_k: int) -> list[QueuedImage]:
        """Decide every image from its row of ``logits``: one whose top softmax probability clears ``threshold``
        (every image when it is None: the last exit) fills its request's slot with its ``top_k`` classes; the
        others, of requests still open, come back with their rows of ``features`` and ``relations`` for the next
        exit (padding rows are ignored)."""
        scores = np.asarray(logits)[: self.rows]
        confidence, _ = softmax_confidence(scores)
        leave = np.ones(self.rows, dtype=bool) if threshold is None else leaves_at(confidence, threshold)
        gone = np.flatnonzero(leave)
        self.left = int(gone.size)
        if gone.size:
            classes, probabilities = softmax_top_k(scores[gone], top_k)
            for row, i in enumerate(gone):
                item = self.items[i]
                item.request.fill(item.index, ImageResult(self.exit, classes[row], probabilities[row]))
        stay = np.flatnonzero(~leave)
        kept_features = None if features is None else np.asarray(features)[stay]  # copies of those rows only
        kept_relations = None if relations is None else np.asarray(relations)[stay]
        onward = []
        for row, i in enumerate(stay):
            item = self.items[i]
            if item.request.open:
                onward.append(QueuedImage(item.request, item.index, item.image,
                                          None if kept_features is None else kept_features[row],
                                          None if kept_relations is None else kept_relations[row]))
        return onward


# ---- errors and observers ------------------------------------------------------------------------------

class QueueFull(ServeError):
    """Admitting a request would put more than ``max_queue`` images in flight; ``retry_after``: seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyImages(ServeError):
    """A request holds more images than ``max_queue``: it can never be admitted."""


class NotAccepting(ServeError):
    """The batcher is stopping, stopped or failed: it admits nothing."""


class Unavailable(ServeError):
    """A request's images were lost by the backend (a Ray replica died under them): answered 503, to retry."""


class Classifier(Protocol):
    """What the HTTP application drives: :class:`ExitBatcher`, :class:`RequestBatcher` and the Ray chain of exits
    (:class:`~dvt_ms.serve.ray_backend.RayChain`). ``ready`` is set once requests are served; ``error`` is what
    stopped it for good (None while it works)."""

    max_batch: int
    max_queue: int
    ready: threading.Event
    error: BaseException | None

    @property
    def in_flight(self) -> int:
        """Images admitted and not answered yet."""

    def submit(self, images: Sequence[np.ndarray], on_done: Callable[[Outcome], Any]) -> PendingRequest:
        """Admit a request's images; ``on_done`` gets its :data:`Outcome` (from any thread). Raises
        :class:`QueueFull`, :class:`TooManyImages` or :class:`NotAccepting`."""

    def cancel(self, request: PendingRequest) -> None:
        """Nobody waits for ``request`` any more."""

    def start(self, warmup: bool = True) -> None:
        """Start serving (compiling every batch size first when ``warmup``), then set ``ready``."""

    def stop(self, timeout: float | None = None) -> None:
        """Admit nothing more, answer what was admitted, release what was started."""


class BatchObserver:
    """What the batchers report from their worker thread (here: nothing; the server's metrics count it)."""

    def exit_batch(self, exit_index: int, rows: int, padded: int, waits: Sequence[float],
                   seconds: float | None) -> None:
        """Exit ``exit_index`` (0-based) ran ``rows`` images padded to ``padded`` in ``seconds`` (None: not timed
        alone); ``waits``: how long each image had waited in its queue."""

    def images_left(self, exit_index: int, count: int) -> None:
        """``count`` images were answered by exit ``exit_index``."""

    def in_flight(self, images: int) -> None:
        """``images`` are admitted and not answered now."""


def exit_batch_rows(engine: Any, images: int, alone: bool, max_batch: int) -> int:
    """The rows an exit runs for a batch of ``images`` images: the image of a one-image request running on its own
    (``alone``) is a whole batch, unpadded, as ``dvt-predict`` runs one image; any other batch is padded as the
    engine pads a subset of a ``max_batch`` batch (:meth:`~dvt_ms.inference.engine.EarlyExitEngine.padded_size`)."""
    return engine.padded_size(images, 1 if images == 1 and alone else max_batch)


def warmup_sizes(engine: Any, max_batch: int) -> list[int]:
    """The batch sizes an exit runs for batches of 1..``max_batch`` images, and for one image as a batch of its
    own: every padded size where the stages are compiled per size, else the smallest and the largest."""
    sizes = sorted({exit_batch_rows(engine, 1, True, max_batch)}
                   | {exit_batch_rows(engine, n, False, max_batch) for n in range(1, max_batch + 1)})
    return sizes if engine.static else sorted({sizes[0], sizes[-1]})


# ---- the worker thread ---------------------------------------------------------------------------------

class _Worker:
    """Admission, the worker thread, warm-up, cancelling and stopping; subclasses queue and run the images."""

    def __init__(self, engine: Any, *, max_batch: int = 32, max_queue: int = 256, top_k: int = 5,
                 observer: BatchObserver | None = None, on_fatal: Callable[[BaseException], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1 or max_queue < 1 or top_k < 1:
            raise ValueError(f"max_batch, max_queue and top_k must be >= 1, got {max_batch}, {max_queue}, {top_k}")
        self.engine = engine
        self.max_batch, self.max_queue, self.top_k = max_batch, max_queue, top_k
        self.observer = observer or BatchObserver()
        self.on_fatal = on_fatal
        self.clock = clock
        self.ready = threading.Event()  # set once warmed up and serving
        self.error: BaseException | None = None  # what stopped the worker, if anything did
        self._cond = threading.Condition()
        self._in_flight = 0  # images admitted and not answered
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- the HTTP side (any thread) ----

    @property
    def in_flight(self) -> int:
        """Images admitted and not answered yet."""
        return self._in_flight

    def submit(self, images: Sequence[np.ndarray], on_done: Callable[[Outcome], Any]) -> PendingRequest:
        """Admit a request's preprocessed images (``[C, H, W]`` each); ``on_done`` is called from the worker
        thread with the results in order (or the error). Raises :class:`QueueFull`, :class:`TooManyImages` or
        :class:`NotAccepting`."""
        n = len(images)
        if n > self.max_queue:
            raise TooManyImages(f"a request of {n} images exceeds --max_queue {self.max_queue}")
        with self._cond:
            if self._stopping or self.error is not None:
                raise NotAccepting("the server is stopping" if self.error is None else
                                   f"the model worker failed: {self.error}")
            if self._in_flight + n > self.max_queue:
                raise QueueFull(f"{self._in_flight} images are in flight; {n} more would exceed --max_queue "
                                f"{self.max_queue}")
            request = PendingRequest(n, on_done, self.clock())
            self._admit(request, images)
            self._in_flight += n
            self.observer.in_flight(self._in_flight)
            self._cond.notify_all()
        return request

    def cancel(self, request: PendingRequest) -> None:
        """Drop a request nobody waits for: its queued images leave the queues; images already in a running
        batch are computed and their results thrown away."""
        with self._cond:
            request.cancel()
            self._in_flight -= self._drop(request)
            self.observer.in_flight(self._in_flight)

    # ---- lifetime ----

    def start(self, warmup: bool = True) -> None:
        """Start the worker thread; it compiles every batch size first when ``warmup``, then sets :attr:`ready`."""
        if self._thread is not None:
            raise RuntimeError("the batcher was started already")
        self._thread = threading.Thread(target=self._main, args=(warmup,), name="dvt-serve-model", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Admit nothing more, answer every admitted image (no more waiting for batches to fill), end the
        thread (waiting at most ``timeout`` seconds)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self, warmup: bool) -> None:
        try:
            if warmup:
                self._warm_up()
            self.ready.set()
            self._serve()
        except BaseException as err:  # the worker cannot go on: refuse everything, tell the server
            log.exception("the model worker stopped")
            with self._cond:
                self.error = err
                self.ready.clear()
                self._fail_all(err)
            if self.on_fatal is not None:
                self.on_fatal(err)

    def _warm_up(self) -> None:
        sizes = self._warmup_sizes()
        start = self.clock()
        log.info("compiling %d exits for batch sizes %s", self.engine.num_exits, ", ".join(map(str, sizes)))
        for size in sizes:
            if self._stopping:
                return
            self.engine.all_exit_logits(np.zeros((size, *self.engine.image_shape), np.float32))
        log.info("compiled in %.1f s", self.clock() - start)

    def _warmup_sizes(self) -> list[int]:
        return warmup_sizes(self.engine, self.max_batch)

    def _serve(self) -> None:
        while True:
            with self._cond:
                work = self._next_work()
                while work is None:
                    if self._stopping:  # nothing is queued: when stopping, every queued image is ready
                        return
                    self._cond.wait(self._wait_time())
                    work = self._next_work()
            self._run(work)

    def _finished(self, count: int) -> None:
        with self._cond:
            self._in_flight -= count
            self.observer.in_flight(self._in_flight)

    # ---- what subclasses define (called with the lock held, but _run) ----

    def _admit(self, request: PendingRequest, images: Sequence[np.ndarray]) -> None:
        raise NotImplementedError

    def _drop(self, request: PendingRequest) -> int:
        raise NotImplementedError

    def _fail_all(self, error: BaseException) -> None:
        raise NotImplementedError

    def _next_work(self) -> Any:
        raise NotImplementedError

    def _wait_time(self) -> float | None:
        raise NotImplementedError

    def _run(self, work: Any) -> None:
        raise NotImplementedError


class ExitBatcher(_Worker):
    """Exit-aware rebatching: one queue per exit, exit batches mixing the images of many requests (see the
    module docstring). ``max_wait_ms``: how long an exit's oldest image may wait for its batch to fill."""

    def __init__(self, engine: Any, *, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256,
                 top_k: int = 5, observer: BatchObserver | None = None,
                 on_fatal: Callable[[BaseException], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(engine, max_batch=max_batch, max_queue=max_queue, top_k=top_k, observer=observer,
                         on_fatal=on_fatal, clock=clock)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.num_exits = engine.num_exits
        self._queues: list[deque[QueuedImage]] = [deque() for _ in range(self.num_exits)]
        # of the last requests, whether each arrived while another was in flight (decides whether exit 1 waits);
        # until requests tell otherwise, they are taken to overlap: exit 1 waits, as the flag says
        self._overlapped: deque[bool] = deque([True] * RECENT_REQUESTS, maxlen=RECENT_REQUESTS)

    def queued(self) -> list[int]:
        """Images waiting in each exit's queue."""
        with self._cond:
            return [len(q) for q in self._queues]

    def _admit(self, request: PendingRequest, images: Sequence[np.ndarray]) -> None:
        now = self.clock()
        self._overlapped.append(self._in_flight > 0)
        self._queues[0].extend(QueuedImage(request, i, np.asarray(image, np.float32), queued_at=now)
                               for i, image in enumerate(images))

    def _drop(self, request: PendingRequest) -> int:
        removed = 0
        for queue in self._queues:
            kept = [item for item in queue if item.request is not request]
            removed += len(queue) - len(kept)
            queue.clear()
            queue.extend(kept)
        return removed

    def _fail_all(self, error: BaseException) -> None:
        for queue in self._queues:
            for item in queue:
                item.request.fail(error)
            queue.clear()
        self._in_flight = 0

    def _ready_exit(self, now: float) -> int | None:
        for k in reversed(range(self.num_exits)):
            queue = self._queues[k]
            if queue and (len(queue) >= self.max_batch or now - queue[0].queued_at >= self._waits(k)
                          or self._stopping or (k > 0 and not any(self._queues[:k]))):
                return k
        return None

    def _waits(self, k: int) -> float:
        if k == 0 and 2 * sum(self._overlapped) <= len(self._overlapped):
            return 0.0  # most recent requests came alone: none would join this batch
        return self.max_wait

    def _next_work(self) -> tuple[int, list[QueuedImage]] | None:
        k = self._ready_exit(self.clock())
        if k is None:
            return None
        queue = self._queues[k]
        return k, [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]

    def _wait_time(self) -> float | None:
        ends = [q[0].queued_at + self._waits(k) for k, q in enumerate(self._queues) if q]
        return None if not ends else max(0.0, min(ends) - self.clock())

    def _run(self, work: tuple[int, list[QueuedImage]]) -> None:
        k, items = work
        engine, last = self.engine, k == self.num_exits - 1
        start = self.clock()
        batch = ExitBatch(k, items, exit_batch_rows(engine, len(items), items[0].request.size == 1, self.max_batch))
        try:
            images, features, relations = batch.inputs(*engine.source.needs_state(k))
            logits, features, relations = engine.run_stage(k, images, features, relations, keep_state=not last)
            onward = batch.scatter(logits, features, relations, None if last else float(engine.thresholds[k]),
                                   self.top_k)
        except Exception as err:
            log.exception("exit %d failed on a batch of %d images", k + 1, len(items))
            failure = ServeError(f"exit {k + 1} failed: {type(err).__name__}: {err}")
            with self._cond:
                for item in items:
                    item.request.fail(failure)
                    self._in_flight -= self._drop(item.request)
            onward = []
        seconds = self.clock() - start
        self.observer.exit_batch(k, batch.rows, batch.padded, [start - item.queued_at for item in items], seconds)
        if batch.left:
            self.observer.images_left(k, batch.left)
        now = self.clock()
        with self._cond:
            for item in onward:
                item.queued_at = now
            self._queues[min(k + 1, self.num_exits - 1)].extend(onward)
            self._in_flight -= len(items) - len(onward)
            self.observer.in_flight(self._in_flight)


class RequestBatcher(_Worker):
    """The baseline: each request runs through the engine on its own, in arrival order, in chunks of
    ``max_batch`` images (as ``dvt-predict`` runs its batches)."""

    def __init__(self, engine: Any, *, max_batch: int = 32, max_queue: int = 256, top_k: int = 5,
                 observer: BatchObserver | None = None, on_fatal: Callable[[BaseException], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(engine, max_batch=max_batch, max_queue=max_queue, top_k=top_k, observer=observer,
                         on_fatal=on_fatal, clock=clock)
        self._queue: deque[tuple[PendingRequest, list[np.ndarray], float]] = deque()

    def _admit(self, request: PendingRequest, images: Sequence[np.ndarray]) -> None:
        self._queue.append((request, [np.asarray(image, np.float32) for image in images], self.clock()))

    def _drop(self, request: PendingRequest) -> int:
        kept = [entry for entry in self._queue if entry[0] is not request]
        removed = sum(len(entry[1]) for entry in self._queue if entry[0] is request)
        self._queue.clear()
        self._queue.extend(kept)
        return removed

    def _fail_all(self, error: BaseException) -> None:
        for request, _, _ in self._queue:
            request.fail(error)
        self._queue.clear()
        self._in_flight = 0

    def _next_work(self) -> tuple[PendingRequest, list[np.ndarray], float] | None:
        return self._queue.popleft() if self._queue else None

    def _wait_time(self) -> float | None:
        return None

    def _run(self, work: tuple[PendingRequest, list[np.ndarray], float]) -> None:
        request, images, queued_at = work
        engine = self.engine
        try:
            for first in range(0, len(images), self.max_batch):
                if not request.open:
                    break
                chunk = images[first:first + self.max_batch]
                start = self.clock()
                result = engine(np.stack(chunk), top_k=self.top_k)
                # exit 1's entry times the whole engine call; the later exits are not timed alone
                self.observer.exit_batch(0, len(chunk), len(chunk), [start - queued_at] * len(chunk),
                                         self.clock() - start)
                for i, (k, classes, probabilities) in enumerate(zip(
                        result.exits, result.top_classes, result.top_probabilities, strict=True)):
                    request.fill(first + i, ImageResult(int(k), classes, probabilities))
                for k in range(1, engine.num_exits):
                    reached = int((result.exits >= k).sum())
                    if reached:
                        self.observer.exit_batch(k, reached, engine.padded_size(reached, len(chunk)), [], None)
                for k, count in enumerate(result.counts):
                    if count:
                        self.observer.images_left(k, int(count))
        except Exception as err:
            log.exception("a request of %d images failed", len(images))
            request.fail(ServeError(f"the engine failed: {type(err).__name__}: {err}"))
        self._finished(len(images))
