"""Independent reference implementations used to check the MindSpore port.

``dvt_ms.reference.torch_dvt`` is a PyTorch re-implementation of the Dynamic Vision Transformer whose
parameter names and shapes equal the official PyTorch checkpoints. PyTorch is an optional dependency:
importing this package never imports torch; only ``dvt_ms.reference.torch_dvt`` (and the lazy
attributes below) need it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["build_torch_dvt"]


def __getattr__(name: str) -> Any:
    """Lazily forward ``build_torch_dvt`` to :mod:`dvt_ms.reference.torch_dvt` (imports torch then)."""
    if name == "build_torch_dvt":
        return importlib.import_module(".torch_dvt", __name__).build_torch_dvt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
