"""Exit-aware rebatching (dvt_ms.serve.batcher): a request's result slots, the gather and scatter of an exit
batch, and the batchers deciding every image as the early-exit engine does whatever it is batched with; the
queue limit, waiting, cancelling, stopping and failures."""

from __future__ import annotations

import threading
import time

import mindspore as ms
import numpy as np
import pytest

from dvt_ms.inference.engine import EarlyExitEngine
from dvt_ms.inference.thresholds import softmax_confidence
from dvt_ms.models.stages import StageSource
from dvt_ms.serve.batcher import (
    RECENT_REQUESTS,
    ExitBatch,
    ExitBatcher,
    ImageResult,
    NotAccepting,
    PendingRequest,
    QueuedImage,
    QueueFull,
    RequestBatcher,
    TooManyImages,
    warmup_sizes,
)
from dvt_ms.serve.errors import ServeError


class FakeStages(StageSource):
    """A StageSource of three exits computed row by row in numpy (exact whatever the batch), each reading the
    previous exit's features and relations; it records the batch size of every call."""

    num_exits = 3
    image_shape = (1, 2, 2)
    dynamic_only = False

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail_at = fail_at
        self.gate = threading.Event()  # every call waits for it: clear it to hold the worker in a call
        self.gate.set()

    def input_names(self, k: int) -> list[str]:
        return ["images", "features", "relations"] if k else ["images"]

    def build_stage(self, k: int, static: bool):
        def run(images, features=None, relations=None):
            x = images.asnumpy().reshape(images.shape[0], -1).astype(np.float64)
            self.calls.append((k, x.shape[0]))
            assert self.gate.wait(10), "the gate stayed closed"
            if self.fail_at == k:
                raise RuntimeError("stage broke")
            tokens = x * (k + 1)
            if features is not None:
                tokens = tokens + features.asnumpy() + 0.1 * relations.asnumpy().sum(axis=1, keepdims=True)
            rel = np.stack([tokens[:, 0] - tokens[:, 1], tokens[:, 2] * tokens[:, 3]], axis=1)
            logits = 1.5 * np.stack([tokens.sum(axis=1), 2 * tokens[:, 0], -tokens[:, 1]], axis=1)
            return tuple(ms.Tensor(a.astype(np.float32)) for a in (logits, tokens, rel))

        return run


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 2, 2)).astype(np.float32)


def _engine(fail_at: int | None = None) -> EarlyExitEngine:
    return EarlyExitEngine(FakeStages(fail_at), [0.75, 0.8])


class Answers:
    """on_done callbacks that keep what each request got."""

    def __init__(self) -> None:
        self.outcomes: dict[int, object] = {}
        self.done = threading.Event()
        self.expected = 0
        self._lock = threading.Lock()

    def callback(self, key: int):
        def on_done(outcome) -> None:
            with self._lock:
                assert key not in self.outcomes, "on_done called twice"
                self.outcomes[key] = outcome
                if len(self.outcomes) == self.expected:
                    self.done.set()

        return on_done


# ---- the bookkeeping ------------------------------------------------------------------------------------

def _result(k: int) -> ImageResult:
    return ImageResult(k, np.array([k]), np.array([0.5], np.float32))


def test_a_request_answers_once_in_its_own_order_when_its_last_slot_fills():
    got = []
    request = PendingRequest(3, got.append)
    assert not request.fill(2, _result(2)) and not request.fill(0, _result(0)) and got == []
    with pytest.raises(ValueError, match="image 0 of the request already has its result"):
        request.fill(0, _result(5))
    assert request.fill(1, _result(1))
    assert [r.exit for r in got[0]] == [0, 1, 2] and not request.open
    request.fail(RuntimeError("late"))  # a finished request stays answered once
    assert len(got) == 1


def test_a_cancelled_or_failed_request_takes_no_more_results():
    got = []
    cancelled = PendingRequest(2, got.append)
    cancelled.cancel()
    assert not cancelled.fill(0, _result(0)) and not cancelled.open
    cancelled.fail(RuntimeError("x"))
    assert got == []
    failed = PendingRequest(2, got.append)
    failed.fail(RuntimeError("broken"))
    assert not failed.fill(0, _result(0)) and isinstance(got[0], RuntimeError) and len(got) == 1
    with pytest.raises(ValueError, match="at least one image"):
        PendingRequest(0, got.append)


