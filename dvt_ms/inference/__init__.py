"""Real early-exit inference, threshold calibration and evaluation of DVT cascades.

* :class:`EarlyExitEngine`: runs later exits only on the images earlier exits could not decide;
* :mod:`~dvt_ms.inference.thresholds`: the exit rule, the official budgeted-batch threshold rule and
  the offline simulation the engine agrees with;
* :func:`dvt_ms.inference.evaluate.evaluate` (``from dvt_ms.inference.evaluate import evaluate``) /
  ``dvt-eval``: the three official evaluation modes
  with outputs (JSON, CSV, plot) and the wall-clock comparison.

Importing this package loads nothing else; the engine and the evaluation are imported on first use.
The evaluation's settings are :class:`dvt_ms.options.EvalSettings`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "EarlyExitEngine": "engine",
    "EarlyExitResult": "engine",
    "EvalResults": "evaluate",
    "main": "cli",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
