"""Training of DVT cascades: :func:`train` (:mod:`~dvt_ms.train.run`), ``dvt-train``
(:mod:`~dvt_ms.train.cli`) and its building blocks, one per submodule (optimizer, schedule, loss, EMA,
loss scale, train step, checkpoints, distributed set-up, logs, validation, the epoch loop).

Importing this package loads nothing else; :func:`train` and :class:`TrainResult` load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {"TrainResult": "run", "train": "run", "main": "cli"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
