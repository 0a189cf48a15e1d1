"""Choosing the thresholds to run: given explicitly, or a point of a calibrated budgeted-batch curve.

A calibrated checkpoint (``dvt-eval --eval_mode 2`` then stamping, or a converted official one) and an
exported model carry a threshold table (``dynamic_threshold``, one row per curve point) and the curve
itself (``budgeted_batch_classification``: expected GFLOPs and accuracy per point). The operating
point is ``--thresholds`` when given, else the most accurate point within ``--budget`` GFLOPs per
image, else the most accurate point. ``dvt-eval``, ``dvt-export`` and ``dvt-predict`` choose alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import ConfigError
from .thresholds import CurvePoint, normalize_thresholds, pick_budget_point

__all__ = ["OperatingPoint", "ThresholdError", "choose_operating_point", "explicit_thresholds",
           "stored_threshold_table"]


class ThresholdError(ValueError):
    """Thresholds that cannot be used or chosen; the message says what to change."""


@dataclass(frozen=True)
class OperatingPoint:
    """Thresholds of every exit (the last :data:`~dvt_ms.inference.thresholds.ALWAYS`), how they were
    chosen, and the 1-based curve point (None for explicit thresholds)."""

    thresholds: np.ndarray
    chosen_by: str
    curve_point: int | None = None


def explicit_thresholds(values: Sequence[float] | None, num_exits: int) -> np.ndarray | None:
    """``--thresholds`` for every exit, or None when not given."""
    if values is None:
        return None
    try:
        return normalize_thresholds(values, num_exits, "--thresholds")
    except ValueError as err:  # a wrong count for this model: bad usage, like any other bad value
        raise ConfigError(str(err)) from None


def stored_threshold_table(metadata: dict | None, num_exits: int, source: str) -> np.ndarray | None:
    """The ``dynamic_threshold`` table [points, num_exits] stored in ``metadata`` (None when absent);
    ``source`` names the file in errors."""
    if not metadata or metadata.get("dynamic_threshold") is None:
        return None
    try:
        rows = np.asarray(metadata["dynamic_threshold"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ThresholdError(f"{source}: the stored dynamic_threshold is not a numeric table") from None
    if rows.ndim != 2 or rows.shape[1] != num_exits:
        raise ThresholdError(f"{source}: the stored dynamic_threshold has shape {list(rows.shape)}, but the model "
                             f"has {num_exits} exits (expected [points, {num_exits}])")
    return rows


def _stored_curve(metadata: dict, rows: np.ndarray, source: str) -> list[CurvePoint]:
    curve = metadata.get("budgeted_batch_classification") or [[], []]
    try:
        flops, accuracy = (np.asarray(c, dtype=np.float64) for c in curve)
    except (TypeError, ValueError):
        raise ThresholdError(f"{source}: the stored budgeted_batch_classification is not [gflops, accuracy]") \
            from None
    if flops.shape != (len(rows),) or accuracy.shape != (len(rows),):
        raise ThresholdError(f"{source}: the stored curve has {flops.size} points but the threshold table "
                             f"{len(rows)} rows")
    return [CurvePoint(list(map(float, r)), float(a), float(g), []) for r, a, g in zip(rows, accuracy, flops,
                                                                                       strict=True)]


def choose_operating_point(num_exits: int, *, thresholds: Sequence[float] | None = None,
                           budget: float | None = None, rows: np.ndarray | None = None,
                           curve: Sequence[CurvePoint] | None = None, metadata: dict | None = None,
                           source: str = "the checkpoint") -> OperatingPoint:
    """The operating point: explicit ``thresholds``; else the most accurate point of ``curve`` (its
    threshold table ``rows``) within ``budget``. Without ``rows`` / ``curve`` both are read from
    ``metadata`` (as stored in a calibrated checkpoint or an export manifest)."""
    if thresholds is not None and budget is not None:
        raise ThresholdError("give either --thresholds or --budget, not both")
    explicit = explicit_thresholds(thresholds, num_exits)
    if explicit is not None:
        return OperatingPoint(explicit, "--thresholds")
    if rows is None:
        rows = stored_threshold_table(metadata, num_exits, source)
        if rows is None:
            raise ThresholdError(f"{source} stores no calibrated thresholds (dynamic_threshold): pass --thresholds, "
                                 "or calibrate with dvt-eval --eval_mode 2 and stamp the checkpoint")
        curve = _stored_curve(metadata, rows, source)
    if not curve:
        raise ThresholdError(f"{source} has no budgeted-batch curve to choose from: pass --thresholds")
    try:
        index = pick_budget_point(curve, budget)
    except ValueError as err:
        if budget is not None:  # a budget below every point: a value out of range for this model
            raise ConfigError(str(err)) from None
        raise ThresholdError(str(err)) from None
    chosen_by = f"--budget {budget}" if budget is not None else "most accurate curve point"
    return OperatingPoint(normalize_thresholds(rows[index], num_exits), chosen_by, index + 1)
