"""Initial weights for fine-tuning: load a checkpoint, re-initialising the heads when the classes differ."""

from __future__ import annotations

import os

import mindspore as ms
import numpy as np
from mindspore import nn

from ..checkpoint import CheckpointError, compare_shapes, read_checkpoint
from ..convert.mapping import strip_wrapper_prefixes


def is_head(name: str) -> bool:
    """Parameters of an exit's classification head (``<exit>.head.weight`` / ``.bias``)."""
    return ".head." in name or name.startswith("head.")


def load_pretrained(model: nn.Cell, path: str) -> list[str]:
    """Load ``path`` (``.ckpt`` / ``.safetensors``) into ``model`` by parameter name.

    When the file's heads have another number of classes than the model, every ``*.head.*`` tensor
    of the file is dropped and the model keeps its freshly initialised heads. Everything else must
    match exactly (names and shapes); otherwise :class:`CheckpointError` lists the differences and
    nothing is loaded. Returns notes for the log.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"--pretrained {path}: file not found")
    arrays, _ = read_checkpoint(path)
    arrays, _ = strip_wrapper_prefixes(arrays)  # e.g. module. from a DataParallel checkpoint
    params = model.parameters_dict()
    notes = []
    heads_differ = [k for k in arrays
                    if is_head(k) and k in params and tuple(arrays[k].shape) != tuple(params[k].shape)]
    if heads_differ:
        found = arrays[heads_differ[0]].shape[0]
        dropped = sorted(k for k in arrays if is_head(k))
        arrays = {k: v for k, v in arrays.items() if not is_head(k)}
        notes.append(f"{path} has {found}-class heads, the model {getattr(model, 'num_classes', '?')} classes: "
                     f"kept the new heads, dropped {len(dropped)} head tensors ({', '.join(dropped[:6])}"
                     f"{', ...' if len(dropped) > 6 else ''})")
    expected = {k: p.shape for k, p in params.items() if not (heads_differ and is_head(k))}
    mismatch = compare_shapes({k: v.shape for k, v in arrays.items()}, expected)
    if not mismatch.ok:
        raise CheckpointError(f"--pretrained {path} does not fit the model being trained: "
                              f"{mismatch.describe('file', 'model')}. Nothing was loaded (check --model and the "
                              "model flags against the checkpoint)")
    for name, value in arrays.items():
        params[name].set_data(ms.Tensor(np.asarray(value, order="C"), dtype=params[name].dtype))
    notes.insert(0, f"loaded {len(arrays)} tensors from {path}")
    return notes
