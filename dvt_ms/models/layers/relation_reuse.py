"""Relation reuse: the previous exit's attention logits, mixed across blocks/heads and resized."""

from __future__ import annotations

from mindspore import Parameter, Tensor, nn, ops

from ... import kernels
from .grid_resize import relation_resize_matrix
from .init import torch_default_uniform
from .mlp import GELU


class PointwiseConv(nn.Cell):
    """A 1x1 Conv2d with torch's parameter layout ([out, in, 1, 1]), computed as a matmul over channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = Parameter(torch_default_uniform((out_channels, in_channels, 1, 1), in_channels), name="weight")
        self.bias = Parameter(torch_default_uniform((out_channels,), in_channels), name="bias")

    def construct(self, x):
        # x: [B, C_in, L] -> [B, C_out, L]
        w = self.weight.reshape(self.out_channels, self.in_channels).astype(x.dtype)
        return ops.matmul(w, x) + self.bias.astype(x.dtype).reshape(-1, 1)


class RelationReuse(nn.SequentialCell):
    """Maps upstream logits [B, C_up, n_up, n_up] (all blocks' heads concatenated) to one additive
    term per downstream block, [B, heads, n, n] each.

    Its children are the 1x1-conv MLP (``0`` -> GELU -> ``2``; the exit stores this cell as
    ``relation_reuse_conv``, the official name) that mixes the channels; then both token axes are
    resized with the class token kept: ``P R P^T``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, up_grid: int, grid: int,
                 depth: int) -> None:
        super().__init__([
            PointwiseConv(in_channels, hidden_channels), GELU(),
            PointwiseConv(hidden_channels, out_channels)])
        self.n_up, self.n = up_grid * up_grid + 1, grid * grid + 1
        self.out_channels, self.depth = out_channels, depth
        self.resize = Tensor(relation_resize_matrix(up_grid, grid))
        self.fused = kernels.sandwich_op()  # CPU: P R P^T from P's non-zeros, no broadcast of P

    def mixed(self, relations):
        """The relation terms of every downstream block, unsplit: [B, depth * heads, n, n]."""
        r = relations.reshape(-1, relations.shape[1], self.n_up * self.n_up)
        for cell in self.cell_list:
            r = cell(r)
        r = r.reshape(-1, self.out_channels, self.n_up, self.n_up)
        p = self.resize.astype(r.dtype)
        if kernels.use_fused(self, r):
            return self.fused(r, p)
        return ops.matmul(ops.matmul(p, r), p.swapaxes(0, 1))

    def construct(self, relations):
        return ops.split(self.mixed(relations), self.out_channels // self.depth, axis=1)
