"""The HTTP application of ``dvt-serve`` (FastAPI on asyncio): classify, health, metrics, model, OpenAPI docs.

* ``POST /v1/classify``: the body is one image file's bytes (any format ``dvt-predict`` reads) -> the JSON
  object ``dvt-predict`` writes per image in ``predictions.jsonl``, without ``path``; a ``multipart/form-data``
  body with several image files -> a JSON list of those objects, in the order of the files. In a form, an
  unreadable file gets its ``error`` in its place; a request with no readable image is a 400 with the reader's
  message. A body over the size limit is a 413, a request that would put more images in flight than the queue
  holds is a 503 with ``Retry-After``, as is one whose images a Ray replica lost. A client that disconnects
  before its answer has its images dropped.
* ``GET /healthz``: 503 until the stages are compiled (or when the model worker failed), then 200.
* ``GET /metrics``: Prometheus text format (:mod:`~dvt_ms.serve.metrics`).
* ``GET /v1/model``: the model, its exits, thresholds and classes.
* ``GET /docs``, ``GET /openapi.json``: the API described by FastAPI.

Images are decoded and preprocessed in a thread pool; the model runs in the batcher's one worker thread
(:mod:`~dvt_ms.serve.batcher`) or in the Ray deployments of the exits (:mod:`~dvt_ms.serve.ray_backend`), which
the app's lifespan starts and stops (answering what is in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..data import DataError
from ..data.folder import decode_image
from .batcher import Classifier, NotAccepting, Outcome, QueueFull, TooManyImages, Unavailable
from .metrics import ServeMetrics
from .predictor import Predictor, prediction_record

__all__ = ["HTTPProblem", "ServeApp", "Service", "create_app"]

log = logging.getLogger(__name__)

_TOP = {"type": "object", "properties": {"class": {"type": "integer"}, "name": {"type": "string"},
                                         "probability": {"type": "number"}}}
_RECORD = {"type": "object", "properties": {
    "exit": {"type": "integer", "nullable": True, "description": "exit the image left at (1-based); null: unreadable"},
    "gflops": {"type": "number", "nullable": True, "description": "GMACs spent on the image (exits 1..exit)"},
    "top_k": {"type": "array", "items": _TOP, "description": "most probable classes at that exit, most probable first"},
    "error": {"type": "string", "nullable": True, "description": "why the image could not be read"}}}
_PROBLEM = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}
_CLASSIFY_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}
_CLASSIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "one object for an image body, a list (in file order) for a form",
          "content": {"application/json": {"schema": {"oneOf": [_RECORD, {"type": "array", "items": _RECORD}]}}}},
    400: {"description": "not an image (the reader's message), an empty body or a form without files",
          "content": _PROBLEM},
    413: {"description": "the body is larger than --max_body_mb", "content": _PROBLEM},
    503: {"description": "the queue is full (see Retry-After), or the server is not ready or stopping",
          "content": _PROBLEM},
}


class HTTPProblem(Exception):
    """A request answered with ``status`` and ``{"detail": message}``; ``reason`` labels it in the metrics."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}


class _Disconnected(Exception):
    """The client went away before its answer."""


