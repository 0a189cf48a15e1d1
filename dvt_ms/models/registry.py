"""The model registry: one table from model name to the function that builds its :class:`CascadeSpec`.

A registered model is a function of keyword arguments that returns a :class:`CascadeSpec`; the
registry builds the network from it. Because the registry keeps the spec and not a finished network,
the same name works everywhere: :func:`create_model`, :func:`spec_for` (FLOPs, converter tables,
data sizes without building the network), a YAML config's ``model:`` key and every command-line tool.

    @register_model
    def dvt_vit_tiny(**overrides) -> CascadeSpec:
        return vit_cascade_spec(**{"embed_dim": 192, "num_heads": 3, **overrides})

or, for a variant of an existing spec function, ``register_variant("dvt_vit_tiny", vit_cascade_spec,
embed_dim=192, num_heads=3)``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from .cascade import DVTCascade
from .spec import CascadeSpec

SpecFunction = Callable[..., CascadeSpec]

_MODELS: dict[str, SpecFunction] = {}


def register_model(fn: SpecFunction) -> SpecFunction:
    """Register ``fn`` (keyword arguments -> :class:`CascadeSpec`) under its function name; returns ``fn``."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def register_variant(name: str, base: SpecFunction, doc: str = "", **defaults: Any) -> SpecFunction:
    """Register ``name`` as ``base`` with other defaults; its signature shows them, so every argument of
    ``base`` can still be overridden. Returns the registered spec function."""
    base_params = inspect.signature(base).parameters
    unknown = sorted(set(defaults) - set(base_params))
    if unknown:
        raise ValueError(f"{name}: {base.__name__} has no argument(s) {', '.join(unknown)}")

    def spec(**overrides: Any) -> CascadeSpec:
        return base(**{**defaults, **overrides})

    spec.__name__ = spec.__qualname__ = name
    spec.__doc__ = doc or f"{base.__name__} with {defaults}."
    spec.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(default=defaults.get(p.name, p.default)) for p in base_params.values()],
        return_annotation=CascadeSpec)
    return register_model(spec)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def model_entrypoint(name: str) -> SpecFunction:
    """The spec function of ``name``; an unknown name is an error that suggests the closest ones."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    return _MODELS[name]


def model_arguments(name: str) -> list[str]:
    """Keyword arguments that ``create_model(name, ...)`` and ``spec_for(name, ...)`` accept."""
    return list(inspect.signature(model_entrypoint(name)).parameters)


def spec_for(name: str, **overrides: Any) -> CascadeSpec:
    """The :class:`CascadeSpec` that ``create_model(name, **overrides)`` builds, without building it."""
    fn = model_entrypoint(name)
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise ValueError(f"model {name!r} has no argument(s) {', '.join(unknown)}; it accepts "
                             f"{', '.join(params)}")
    spec = fn(**overrides)
    if not isinstance(spec, CascadeSpec):
        raise TypeError(f"the registered function of model {name!r} returned {type(spec).__name__}, "
                        "not a CascadeSpec")
    return spec


def create_model(name: str, **overrides: Any) -> DVTCascade:
    """Build a registered model; every argument of its spec function can be overridden.

    ``checkpoint_path`` (optional) loads a MindSpore checkpoint strictly after building.
    """
    checkpoint_path = overrides.pop("checkpoint_path", None)
    model = DVTCascade(spec_for(name, **overrides))
    if checkpoint_path:
        from ..checkpoint import load_checkpoint  # local import: checkpoint I/O is optional here

        load_checkpoint(model, checkpoint_path)
    return model
