"""The PyTorch reference made ready for ``torch.onnx.export``: a checkpoint's weights in
:mod:`dvt_ms.reference.torch_dvt`, with the two operations ONNX runtimes cannot run well swapped for exact
equivalents, and each exit wrapped with exactly the inputs and outputs of its exported graph.

* Grid resize (:class:`~dvt_ms.reference.torch_dvt.GridResize`): ONNX has no adaptive pooling to a size that
  does not divide the input, so :class:`MatrixGridResize` applies the same linear map as one product with the
  model's own matrix (:func:`dvt_ms.models.layers.grid_resize.grid_resize_matrix`), stored in the graph.
* T2T soft split (:class:`~dvt_ms.reference.torch_dvt.SoftSplit`): torch exports ``unfold`` as a chain of
  gathers; :class:`ConvSoftSplit` is one grouped convolution with one-hot kernels instead, which ONNX Runtime
  runs far faster. Every output is one input times 1 plus zeros, so the values are exact.

Both constants are built in numpy when the module is made, so the trace stores them instead of the ops
that would build them. Needs torch (the ``onnx`` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convert.mapping import expected_state_shapes, to_torch_state_dict
from ..models.layers.grid_resize import grid_resize_matrix
from ..reference.torch_dvt import DVTCascade, GridResize, SoftSplit, build_torch_dvt

__all__ = ["ConvSoftSplit", "ExitStageModule", "MatrixGridResize", "export_reference", "use_export_modules"]


class MatrixGridResize(GridResize):
    """:class:`~dvt_ms.reference.torch_dvt.GridResize` as ``x @ M`` with ``M`` the model's
    ``[src^2, dst^2]`` resize matrix (transposed from :func:`~dvt_ms.models.layers.grid_resize.grid_resize_matrix`)."""

    def __init__(self, src: int, dst: int) -> None:
        super().__init__(src, dst)
        # a plain attribute, not a buffer: the trace stores it as a constant of the graph
        self.matrix = torch.from_numpy(np.ascontiguousarray(grid_resize_matrix(src, dst).T))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.matrix.to(x.dtype)


def one_hot_kernels(channels: int, kernel: int) -> np.ndarray:
    """``[channels * kernel^2, 1, kernel, kernel]`` one-hot kernels: a convolution with ``groups=channels`` gives
    ``F.unfold``'s output channels in its order (channel, then kernel row, then kernel column)."""
    one_hot = np.tile(np.eye(kernel * kernel, dtype=np.float32), (channels, 1))
    return one_hot.reshape(channels * kernel * kernel, 1, kernel, kernel)


class ConvSoftSplit(SoftSplit):
    """:class:`~dvt_ms.reference.torch_dvt.SoftSplit` as one grouped convolution with one-hot kernels."""

    def __init__(self, channels: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(channels, kernel, stride, padding)
        self.weight = torch.from_numpy(one_hot_kernels(channels, kernel))  # a graph constant, as above

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight.to(x.dtype), stride=self.stride, padding=self.padding, groups=self.channels)
        return y.flatten(2).transpose(1, 2)


def use_export_modules(reference: nn.Module) -> nn.Module:
    """Swap every grid resize and soft split of ``reference`` for its export form (in place); returns it."""
    for parent in list(reference.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is GridResize:
                setattr(parent, name, MatrixGridResize(child.src, child.dst))
            elif type(child) is SoftSplit:
                setattr(parent, name, ConvSoftSplit(child.channels, child.kernel, child.stride, child.padding))
    return reference


def export_reference(model: Any) -> DVTCascade:
    """The PyTorch reference cascade with ``model``'s weights (a :class:`~dvt_ms.models.DVTCascade`), in
    evaluation mode and with the export modules (:func:`use_export_modules`)."""
    params = {p.name: p.asnumpy() for p in model.get_parameters()}
    state = to_torch_state_dict(params, expected_state_shapes(model.spec))
    reference = build_torch_dvt(model.spec).eval()
    reference.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True)
    return use_export_modules(reference)


class ExitStageModule(nn.Module):
    """An exit with exactly its graph's inputs and outputs: ``(images[, features][, relations])`` ->
    ``(logits, tokens[, relations])``, the relations as one tensor (the blocks' heads stacked on axis 1).

    ``takes`` says whether the exit reuses the previous exit's features and relations, ``upstream_depth`` is the
    previous exit's block count (to split its relations per block) and ``emits`` whether the next exit reuses
    this one's relations.
    """

    def __init__(self, exit_module: nn.Module, takes: tuple[bool, bool], upstream_depth: int, emits: bool) -> None:
        super().__init__()
        self.exit = exit_module
        self.takes, self.upstream_depth, self.emits = takes, upstream_depth, emits

    def forward(self, images: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        features = state[0] if self.takes[0] else None
        relations = list(state[-1].chunk(self.upstream_depth, dim=1)) if self.takes[1] else None
        logits, tokens, per_block = self.exit(images, features, relations)
        return (logits, tokens, torch.cat(per_block, dim=1)) if self.emits else (logits, tokens)
