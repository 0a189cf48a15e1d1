"""The exit rule, the budgeted-batch threshold rule (official inference script) and the simulation.

The hand-built example: 10 samples, 3 exits, two classes. Each sample's confidence at each exit is
chosen by hand and turned into logits ``log([c, 1 - c])`` (the softmax gives ``c`` back):

    sample       0    1    2    3    4    5    6    7    8    9
    exit 1     .95  .60  .90  .55  .85  .70  .65  .99  .52  .75
    exit 2     .80  .97  .60  .93  .70  .88  .62  .51  .91  .66
    exit 3     .70  .80  .60  .90  .55  .65  .75  .85  .95  .58

Point p = 20 (q = 1): shares 1/3 each, floor(10 * 1/3) = 3 per exit. Exit 1, descending: .99 (7),
.95 (0), .90 (2) -> T1 = .90, samples 7, 0, 2 leave. Exit 2 over the rest (1 .97, 3 .93, 4 .70, 5 .88,
6 .62, 8 .91, 9 .66), descending .97, .93, .91 -> T2 = .91, samples 1, 3, 8 leave; 4, 5, 6, 9 go to exit 3.

Point p = 40 (q = 2): shares 2/14, 4/14, 8/14 -> floor(1.43) = 1, floor(2.86) = 2. T1 = .99 (sample 7);
exit 2 over the other nine: .97 (1), .93 (3) -> T2 = .93; samples 0, 2, 4, 5, 6, 8, 9 go to exit 3.

Point p = 10 (q = 0.5): shares .5/.875, .25/.875, .125/.875 -> floor(5.71) = 5, floor(2.86) = 2.
T1 = .75 (5th of .99, .95, .90, .85, .75): samples 7, 0, 2, 4, 9 leave. Exit 2 over 1, 3, 5, 6, 8
(.97, .93, .88, .62, .91) -> T2 = .93: samples 1, 3 leave; 5, 6, 8 go to exit 3.
"""

from __future__ import annotations

import numpy as np
import pytest

from dvt_ms.inference.thresholds import (
    ALWAYS,
    NEVER,
    CurvePoint,
    budget_shares,
    budgeted_batch_curve,
    calibrate,
    evaluate_thresholds,
    find_thresholds,
    normalize_thresholds,
    pick_budget_point,
    simulate_exits,
    softmax_confidence,
    topk_correct,
)

CONF = np.array([
    [.95, .60, .90, .55, .85, .70, .65, .99, .52, .75],
    [.80, .97, .60, .93, .70, .88, .62, .51, .91, .66],
    [.70, .80, .60, .90, .55, .65, .75, .85, .95, .58],
])


def two_class_logits(confidence: np.ndarray, winner: np.ndarray) -> np.ndarray:
    """Logits [n, 2] whose softmax puts ``confidence`` on class ``winner``."""
    logits = np.zeros((confidence.size, 2), dtype=np.float32)
    rows = np.arange(confidence.size)
    logits[rows, winner] = np.log(confidence)
    logits[rows, 1 - winner] = np.log(1 - confidence)
    return logits


def hand_logits() -> list[np.ndarray]:
    """Exits 1 and 2 predict class 0 for every sample, exit 3 predicts class ``sample % 2``."""
    n = CONF.shape[1]
    winners = [np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.arange(n) % 2]
    return [two_class_logits(CONF[k], winners[k]) for k in range(3)]


def hand_confidences() -> tuple[np.ndarray, np.ndarray]:
    pairs = [softmax_confidence(logits) for logits in hand_logits()]
    return np.stack([c for c, _ in pairs]), np.stack([p for _, p in pairs])


def test_softmax_confidence_gives_the_built_probabilities_back():
    conf, pred = hand_confidences()
    np.testing.assert_allclose(conf, CONF, rtol=0, atol=1e-6)
    assert conf.dtype == np.float32
    assert pred[0].tolist() == [0] * 10 and pred[2].tolist() == [0, 1] * 5


def test_softmax_confidence_of_a_row_does_not_depend_on_the_other_rows():
    logits = np.random.RandomState(0).randn(9, 1000).astype(np.float32) * 4
    conf, pred = softmax_confidence(logits)
    for i in range(9):
        c, p = softmax_confidence(logits[i:i + 1])
        assert c[0] == conf[i] and p[0] == pred[i]


