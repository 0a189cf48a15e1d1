"""The one way to get a model from a checkpoint: :func:`load_model`.

A dvt_ms checkpoint records the model that wrote it (``model`` and ``model_args`` in its metadata), so
``load_model("dvt_t2t_vit_12.ckpt")`` builds that model and loads the weights strictly. Naming a model
(and arguments) builds that one instead. To load weights into a network you built yourself, use
:func:`dvt_ms.checkpoint.load_checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..checkpoint import CheckpointError, load_checkpoint, read_metadata
from ..config import ConfigError
from .cascade import DVTCascade
from .registry import create_model

__all__ = ["LoadedModel", "ModelChoice", "checked_build", "choose_model", "load_model"]


@dataclass
class LoadedModel:
    """A cascade with a checkpoint's weights, the model name and arguments it was built from, and the
    checkpoint's metadata (``{}`` when it has none)."""

    model: DVTCascade
    name: str
    model_args: dict[str, Any]
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


class ModelChoice(NamedTuple):
    """The model a command builds: registered name, arguments, and where the choice came from."""

    name: str
    args: dict[str, Any]
    chosen_by: str


def choose_model(model: str | None, model_args: dict[str, Any], recorded: dict | None) -> ModelChoice | None:
    """``model`` with ``model_args`` when named, else the model a checkpoint's metadata records (``model``,
    ``model_args``) with ``model_args`` on top; None when neither names one."""
    if model:
        return ModelChoice(model, dict(model_args), "given")
    if recorded and recorded.get("model"):
        return ModelChoice(recorded["model"], {**(recorded.get("model_args") or {}), **model_args},
                           "recorded in the checkpoint")
    return None


def checked_build(builder: Callable[..., Any], name: str, **model_args: Any) -> Any:
    """``builder(name, **model_args)`` (``create_model`` or ``spec_for``), a bad name or argument raised as
    :class:`~dvt_ms.config.ConfigError`."""
    try:
        return builder(name, **model_args)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"cannot build model {name!r}: {err}") from None


def load_model(path: str | os.PathLike, model: str | None = None, *, strict: bool = True,
               **model_args: Any) -> LoadedModel:
    """Build a model and load the checkpoint ``path`` (``.ckpt`` / ``.safetensors``) into it.

    ``model`` (a registered name) and ``model_args`` choose the network; without ``model`` it is the one
    the checkpoint's metadata records, with ``model_args`` overriding the recorded arguments. Raises
    :class:`~dvt_ms.config.ConfigError` when no model is named or it cannot be built, and
    :class:`~dvt_ms.checkpoint.CheckpointError` when the file cannot be read or does not fit."""
    path = os.fspath(path)
    metadata = read_metadata(path) or {}
    chosen = choose_model(model, model_args, metadata)
    if chosen is None:
        raise ConfigError(f"no model given and {path} does not name one: pass --config configs/<model>.yaml "
                          "or --model NAME")
    name, arguments, _ = chosen
    network = checked_build(create_model, name, **arguments)
    try:
        load_checkpoint(network, path, strict=strict)
    except CheckpointError as err:
        hint = _recorded_model_hint(name, arguments, metadata)
        if hint:
            raise CheckpointError(f"{err} {hint}") from None
        raise
    return LoadedModel(network, name, arguments, path, metadata)


def _recorded_model_hint(name: str, arguments: dict[str, Any], metadata: dict) -> str:
    """When the model built is not the one the checkpoint records, what differs and how to build that one."""
    recorded, recorded_args = metadata.get("model"), metadata.get("model_args") or {}
    if not recorded:
        return ""
    differs = [f"model {name} vs {recorded}"] if name != recorded else []
    differs += [f"{k} {arguments[k]!r} vs {recorded_args.get(k)!r}" for k in sorted(arguments)
                if arguments[k] != recorded_args.get(k)]
    if not differs:
        return ""
    return (f"The checkpoint records its own model ({recorded}); the settings given build another "
            f"({'; '.join(differs[:6])}): drop -c / --config and the model flags to build the recorded one.")