def test_an_exit_batch_gathers_rows_of_many_requests_and_scatters_them_back():
    got = {}
    a = PendingRequest(2, lambda r: got.setdefault("a", r))
    b = PendingRequest(1, lambda r: got.setdefault("b", r))
    c = PendingRequest(1, lambda r: got.setdefault("c", r))
    items = [QueuedImage(a, 1, np.full((1, 2, 2), 1.0), np.full(3, 1.0), np.full(2, 10.0)),
             QueuedImage(b, 0, np.full((1, 2, 2), 2.0), np.full(3, 2.0), np.full(2, 20.0)),
             QueuedImage(a, 0, np.full((1, 2, 2), 3.0), np.full(3, 3.0), np.full(2, 30.0)),
             QueuedImage(c, 0, np.full((1, 2, 2), 4.0), np.full(3, 4.0), np.full(2, 40.0))]
    batch = ExitBatch(1, items, padded=6)
    images, features, relations = batch.inputs(True, True)
    assert images.shape == (6, 1, 2, 2) and features.shape == (6, 3) and relations.shape == (6, 2)
    np.testing.assert_array_equal(features[:, 0], [1, 2, 3, 4, 4, 4])  # padding repeats the last row
    assert batch.inputs(False, False)[1:] == (None, None)
    # rows 0 and 1 are confident (they leave), rows 2 and 3 are not; the padding rows are ignored
    logits = np.array([[9, 0, 0], [0, 9, 0], [1, 1, 1], [1, 1, 1], [9, 0, 0], [9, 0, 0]], np.float32)
    tokens = np.arange(6)[:, None] * np.ones((1, 5))
    relations_out = 100 + np.arange(6)[:, None] * np.ones((1, 2))
    c.cancel()  # its client went away: its image is not carried on
    onward = batch.scatter(logits, tokens, relations_out, threshold=0.9, top_k=2)
    assert batch.left == 2 and "b" in got and got["b"][0].exit == 1
    assert list(got["b"][0].classes) == [1, 0] and got["b"][0].probabilities[0] > 0.99
    assert [(item.request, item.index) for item in onward] == [(a, 0)]
    np.testing.assert_array_equal(onward[0].features, tokens[2])  # its own rows of the exit's state
    np.testing.assert_array_equal(onward[0].relations, relations_out[2])
    np.testing.assert_array_equal(onward[0].image, items[2].image)
    last = ExitBatch(2, onward)
    assert last.padded == 1 and last.scatter(logits[2:3], None, None, threshold=None, top_k=1) == []
    assert [r.exit for r in got["a"]] == [2, 1] and "c" not in got


def test_an_exit_batch_refuses_an_image_without_the_state_its_exit_reads():
    request = PendingRequest(1, lambda r: None)
    with pytest.raises(ValueError, match="exit 2 reads the features of exit 1"):
        ExitBatch(1, [QueuedImage(request, 0, np.zeros((1, 2, 2)))]).inputs(True, False)
    with pytest.raises(ValueError, match="at least one image"):
        ExitBatch(0, [])


# ---- the batchers decide as the engine ------------------------------------------------------------------

