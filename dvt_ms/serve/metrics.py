"""``dvt-serve``'s metrics in the Prometheus text format (``GET /metrics``), kept with ``prometheus_client`` in a
registry of their own (one per server, so several apps can live in one process).

Requests by HTTP status, images answered per exit, exit batch sizes and padding per exit, time per exit batch,
queue wait per exit, request latency, refused or lost requests by reason, images in flight, readiness.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batcher import BatchObserver

__all__ = ["ERROR_REASONS", "ServeMetrics"]

#: why a classify request got no answer from the model (the ``reason`` label of ``dvt_serve_errors_total``)
ERROR_REASONS = ("bad_request", "unreadable_image", "too_large", "queue_full", "not_ready", "disconnected",
                 "unavailable", "internal")

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics(BatchObserver):
    """The counters, gauges and histograms of one server; the batcher reports into it from its worker thread,
    the HTTP side from the event loop (``prometheus_client`` is thread-safe)."""

    def __init__(self, num_exits: int, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        exits = [str(k + 1) for k in range(num_exits)]
        sizes, size = [], 1
        while size < max_batch:
            sizes.append(size)
            size *= 2
        sizes.append(max_batch)
        r = self.registry
        self.requests = Counter("dvt_serve_requests", "classify requests answered, by HTTP status", ["code"],
                                registry=r)
        self.latency = Histogram("dvt_serve_request_seconds", "classify requests: arrival to answer",
                                 buckets=_SECONDS, registry=r)
        self.images = Counter("dvt_serve_images", "images answered, by the exit (1-based) they left at", ["exit"],
                              registry=r)
        self.batch_images = Histogram("dvt_serve_exit_batch_images", "images per exit batch, before padding",
                                      ["exit"], buckets=sizes, registry=r)
        self.padding = Counter("dvt_serve_exit_batch_padding_rows", "rows added to exit batches to reach a compiled "
                               "batch size", ["exit"], registry=r)
        self.batch_seconds = Histogram("dvt_serve_exit_batch_seconds", "time of one exit batch (--batching "
                                       "request: exit 1 times the whole engine call)", ["exit"], buckets=_SECONDS,
                                       registry=r)
        self.queue_wait = Histogram("dvt_serve_queue_wait_seconds", "time an image waited in an exit's queue before "
                                    "its batch ran", ["exit"], buckets=_SECONDS, registry=r)
        self.errors = Counter("dvt_serve_errors", "classify requests not answered by the model, by reason",
                              ["reason"], registry=r)
        self.queued = Gauge("dvt_serve_images_in_flight", "images admitted and not answered yet", registry=r)
        self.ready = Gauge("dvt_serve_ready", "1 once the stages are compiled and requests are served", registry=r)
        for name in exits:  # every series from the start, at zero
            self.images.labels(name)
            self.batch_images.labels(name)
            self.padding.labels(name)
            self.batch_seconds.labels(name)
            self.queue_wait.labels(name)
        for reason in ERROR_REASONS:
            self.errors.labels(reason)

    # ---- BatchObserver ----

    def exit_batch(self, exit_index: int, rows: int, padded: int, waits: Sequence[float],
                   seconds: float | None) -> None:
        name = str(exit_index + 1)
        self.batch_images.labels(name).observe(rows)
        if padded > rows:
            self.padding.labels(name).inc(padded - rows)
        if seconds is not None:
            self.batch_seconds.labels(name).observe(seconds)
        wait = self.queue_wait.labels(name)
        for value in waits:
            wait.observe(value)

    def images_left(self, exit_index: int, count: int) -> None:
        self.images.labels(str(exit_index + 1)).inc(count)

    def in_flight(self, images: int) -> None:
        self.queued.set(images)

    # ---- the HTTP side ----

    def answered(self, code: int, seconds: float | None = None, reason: str | None = None) -> None:
        """A classify request answered with ``code`` after ``seconds``; ``reason``: why the model did not."""
        self.requests.labels(str(code)).inc()
        if seconds is not None:
            self.latency.observe(seconds)
        if reason is not None:
            self.errors.labels(reason).inc()

    def requests_by_code(self) -> dict[str, int]:
        """Classify requests answered so far, by HTTP status."""
        return {s.labels["code"]: int(s.value) for s in self.requests.collect()[0].samples if s.name.endswith("_total")}

    def images_by_exit(self) -> list[int]:
        """Images answered so far at each exit, in exit order."""
        totals = {s.labels["exit"]: int(s.value) for s in self.images.collect()[0].samples if s.name.endswith("_total")}
        return [totals[name] for name in sorted(totals, key=int)]

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
