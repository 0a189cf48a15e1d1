"""Exit decisions, the budgeted-batch threshold rule and its offline simulation (numpy only).

The exit rule: an image leaves at the first exit ``k`` whose top softmax probability is ``>= T_k``;
the last exit takes every image still running. :func:`softmax_confidence` and :func:`leaves_at` are
the single implementation of that rule: the early-exit engine applies them to the logits of the
images that reach an exit, the simulation (:func:`simulate_exits`) to the logits of every exit for
every image, so both decide identically for identical logits.

Budgeted batch classification, as the official DVT inference script does it: for ``p = 1..59``,
``q = p / 20``, the target share of exit ``k`` (1-based) is ``q^k`` normalised over the exits (in
float32). On a held-out set, for each exit but the last, in order: ``T_k`` is the confidence of the
sample at which the count of not-yet-exited samples, taken in descending order of their confidence
at exit ``k``, reaches ``floor(n * share_k)``; every sample whose confidence at exit ``k`` is
``>= T_k`` then counts as exited. If that count is 0 or is never reached (ties at an earlier exit
took more samples than planned), ``T_k`` stays at :data:`NEVER` and no sample leaves at exit ``k``.
The last threshold is :data:`ALWAYS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALWAYS", "NEVER", "NUM_POINTS", "CurvePoint", "budget_shares", "budgeted_batch_curve", "calibrate",
    "evaluate_thresholds", "find_thresholds", "leaves_at", "normalize_thresholds", "pick_budget_point",
    "simulate_exits", "softmax_confidence", "topk_correct",
]

NUM_POINTS = 59
NEVER = 1e8  # threshold of an exit no sample leaves at
ALWAYS = -1e8  # threshold of the last exit


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, row by row in float32 (a row's result does not depend on the others)."""
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_confidence(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top softmax probability (float32) and its class (int64) of each row of ``logits`` [..., C]."""
    probs = softmax(logits)
    return probs.max(axis=-1), probs.argmax(axis=-1).astype(np.int64)


def softmax_top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes (int64 [..., k]) of each row and their softmax probabilities
    (float32), most probable first; column 0 equals :func:`softmax_confidence`."""
    probs = softmax(logits)
    k = max(1, min(int(k), probs.shape[-1]))
    classes = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    return classes.astype(np.int64), np.take_along_axis(probs, classes, axis=-1)


def leaves_at(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of the samples whose ``confidence`` clears ``threshold`` (``>=``)."""
    return np.asarray(confidence) >= threshold


def topk_correct(logits: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Boolean [N]: whether ``targets`` is among the ``k`` largest logits of each row (k capped at C)."""
    logits = np.asarray(logits)
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return (top == np.asarray(targets)[:, None]).any(axis=-1)


def normalize_thresholds(values: Sequence[float], num_exits: int, where: str = "thresholds") -> np.ndarray:
    """Thresholds for every exit as float64 [num_exits], the last set to :data:`ALWAYS`.

    Accepts one value per exit but the last, or one per exit (the last one is then ignored: the last
    exit takes every remaining image). Anything else is a ``ValueError`` naming both lengths.
    """
    values = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if values.size not in (num_exits - 1, num_exits) or num_exits < 1:
        raise ValueError(f"{where}: got {values.size} value(s) for a model with {num_exits} exits; give "
                         f"{num_exits - 1} (one per exit but the last) or {num_exits}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{where}: thresholds must be finite numbers, got {values.tolist()}")
    out = np.full(num_exits, ALWAYS, dtype=np.float64)
    out[: num_exits - 1] = values[: num_exits - 1]
    return out


def budget_shares(p: int, num_exits: int) -> np.ndarray:
    """Target exit shares of budget point ``p`` (1..59): ``q^k / sum_j q^j`` with ``q = p / 20``, float32."""
    q = np.float32(p / 20.0)
    shares = np.exp(np.log(q) * np.arange(1, num_exits + 1, dtype=np.float32))
    return (shares / shares.sum()).astype(np.float32)


def find_thresholds(confidences: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Thresholds (float64 [n_exits]) from held-out confidences [n_exits, n] by the budgeted-batch rule."""
    confidences = np.asarray(confidences, dtype=np.float32)
    num_exits, n = confidences.shape
    thresholds = np.full(num_exits, NEVER, dtype=np.float64)
    exited = np.zeros(n, dtype=bool)
    for k in range(num_exits - 1):
        target = math.floor(np.float32(n) * np.float32(shares[k]))
        waiting = np.sort(confidences[k][~exited])[::-1]
        if 1 <= target <= waiting.size:
            thresholds[k] = float(waiting[target - 1])
        exited |= leaves_at(confidences[k], thresholds[k])
    thresholds[-1] = ALWAYS
    return thresholds


def calibrate(confidences: np.ndarray, num_points: int = NUM_POINTS) -> np.ndarray:
    """The thresholds of every budget point: float64 [num_points, n_exits] (row ``p - 1`` is point ``p``)."""
    num_exits = np.asarray(confidences).shape[0]
    return np.stack([find_thresholds(confidences, budget_shares(p, num_exits)) for p in range(1, num_points + 1)])


def simulate_exits(confidences: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Exit index (0-based, int64 [n]) of every sample given its confidence at every exit [n_exits, n]."""
    confidences = np.asarray(confidences)
    num_exits, n = confidences.shape
    thresholds = normalize_thresholds(thresholds, num_exits)
    exits = np.full(n, num_exits - 1, dtype=np.int64)
    running = np.ones(n, dtype=bool)
    for k in range(num_exits - 1):
        leave = running & leaves_at(confidences[k], thresholds[k])
        exits[leave] = k
        running &= ~leave
    return exits


@dataclass
class CurvePoint:
    """One operating point: accuracy (%), expected GFLOPs per image, and where the samples left."""

    thresholds: list[float]
    accuracy: float
    expected_gflops: float
    exit_counts: list[int]

    @property
    def exit_shares(self) -> list[float]:
        total = sum(self.exit_counts)
        return [c / total if total else 0.0 for c in self.exit_counts]


def evaluate_thresholds(confidences: np.ndarray, predictions: np.ndarray, targets: np.ndarray,
                        cumulative_gflops: Sequence[float], thresholds: Sequence[float]) -> CurvePoint:
    """Simulate early exit with ``thresholds``: top-1 accuracy (%), expected GFLOPs, per-exit counts.

    ``predictions`` [n_exits, n] are the arg-max classes, ``cumulative_gflops[k]`` the cost of leaving
    at exit ``k`` (exits 1..k all ran).
    """
    confidences, predictions = np.asarray(confidences), np.asarray(predictions)
    num_exits, n = confidences.shape
    exits = simulate_exits(confidences, thresholds)
    chosen = predictions[exits, np.arange(n)]
    counts = np.bincount(exits, minlength=num_exits)
    accuracy = 100.0 * float(np.mean(chosen == np.asarray(targets))) if n else 0.0
    flops = float(np.dot(counts / max(n, 1), np.asarray(cumulative_gflops, dtype=np.float64)))
    return CurvePoint([float(t) for t in normalize_thresholds(thresholds, num_exits)], accuracy, flops,
                      counts.astype(int).tolist())


def budgeted_batch_curve(confidences: np.ndarray, predictions: np.ndarray, targets: np.ndarray,
                         cumulative_gflops: Sequence[float], threshold_rows: np.ndarray) -> list[CurvePoint]:
    """:func:`evaluate_thresholds` for every row of ``threshold_rows`` (the budget points, in order)."""
    return [evaluate_thresholds(confidences, predictions, targets, cumulative_gflops, row)
            for row in np.asarray(threshold_rows)]


def pick_budget_point(curve: Sequence[CurvePoint], budget: float | None = None) -> int:
    """Index of the most accurate curve point whose expected GFLOPs are ``<= budget`` (any point when
    ``budget`` is ``None``); ties go to the cheaper point. ``ValueError`` when no point fits."""
    if not curve:
        raise ValueError("the budgeted-batch curve is empty: there is no point to choose from")
    fitting = [i for i, point in enumerate(curve) if budget is None or point.expected_gflops <= budget]
    if not fitting:
        cheapest = min(point.expected_gflops for point in curve)
        raise ValueError(f"--budget {budget} GFLOPs is below every point of the curve (the cheapest needs "
                         f"{cheapest:.4f} GFLOPs per image)")
    return min(fitting, key=lambda i: (-curve[i].accuracy, curve[i].expected_gflops, i))
