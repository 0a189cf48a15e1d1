"""The early-exit engine against the offline simulation from the full logits of every exit.

Random tiny models (configs/dvt_tiny_cpu.yaml with 3 exits, and its 2-exit variant 4x4 -> 8x8), 14
random images, thresholds chosen from the full logits so that every exit receives images. The full
logits come from the cascade's own forward pass (``model(x)``), not from the engine.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from dvt_ms.inference.engine import EarlyExitEngine, default_buckets
from dvt_ms.inference.thresholds import find_thresholds, simulate_exits, softmax_confidence
from dvt_ms.models.stages import StageSource
from tests.helpers import TINY_CONFIG, load_config, model_from_config

N_IMAGES = 14


def tiny_engine_model(exit_grids=None):
    cfg = load_config(TINY_CONFIG)
    if exit_grids is not None:
        cfg["exit_grids"] = exit_grids
    ms.set_seed(0)
    model = model_from_config(cfg)
    model.set_train(False)
    return model


class Case:
    """A model, its images, the full logits of every exit and an engine (compiled once per case)."""

    def __init__(self, exit_grids, seed: int) -> None:
        self.model = tiny_engine_model(exit_grids)
        self.images = np.random.RandomState(seed).randn(N_IMAGES, 3, 32, 32).astype(np.float32)
        self.logits = [o.asnumpy() for o in self.model(ms.Tensor(self.images))]
        pairs = [softmax_confidence(logits) for logits in self.logits]
        self.confidences = np.stack([c for c, _ in pairs])
        self.predictions = np.stack([p for _, p in pairs])
        self.num_exits = len(self.logits)
        self.engine = EarlyExitEngine(self.model, [1e8] * (self.num_exits - 1))

    def midpoint_thresholds(self, shares) -> np.ndarray:
        """Thresholds half-way between neighbouring confidences, sending about ``shares`` to each exit."""
        thresholds = find_thresholds(self.confidences, np.asarray(shares, np.float32))
        for k in range(self.num_exits - 1):
            below = self.confidences[k][self.confidences[k] < thresholds[k]]
            thresholds[k] = (thresholds[k] + below.max()) / 2 if below.size else thresholds[k]
        return thresholds


@pytest.fixture(scope="module")
def cases():
    return {3: Case(None, 1), 2: Case([4, 8], 2)}


SHARES = {3: (0.4, 0.3, 0.3), 2: (0.5, 0.5)}


def run_engine(engine: EarlyExitEngine, images: np.ndarray, batch_size: int):
    results = [engine(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return (np.concatenate([r.predictions for r in results]), np.concatenate([r.confidences for r in results]),
            np.concatenate([r.exits for r in results]), sum(r.counts for r in results))


def check_against_simulation(case: Case, thresholds, batch_size: int, ties: bool = False) -> np.ndarray:
    """The engine's exits, predictions, confidences and counts equal the simulation from the full logits.

    ``ties``: thresholds sit exactly on sample confidences. The engine computes a subset's logits in graphs
    of other batch sizes, and on some CPUs MindSpore's matrix products round differently with the batch
    size (differences of ~1e-7), so an image whose confidence is within that of a threshold may take either
    side (and then leave at any later exit); every other image must agree exactly."""
    case.engine.set_thresholds(thresholds)
    predictions, confidences, exits, counts = run_engine(case.engine, case.images, batch_size)
    expected_exits = simulate_exits(case.confidences, thresholds)
    rows = np.arange(N_IMAGES)
    same = np.ones(N_IMAGES, bool)
    if ties:
        near = np.zeros(N_IMAGES, bool)
        for k, t in enumerate(thresholds):
            near |= np.abs(case.confidences[k] - t) <= 1e-6 * max(abs(float(t)), 1.0)
        same = ~near
        assert near.sum() <= 2 * len(thresholds)  # the samples the thresholds sit on, and exact ties only
    assert exits[same].tolist() == expected_exits[same].tolist()
    assert predictions[same].tolist() == case.predictions[expected_exits, rows][same].tolist()
    np.testing.assert_allclose(confidences[same], case.confidences[expected_exits, rows][same], rtol=1e-6)
    if same.all():
        assert counts.tolist() == np.bincount(expected_exits, minlength=case.num_exits).tolist()
    assert counts.tolist() == np.bincount(exits, minlength=case.num_exits).tolist()
    return exits


@pytest.mark.parametrize("num_exits", [3, 2])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_engine_equals_simulation(cases, num_exits, batch_size):
    case = cases[num_exits]
    thresholds = case.midpoint_thresholds(SHARES[num_exits])
    exits = check_against_simulation(case, thresholds, batch_size)
    assert set(exits.tolist()) == set(range(num_exits)), "every exit must receive images"


@pytest.mark.parametrize("num_exits", [3, 2])
def test_engine_equals_simulation_at_thresholds_equal_to_sample_confidences(cases, num_exits):
    # The budgeted-batch rule puts thresholds exactly on sample confidences: the ">=" decisions agree with
    # the simulation except where rounding of another batch size moves a confidence across its threshold.
    case = cases[num_exits]
    thresholds = find_thresholds(case.confidences, np.asarray(SHARES[num_exits], np.float32))
    for batch_size in (1, 7):
        exits = check_against_simulation(case, thresholds, batch_size, ties=True)
        assert set(exits.tolist()) == set(range(num_exits))


class RecordingStages(StageSource):
    """The stages of another source, recording ``(exit, batch size)`` of every call and checking that the reuse
    state handed to an exit has one row per image."""

    def __init__(self, inner: StageSource) -> None:
        self.inner, self.calls = inner, []
        self.num_exits, self.image_shape, self.dynamic_only = inner.num_exits, inner.image_shape, inner.dynamic_only

    def input_names(self, k):
        return self.inner.input_names(k)

    def build_stage(self, k, static):
        stage = self.inner.stage(k, static)  # the inner source's compiled stage: nothing compiles again

        def run(x, features, relations):
            for state in (features, relations):
                assert state is None or state.shape[0] == x.shape[0]
            self.calls.append((k, x.shape[0]))
            return stage(x, features, relations)

        return run


def recording_engine(case, thresholds) -> tuple[EarlyExitEngine, RecordingStages]:
    stages = RecordingStages(case.engine.source)
    return EarlyExitEngine(stages, thresholds), stages


def test_later_exits_run_only_on_the_undecided_images(cases):
    case = cases[3]
    engine, stages = recording_engine(case, case.midpoint_thresholds(SHARES[3]))
    result = engine(case.images[:7])
    reached = [7, 7 - result.counts[0], 7 - result.counts[0] - result.counts[1]]
    assert stages.calls == [(k, max(n, engine.min_batch)) for k, n in enumerate(reached) if n]


def test_a_single_image_runs_unpadded_and_agrees_with_its_simulation(cases):
    case = cases[3]
    engine, stages = recording_engine(case, [1e8, 1e8])
    for i in range(4):
        image = case.images[i:i + 1]
        confidences = np.stack([softmax_confidence(o)[0] for o in engine.all_exit_logits(image)])
        thresholds = [float(confidences[0, 0]) + 1e-3, 0.0]  # leaves at exit 2
        engine.set_thresholds(thresholds)
        stages.calls.clear()
        result = engine(image)
        assert result.exits.tolist() == simulate_exits(confidences, thresholds).tolist() == [1]
        assert stages.calls == [(0, 1), (1, 1)]  # one row through exit 1 and exit 2, no padding


def test_engines_over_one_source_share_its_compiled_stages(cases):
    case = cases[3]
    source = case.engine.source
    assert all(source.stage(k, True) is source.stage(k, True) for k in range(3))
    assert source.stage(0, True) is not source.stage(0, False)
    assert source.needs_state(0) == (False, False) and source.needs_state(1) == case.model.needs_state(1)


def test_all_exit_logits_match_the_model_forward(cases):
    case = cases[3]
    for got, want in zip(case.engine.all_exit_logits(case.images), case.logits, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bucket_padding_gives_the_same_answers(cases):
    case = cases[3]
    engine = EarlyExitEngine(case.model, [1e8, 1e8], buckets=[4, 8])
    thresholds = case.midpoint_thresholds(SHARES[3])
    engine.set_thresholds(thresholds)
    _, _, exits, _ = run_engine(engine, case.images, 7)
    assert exits.tolist() == simulate_exits(case.confidences, thresholds).tolist()
    with pytest.raises(ValueError, match="largest bucket"):
        engine(case.images[:9])


def test_default_buckets():
    assert default_buckets(50) == [2, 4, 8, 16, 32, 50]
    assert default_buckets(64) == [2, 4, 8, 16, 32, 64]
    assert default_buckets(1) == [1]


def test_engine_in_graph_mode(graph_mode):
    model = tiny_engine_model([4, 8])
    images = np.random.RandomState(3).randn(5, 3, 32, 32).astype(np.float32)
    confidences = np.stack([softmax_confidence(o.asnumpy())[0] for o in model(ms.Tensor(images))])
    thresholds = [float(np.median(confidences[0]))]
    engine = EarlyExitEngine(model, thresholds)
    result = engine(images)
    assert result.exits.tolist() == simulate_exits(confidences, thresholds).tolist()


def test_wrong_threshold_count_and_wrong_image_shape_are_errors(cases):
    with pytest.raises(ValueError, match="3 exits"):
        cases[3].engine.set_thresholds([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"expects images of shape \[B, 3, 32, 32\]"):
        cases[3].engine(np.zeros((2, 3, 16, 16), np.float32))