def test_budget_shares_are_powers_of_q_normalised():
    np.testing.assert_allclose(budget_shares(20, 3), [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(budget_shares(40, 3), [1 / 7, 2 / 7, 4 / 7], rtol=1e-6)
    np.testing.assert_allclose(budget_shares(10, 2), [2 / 3, 1 / 3], rtol=1e-6)
    assert budget_shares(7, 4).dtype == np.float32 and abs(budget_shares(7, 4).sum() - 1) < 1e-6


@pytest.mark.parametrize("p, thresholds, exits", [
    (20, [.90, .91], [1, 2, 1, 2, 3, 3, 3, 1, 2, 3]),
    (40, [.99, .93], [3, 2, 3, 2, 3, 3, 3, 1, 3, 3]),
    (10, [.75, .93], [1, 2, 1, 2, 1, 3, 3, 1, 3, 1]),
])
def test_find_thresholds_reproduces_the_hand_computed_answer(p, thresholds, exits):
    conf, _ = hand_confidences()
    found = find_thresholds(conf, budget_shares(p, 3))
    np.testing.assert_allclose(found[:2], thresholds, rtol=0, atol=1e-6)
    assert found[2] == ALWAYS
    # the thresholds are the confidences of real samples, so exits are decided with no tolerance
    assert (simulate_exits(conf, found) + 1).tolist() == exits


def test_ties_exit_together_and_an_unreachable_count_closes_the_exit():
    # 6 samples, shares 1/3: floor(6 / 3) = 2 per exit. Exit 1: .9, .8 -> T1 = .8, and the four samples
    # at >= .8 all leave. Exit 2 would need 2 waiting samples but only sample 5 waits: T2 stays NEVER.
    conf = np.array([[.9, .8, .8, .8, .8, .5], [.1, .1, .1, .1, .1, .99], [.5] * 6], dtype=np.float32)
    found = find_thresholds(conf, budget_shares(20, 3))
    assert found.tolist() == [pytest.approx(.8), NEVER, ALWAYS]
    assert simulate_exits(conf, found).tolist() == [0, 0, 0, 0, 0, 2]


def test_a_zero_target_closes_the_exit():
    # p = 59 (q = 2.95): share of exit 1 = 2.95 / (2.95 + 2.95^2 + 2.95^3) = 0.079, floor(0.79) = 0 samples;
    # exit 2: 0.233 -> 2 samples, .97 (1) and .93 (3)
    conf, _ = hand_confidences()
    found = find_thresholds(conf, budget_shares(59, 3))
    assert found[0] == NEVER and found[1] == pytest.approx(.93, abs=1e-6)
    assert simulate_exits(conf, found).tolist() == [2, 1, 2, 1, 2, 2, 2, 2, 2, 2]


def test_evaluate_thresholds_accuracy_flops_and_counts_by_hand():
    # p = 20 exits: {7, 0, 2} at exit 1 (class 0 predicted; right for 0 and 2), {1, 3, 8} at exit 2
    # (right for 8), {4, 5, 6, 9} at exit 3 (always right): 7 / 10. GFLOPs (3 * 1 + 3 * 3 + 4 * 6) / 10.
    conf, pred = hand_confidences()
    targets = np.arange(10) % 2
    point = evaluate_thresholds(conf, pred, targets, [1.0, 3.0, 6.0], find_thresholds(conf, budget_shares(20, 3)))
    assert point.accuracy == pytest.approx(70.0)
    assert point.expected_gflops == pytest.approx(3.6)
    assert point.exit_counts == [3, 3, 4]
    assert point.exit_shares == pytest.approx([.3, .3, .4])


def test_calibrate_and_curve_cover_the_59_points():
    conf, pred = hand_confidences()
    rows = calibrate(conf)
    assert rows.shape == (59, 3)
    assert rows[19, :2] == pytest.approx([.90, .91], abs=1e-6)  # row p - 1
    curve = budgeted_batch_curve(conf, pred, np.arange(10) % 2, [1.0, 3.0, 6.0], rows)
    assert len(curve) == 59 and curve[19].accuracy == pytest.approx(70.0)
    # larger q sends more samples to the last exit: cost never decreases along the curve here
    costs = [p.expected_gflops for p in curve]
    assert costs[0] < costs[-1]


def test_simulation_sends_everything_left_to_the_last_exit():
    conf = np.array([[.2, .9, .4], [.1, .1, .95]], dtype=np.float32)
    assert simulate_exits(conf, [.5]).tolist() == [1, 0, 1]
    assert simulate_exits(conf, [.5, .99]).tolist() == [1, 0, 1]  # the last value is ignored
    assert simulate_exits(conf, [.9]).tolist() == [1, 0, 1]  # >=: .9 leaves at exit 1


@pytest.mark.parametrize("values", [[], [.5], [.1, .2, .3, .4]])
def test_normalize_thresholds_rejects_the_wrong_length(values):
    with pytest.raises(ValueError, match=f"got {len(values)} value.*3 exits.*give 2"):
        normalize_thresholds(values, 3)


def test_normalize_thresholds_rejects_non_finite_values():
    with pytest.raises(ValueError, match="finite"):
        normalize_thresholds([float("nan"), .5], 3)


def test_pick_budget_point_takes_the_most_accurate_point_within_budget():
    curve = [CurvePoint([], a, g, []) for g, a in [(1.0, 70.0), (1.5, 74.0), (2.0, 76.0), (2.5, 76.0), (3.0, 75.0)]]
    assert pick_budget_point(curve, 1.7) == 1
    assert pick_budget_point(curve, 2.0) == 2
    assert pick_budget_point(curve, None) == 2  # tie at 76 % goes to the cheaper point
    with pytest.raises(ValueError, match=r"below every point.*1\.0000"):
        pick_budget_point(curve, 0.5)


def test_topk_correct_caps_k_at_the_class_count():
    logits = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert topk_correct(logits, np.array([2, 2]), 1).tolist() == [False, False]
    assert topk_correct(logits, np.array([2, 2]), 2).tolist() == [True, True]
    assert topk_correct(logits, np.array([1, 0]), 5).tolist() == [True, True]