def _submit_concurrently(batcher, images: np.ndarray, sizes: list[int], threads: int = 4) -> Answers:
    answers = Answers()
    answers.expected = len(sizes)
    starts = np.cumsum([0, *sizes])
    jobs = list(range(len(sizes)))

    def client(mine: list[int]) -> None:
        for j in mine:
            batcher.submit(list(images[starts[j]:starts[j + 1]]), answers.callback(j))
            time.sleep(0.001)

    workers = [threading.Thread(target=client, args=(jobs[t::threads],)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert answers.done.wait(30), f"only {len(answers.outcomes)} of {len(sizes)} requests answered"
    return answers


def _same_as_engine(answers: Answers, images: np.ndarray, sizes: list[int], top_k: int) -> None:
    want = _engine()(images, top_k=top_k)
    starts = np.cumsum([0, *sizes])
    for j in range(len(sizes)):
        results = answers.outcomes[j]
        assert isinstance(results, list) and len(results) == sizes[j]
        for i, result in enumerate(results):
            row = starts[j] + i
            assert result.exit == want.exits[row], row
            np.testing.assert_array_equal(result.classes, want.top_classes[row])
            np.testing.assert_allclose(result.probabilities, want.top_probabilities[row], rtol=1e-6)


@pytest.mark.parametrize("max_batch,max_wait_ms", [(4, 1.0), (3, 0.0), (16, 20.0)])
def test_the_exit_batcher_decides_every_image_as_the_engine_whatever_the_mix(max_batch, max_wait_ms):
    images = _images(60)
    sizes = [1, 3, 2, 5, 1, 1, 4, 7, 2, 1, 6, 3, 1, 8, 2, 1, 5, 7]
    assert sum(sizes) == 60
    engine = _engine()
    batcher = ExitBatcher(engine, max_batch=max_batch, max_wait_ms=max_wait_ms, top_k=2)
    batcher.start(warmup=False)
    try:
        answers = _submit_concurrently(batcher, images, sizes)
    finally:
        batcher.stop(5)
    _same_as_engine(answers, images, sizes, top_k=2)
    want = _engine()(images)
    assert 0 < (want.exits == 0).sum() < 60 and (want.exits == 2).sum() > 0  # every exit is taken
    calls = engine.source.calls
    assert {k for k, _ in calls} == {0, 1, 2}
    allowed = {engine.padded_size(n, max_batch) for n in range(1, max_batch + 1)}
    assert {size for _, size in calls} <= allowed | {engine.padded_size(1, 1)}
    assert batcher.in_flight == 0 and batcher.queued() == [0, 0, 0]


def test_the_request_batcher_decides_as_the_engine_in_chunks_of_max_batch():
    images = _images(30, seed=1)
    sizes = [1, 12, 2, 5, 10]
    engine = _engine()
    batcher = RequestBatcher(engine, max_batch=4, top_k=3)
    batcher.start(warmup=False)
    try:
        answers = _submit_concurrently(batcher, images, sizes, threads=2)
    finally:
        batcher.stop(5)
    _same_as_engine(answers, images, sizes, top_k=3)
    assert max(size for k, size in engine.source.calls if k == 0) == 4


def test_warm_up_compiles_every_padded_size_then_sets_ready():
    engine = _engine()
    assert warmup_sizes(engine, 10) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    batcher = ExitBatcher(engine, max_batch=10)
    batcher.start(warmup=True)
    try:
        assert batcher.ready.wait(10)
        assert sorted({size for _, size in engine.source.calls}) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        assert {k for k, _ in engine.source.calls} == {0, 1, 2}
    finally:
        batcher.stop(5)
    request_mode = RequestBatcher(_engine(), max_batch=3)
    assert request_mode._warmup_sizes() == [1, 2, 3]  # a one-image request runs at batch 1


# ---- waiting, the queue limit, cancelling, stopping, failures ------------------------------------------

def _one_at_a_time(batcher, requests: list[np.ndarray]) -> list[float]:
    """Send each request once the previous one is answered (a lone client); seconds each took."""
    took = []
    for j, images in enumerate(requests):
        answers = Answers()
        answers.expected = 1
        start = time.monotonic()
        batcher.submit(list(images), answers.callback(j))
        assert answers.done.wait(10)
        took.append(time.monotonic() - start)
    return took


def test_a_lone_one_image_request_runs_every_exit_unpadded_as_the_engine_runs_one_image():
    images = _images(40, seed=5)
    want = _engine()(images)
    deep = int(np.flatnonzero(want.exits == 2)[0])  # an image that reaches the last exit
    engine = _engine()
    batcher = ExitBatcher(engine, max_batch=8, max_wait_ms=0.0)
    batcher.start(warmup=False)
    try:
        _one_at_a_time(batcher, [images[deep:deep + 1]])
        assert engine.source.calls == [(0, 1), (1, 1), (2, 1)]
        engine.source.calls.clear()
        pair = np.stack([images[deep], images[int(np.flatnonzero(want.exits == 0)[0])]])
        _one_at_a_time(batcher, [pair])  # one image of two goes on alone: padded as the engine pads a subset
        assert engine.source.calls == [(0, 2), (1, 2), (2, 2)]
    finally:
        batcher.stop(5)


def test_exit_1_waits_for_its_batch_at_most_max_wait_ms_only_while_requests_overlap():
    engine = _engine()
    batcher = ExitBatcher(engine, max_batch=8, max_wait_ms=400.0)
    batcher.start(warmup=False)
    try:
        # a lone client: exit 1 waits until most of the last requests came with nothing else in flight
        took = _one_at_a_time(batcher, [_images(3, seed=j) for j in range(RECENT_REQUESTS)])
        waited = RECENT_REQUESTS // 2
        assert min(took[:waited]) >= 0.39 and max(took[waited + 1:]) < 0.35
        engine.source.gate.clear()  # hold the worker in its next call while requests pile up
        held = Answers()
        held.expected = 9
        for j in range(9):  # a full batch of 8 images, then 8 that each arrive while others are in flight
            batcher.submit(list(_images(8 if j == 0 else 1, seed=10 + j)), held.callback(j))
        engine.source.gate.set()
        assert held.done.wait(10)
        answers = Answers()
        answers.expected = 1
        start = time.monotonic()
        batcher.submit(list(_images(3)), answers.callback(0))
        assert not answers.done.wait(0.2)  # most recent requests overlapped: 3 of 8 wait for more
        assert answers.done.wait(5) and time.monotonic() - start >= 0.39
        full = Answers()
        full.expected = 1
        start = time.monotonic()
        batcher.submit(list(_images(8, seed=3)), full.callback(0))  # a full batch runs at once
        assert full.done.wait(5) and time.monotonic() - start < 0.35
    finally:
        batcher.stop(5)


def test_the_queue_limit_cancelling_and_stopping():
    batcher = ExitBatcher(_engine(), max_batch=8, max_wait_ms=60_000.0, max_queue=4)
    batcher.start(warmup=False)
    answers = Answers()
    answers.expected = 2
    first = batcher.submit(list(_images(3)), answers.callback(0))
    with pytest.raises(QueueFull, match="3 images are in flight; 2 more would exceed --max_queue 4") as full:
        batcher.submit(list(_images(2)), answers.callback(9))
    assert full.value.retry_after >= 1
    with pytest.raises(TooManyImages, match="a request of 5 images exceeds --max_queue 4"):
        batcher.submit(list(_images(5)), answers.callback(9))
    batcher.cancel(first)  # its client went away: its images leave the queue
    assert batcher.in_flight == 0 and batcher.queued() == [0, 0, 0]
    batcher.submit(list(_images(4, seed=2)), answers.callback(1))
    time.sleep(0.05)
    assert answers.outcomes == {}  # waiting for a batch of 8 for a minute
    start = time.monotonic()
    batcher.stop(10)  # answers what it admitted without waiting any longer
    assert time.monotonic() - start < 5 and set(answers.outcomes) == {1} and len(answers.outcomes[1]) == 4
    with pytest.raises(NotAccepting, match="stopping"):
        batcher.submit(list(_images(1)), answers.callback(3))


def test_a_failing_exit_fails_its_requests_and_the_batcher_goes_on():
    engine = _engine(fail_at=1)
    batcher = ExitBatcher(engine, max_batch=4, max_wait_ms=0.0)
    batcher.start(warmup=False)
    try:
        answers = Answers()
        answers.expected = 2
        batcher.submit(list(_images(4)), answers.callback(0))
        assert answers.done.wait(0.5) is False and 0 in answers.outcomes
        engine.source.fail_at = None
        batcher.submit(list(_images(4, seed=4)), answers.callback(1))
        assert answers.done.wait(10)
    finally:
        batcher.stop(5)
    assert isinstance(answers.outcomes[0], ServeError) and "exit 2 failed: RuntimeError: stage broke" in str(
        answers.outcomes[0])
    assert isinstance(answers.outcomes[1], list) and batcher.in_flight == 0


def test_a_failing_warm_up_stops_the_worker_and_refuses_requests():
    fatal = []
    batcher = ExitBatcher(_engine(fail_at=0), max_batch=2, on_fatal=fatal.append)
    batcher.start(warmup=True)
    batcher._thread.join(10)
    assert not batcher.ready.is_set() and isinstance(batcher.error, RuntimeError) and fatal == [batcher.error]
    with pytest.raises(NotAccepting, match="the model worker failed: stage broke"):
        batcher.submit(list(_images(1)), lambda outcome: None)


@pytest.mark.slow
def test_a_real_cascade_decides_alike_in_exit_batches_and_in_the_engine(graph_mode):
    from dvt_ms.models import create_model

    ms.set_seed(0)
    model = create_model("dvt_vit", img_size=32, exit_grids=[4, 6, 8], embed_dim=32, depth=2, num_heads=2,
                         num_classes=5)
    images = np.random.default_rng(0).normal(size=(24, 3, 32, 32)).astype(np.float32)
    probe = EarlyExitEngine(model, [1.0, 1.0])
    confidences = [np.sort(softmax_confidence(z)[0]) for z in probe.all_exit_logits(images)[:2]]
    thresholds = [float(confidences[0][12]), float(confidences[1][8])]  # some images leave at every exit
    engine = EarlyExitEngine(model, thresholds)
    sizes = [1, 2, 5, 1, 3, 4, 1, 7]
    batcher = ExitBatcher(engine, max_batch=6, max_wait_ms=2.0, top_k=3)
    batcher.start(warmup=False)
    try:
        answers = _submit_concurrently(batcher, images, sizes, threads=3)
    finally:
        batcher.stop(10)
    want = EarlyExitEngine(model, thresholds)(images, top_k=3)
    got = [r for j in range(len(sizes)) for r in answers.outcomes[j]]
    assert [r.exit for r in got] == want.exits.tolist() and len(set(want.exits.tolist())) == 3
    np.testing.assert_array_equal(np.stack([r.classes for r in got]), want.top_classes)
    np.testing.assert_allclose(np.stack([r.probabilities for r in got]), want.top_probabilities, atol=1e-5)
