"""The one way to get a model from a checkpoint: :func:`load_model`.

A dvt_ms checkpoint records the model that wrote it (``model`` and ``model_args`` in its metadata), so
``load_model("dvt_t2t_vit_12.ckpt")`` builds that model and loads the weights strictly. Naming a model
(and arguments) builds that one instead. To load weights into a network you built yourself, use
:func:`dvt_ms.checkpoint.load_checkpoint`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import load_checkpoint, read_metadata
from ..config import ConfigError
from .cascade import DVTCascade
from .registry import create_model

__all__ = ["LoadedModel", "load_model"]


@dataclass
class LoadedModel:
    """A cascade with a checkpoint's weights, the model name and arguments it was built from, and the
    checkpoint's metadata (``{}`` when it has none)."""

    model: DVTCascade
    name: str
    model_args: dict[str, Any]
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


def load_model(path: str | os.PathLike, model: str | None = None, *, strict: bool = True,
               **model_args: Any) -> LoadedModel:
    """Build a model and load the checkpoint ``path`` (``.ckpt`` / ``.safetensors``) into it.

    ``model`` (a registered name) and ``model_args`` choose the network; without ``model`` it is the one
    the checkpoint's metadata records, with ``model_args`` overriding the recorded arguments. Raises
    :class:`~dvt_ms.config.ConfigError` when no model is named or it cannot be built, and
    :class:`~dvt_ms.checkpoint.CheckpointError` when the file cannot be read or does not fit."""
    path = os.fspath(path)
    metadata = read_metadata(path) or {}
    if model is None:
        if not metadata.get("model"):
            raise ConfigError(f"no model given and {path} does not name one: pass --config configs/<model>.yaml "
                              "or --model NAME")
        model, model_args = metadata["model"], {**(metadata.get("model_args") or {}), **model_args}
    try:
        network = create_model(model, **model_args)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"cannot build model {model!r}: {err}") from None
    load_checkpoint(network, path, strict=strict)
    return LoadedModel(network, model, dict(model_args), path, metadata)