@dataclass
class Service:
    """What the app serves: the predictor (preprocessing, class names, GFLOPs), the
    :class:`~dvt_ms.serve.batcher.Classifier` that runs its engine (not started: an
    :class:`~dvt_ms.serve.batcher.ExitBatcher`, a :class:`~dvt_ms.serve.batcher.RequestBatcher` or a
    :class:`~dvt_ms.serve.ray_backend.RayChain`), the metrics and the limits."""

    predictor: Predictor
    batcher: Classifier
    metrics: ServeMetrics
    top_k: int
    max_body_bytes: int
    batching: str = "exit"
    decode_threads: int = 2
    warmup: bool = True

    def prepare(self, data: bytes, name: str) -> np.ndarray | str:
        """An image file's bytes as the model's input ``[C, H, W]``, or the reader's message why not."""
        try:
            return self.predictor.transform(decode_image(data, name))
        except (DataError, ValueError) as err:
            return str(err)

    def record(self, outcome: Any) -> dict[str, Any]:
        """The JSON object of one image: an :class:`~dvt_ms.serve.batcher.ImageResult` or an error message."""
        p = self.predictor
        if isinstance(outcome, str):
            return prediction_record(None, [], [], p.class_names, p.cumulative_gflops, outcome)
        return prediction_record(outcome.exit, outcome.classes, outcome.probabilities, p.class_names,
                                 p.cumulative_gflops)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_large = f"the request body is larger than --max_body_mb allows ({limit} bytes)"
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPProblem(400, f"Content-Length {declared!r} is not a number", "bad_request") from None
        if size > limit:
            raise HTTPProblem(413, f"{too_large}: Content-Length is {size}", "too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPProblem(413, too_large, "too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _Disconnected from None
    return b"".join(chunks)


async def _form_files(request: Request, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file part of a multipart body, in order."""
    sent = False

    async def replay() -> dict[str, Any]:  # the body already read, for the form parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_files, max_fields=max_files,
                                                          max_part_size=max(len(body), 1))
    except StarletteHTTPException as err:
        raise HTTPProblem(400, f"unusable multipart form: {err.detail}", "bad_request") from None
    files = []
    try:
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or f"{field} #{len(files) + 1}", await value.read()))
    finally:
        await form.close()
    if not files:
        raise HTTPProblem(400, "the multipart form holds no file: send each image as a file part", "bad_request")
    return files


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _settle(future: asyncio.Future, outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


class ServeApp:
    """The routes of ``dvt-serve`` over one :class:`Service`, one method per route; :attr:`app` is the FastAPI
    application, whose lifespan starts the batcher (warming it up unless ``service.warmup`` is False) and stops it
    after the last request."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.batcher, self.metrics = service.batcher, service.metrics
        self.executor = ThreadPoolExecutor(max_workers=service.decode_threads, thread_name_prefix="dvt-serve-decode")
        p = service.predictor
        self.app = FastAPI(
            title="dvt-serve", version=__version__, lifespan=self.lifespan,
            description=f"Dynamic Vision Transformer {p.model} ({p.source}) with real early exit: an image leaves "
                        "at the first exit whose top softmax probability clears that exit's threshold.")
        self.app.post("/v1/classify", summary="Classify one image, or every image of a multipart form",
                      openapi_extra=_CLASSIFY_BODY, responses=_CLASSIFY_RESPONSES)(self.classify)
        self.app.get("/healthz", summary="200 once the stages are compiled, 503 before (or on failure)")(self.healthz)
        self.app.get("/metrics", summary="Metrics in the Prometheus text format")(self.prometheus)
        self.app.get("/v1/model", summary="The model served: exits, thresholds, classes")(self.model)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Start the batcher; after the last request, stop it (answering what is in flight) and the decoders."""
        self.batcher.start(warmup=self.service.warmup)
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)
            self.executor.shutdown(wait=True)
            self.metrics.ready.set(0)

    # ---- POST /v1/classify ----

    async def classify(self, request: Request) -> Response:
        """One image's record for an image body, a list of records for a multipart form; problems as JSON."""
        start = time.monotonic()
        try:
            answer = await self._classify(request)
        except HTTPProblem as problem:
            self.metrics.answered(problem.status, time.monotonic() - start, problem.reason)
            return JSONResponse({"detail": problem.message}, problem.status, headers=problem.headers)
        except _Disconnected:
            self.metrics.answered(499, None, "disconnected")
            return Response(status_code=499)  # nobody reads it
        self.metrics.answered(200, time.monotonic() - start)
        return JSONResponse(answer)

    async def _classify(self, request: Request) -> Any:
        service, batcher = self.service, self.batcher
        if not batcher.ready.is_set():
            raise HTTPProblem(503, "not ready: the stages are being compiled (see /healthz)", "not_ready",
                              {"Retry-After": "1"})
        body = await read_body(request, service.max_body_bytes)
        form = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
        if form:
            parts = await _form_files(request, body, batcher.max_queue)
        elif not body:
            raise HTTPProblem(400, "empty body: POST one image file's bytes, or a multipart form of image files",
                              "bad_request")
        else:
            parts = [("in the request body", body)]
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(*(loop.run_in_executor(self.executor, service.prepare, data, name)
                                          for name, data in parts))
        readable = [i for i, x in enumerate(prepared) if not isinstance(x, str)]
        if not readable:
            raise HTTPProblem(400, "; ".join(prepared), "unreadable_image")
        results = await self._run(request, [prepared[i] for i in readable])
        records: list[Any] = list(prepared)
        for i, result in zip(readable, results, strict=True):
            records[i] = result
        answers = [service.record(x) for x in records]
        return answers if form else answers[0]

    async def _run(self, request: Request, images: Sequence[np.ndarray]) -> list[Any]:
        """Submit the images and wait for their results, or for the client to go away (which drops them)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def on_done(outcome: Outcome) -> None:  # the worker thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, outcome)

        try:
            pending = self.batcher.submit(images, on_done)
        except QueueFull as err:
            raise HTTPProblem(503, str(err), "queue_full", {"Retry-After": str(err.retry_after)}) from None
        except TooManyImages as err:
            raise HTTPProblem(413, str(err), "too_large") from None
        except NotAccepting as err:
            raise HTTPProblem(503, str(err), "not_ready", {"Retry-After": "1"}) from None
        watch = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({future, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not future.done():
            self.batcher.cancel(pending)
            raise _Disconnected
        outcome = future.result()
        if isinstance(outcome, Unavailable):
            log.warning("a request was lost: %s", outcome)
            raise HTTPProblem(503, str(outcome), "unavailable", {"Retry-After": "1"})
        if isinstance(outcome, BaseException):
            log.error("a request failed: %s", outcome)
            raise HTTPProblem(500, f"the model failed on this request: {outcome}", "internal")
        return outcome

    # ---- the other routes ----

    async def healthz(self) -> JSONResponse:
        """200 with the images in flight once serving; 503 while compiling or after the worker failed."""
        batcher = self.batcher
        if batcher.error is not None:
            return JSONResponse({"status": "failed", "detail": str(batcher.error)}, 503)
        if not batcher.ready.is_set():
            return JSONResponse({"status": "warming up", "detail": "compiling the stages"}, 503,
                                headers={"Retry-After": "1"})
        self.metrics.ready.set(1)
        return JSONResponse({"status": "ok", "images_in_flight": batcher.in_flight})

    async def prometheus(self) -> Response:
        """The metrics in the Prometheus text format."""
        self.metrics.ready.set(1 if self.batcher.ready.is_set() else 0)
        text, content_type = self.metrics.render()
        return Response(text, media_type=content_type)

    async def model(self) -> JSONResponse:
        """The model served: its exits, grids, GFLOPs, thresholds, classes and the batching settings."""
        service, p = self.service, self.service.predictor
        return JSONResponse({
            "model": p.model, "source": p.source, "num_classes": p.num_classes, "class_names": p.class_names,
            "exits": len(p.cumulative_gflops), "grids": p.grids, "cumulative_gflops": p.cumulative_gflops,
            "thresholds": [float(t) for t in p.engine.thresholds[:-1]], "thresholds_chosen_by": p.thresholds_chosen_by,
            "top_k": service.top_k, "batching": service.batching, "max_batch": self.batcher.max_batch,
            "max_queue": self.batcher.max_queue})


def create_app(service: Service) -> FastAPI:
    """The FastAPI application serving ``service`` (see :class:`ServeApp`)."""
    return ServeApp(service).app
