"""dvt_ms: the Dynamic Vision Transformer (DVT, NeurIPS 2021) in MindSpore.

``import dvt_ms`` is cheap: the names below load their modules (and MindSpore) on first use.

* models: :func:`create_model`, :func:`list_models`, :func:`spec_for`, :func:`load_model` (a model from a
  checkpoint), :class:`DVTCascade`, :class:`CascadeSpec`, :class:`ReuseState`;
* the commands as functions, each taking its settings from :mod:`dvt_ms.options`:
  :func:`dvt_ms.inference.evaluate.evaluate`, :func:`dvt_ms.serve.predict.predict`,
  :func:`dvt_ms.serve.export.export`, :func:`dvt_ms.train.train`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CascadeSpec": "models",
    "DVTCascade": "models",
    "LoadedModel": "models",
    "ReuseState": "models",
    "create_model": "models",
    "list_models": "models",
    "load_model": "models",
    "spec_for": "models",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
