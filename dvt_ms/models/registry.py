"""Model registry: ``register_model`` decorates an entrypoint, ``create_model`` builds by name."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

_MODELS: dict[str, Callable[..., Any]] = {}


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register an entrypoint under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def model_entrypoint(name: str) -> Callable[..., Any]:
    """The entrypoint of ``name``; an unknown name is an error that suggests the closest ones."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    return _MODELS[name]


def model_arguments(name: str) -> list[str]:
    """Keyword arguments that ``create_model(name, ...)`` accepts."""
    return list(inspect.signature(model_entrypoint(name)).parameters)


def create_model(name: str, **overrides: Any):
    """Build a registered model; every entrypoint argument can be overridden.

    ``checkpoint_path`` (optional) loads a MindSpore checkpoint strictly after building.
    """
    checkpoint_path = overrides.pop("checkpoint_path", None)
    entry = model_entrypoint(name)
    allowed = model_arguments(name)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"model {name!r} has no argument(s) {', '.join(unknown)}; it accepts {', '.join(allowed)}")
    model = entry(**overrides)
    if checkpoint_path:
        from ..checkpoint import load_checkpoint  # local import: checkpoint I/O is optional here

        load_checkpoint(model, checkpoint_path)
    return model
