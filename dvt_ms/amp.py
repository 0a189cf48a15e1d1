"""The precision policy of a DVT cascade: :func:`apply_precision` (``--amp_level`` of dvt-train and dvt-eval).

* ``O0``: everything in float32.
* ``O2`` (the shipped recipes): the matrix products run in float16 (or bfloat16): every ``nn.Dense``
  and the patch projections. Kept in float32: every LayerNorm (blocks, final norms, the T2T performer
  norms, the feature-reuse MLPs' norms), the attention softmax and the attention logits that relation
  reuse hands to the next exit (:class:`~dvt_ms.models.layers.AttentionScores`), the relation-reuse
  modules, the T2T token performer (its random-feature ``exp`` overflows in float16) and, in
  :mod:`dvt_ms.train.loss`, the loss.
* ``O3``: MindSpore's pure low precision: every cell in float16, norms and softmax included.

The mechanism is MindSpore's own, ``Cell.to_float``: a cell marked with a type casts its inputs to it.
The policy marks the cells it names and leaves the containers (blocks, exits, the cascade) unmarked,
so that tensors keep the precision the last marked cell gave them. Below O0 the blocks, exits and token
performers leave their fused float32 CPU kernels (``FUSED_LAYER_CELLS``) for the marked cells.
``amp.auto_mixed_precision(…, "O2")`` and ``amp.custom_mixed_precision`` mark the whole network first, which
would cast the float32 logits back to float16 at every exit boundary (and they keep only ``nn.LayerNorm`` /
BatchNorm in float32).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn

from .models.exit import DVTExit
from .models.layers import AttentionScores, LayerNorm, RelationReuse, TokenPerformer
from .models.layers.patch_embed import PatchProjection

__all__ = ["AMP_LEVELS", "FLOAT32_CELLS", "LOW_PRECISION_CELLS", "apply_precision", "low_precision_dtype"]

AMP_LEVELS = ("O0", "O2", "O3")
FLOAT32_CELLS: tuple[type[nn.Cell], ...] = (LayerNorm, AttentionScores, RelationReuse, TokenPerformer)
LOW_PRECISION_CELLS: tuple[type[nn.Cell], ...] = (nn.Dense, PatchProjection)
FUSED_LAYER_CELLS: tuple[type[nn.Cell], ...] = (DVTExit, TokenPerformer)  # whole layers in one CPU kernel
_DTYPES = {"float16": ms.float16, "bfloat16": ms.bfloat16}


def low_precision_dtype(name: str):
    """``"float16"`` / ``"bfloat16"`` -> the MindSpore type (``ValueError`` naming the choices)."""
    if name not in _DTYPES:
        raise ValueError(f"amp dtype must be one of {', '.join(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def _mark(cell: nn.Cell, dtype) -> None:
    for child in cell.cells():
        if isinstance(child, FLOAT32_CELLS):
            child.to_float(ms.float32)
        elif isinstance(child, LOW_PRECISION_CELLS):
            child.to_float(dtype)
        else:
            _mark(child, dtype)


def apply_precision(model: nn.Cell, level: str, dtype: str = "float16") -> nn.Cell:
    """Apply the precision policy of ``level`` (``O0``, ``O2``, ``O3``; see the module docstring) to
    ``model`` in place and return it. ``dtype``: ``float16`` or ``bfloat16`` (where the device has it)."""
    if level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {', '.join(AMP_LEVELS)}, got {level!r}")
    low = low_precision_dtype(dtype)
    if level != "O0":  # the fused float32 layers would bypass the marked cells: they run the cells instead
        for _, cell in model.cells_and_names():
            if isinstance(cell, FUSED_LAYER_CELLS):
                cell.fused = None
    if level == "O2":
        _mark(model, low)
    elif level == "O3":
        model.to_float(low)
    return model
