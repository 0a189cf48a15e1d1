"""An exit's transformer blocks through the fused CPU kernel: the one place the block kernel enters the model.

:class:`FusedBlockStack` runs the blocks of one exit with :func:`dvt_ms.kernels.block_stack_op`, on the
blocks' own parameters: in training one kernel call per block (each with its backward), in inference one
call for the whole stack. A block is then one graph node instead of some eighty. The blocks themselves stay
the plain math (:class:`~dvt_ms.models.layers.block.Block`) and never see the kernel; the exit chooses
between them and this stack (float32 on CPU with the kernels built; blocks with dropout keep the stock path,
whose masks the kernel does not draw).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mindspore import Tensor, nn, ops

from ... import kernels
from .block import Block


def _kernel_weights(block: Block, placeholder: Tensor) -> tuple:
    """``block``'s parameters in the kernel's order (``BLOCK_WEIGHTS`` of them; placeholders for what it lacks)."""
    n1, attn, n2, mlp = block.norm1, block.attn, block.norm2, block.mlp
    weights = [n1.weight, n1.bias, attn.qkv.weight, attn.qkv.bias if block.config.qkv_bias else placeholder,
               attn.proj.weight, attn.proj.bias, n2.weight, n2.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight,
               mlp.fc2.bias]
    if block.feature_reuse:
        norm, reuse_mlp = block.feature_resuse_mlp[0], block.feature_resuse_mlp[1]
        weights += [norm.weight, norm.bias, reuse_mlp.fc1.weight, reuse_mlp.fc1.bias, reuse_mlp.fc2.weight,
                    reuse_mlp.fc2.bias]
    else:
        weights += [placeholder] * 6
    return tuple(weights)


class FusedBlockStack(nn.Cell):
    """The blocks of one exit as fused kernel calls (build with :meth:`for_blocks`).

    ``construct(x, features, relations, masks) -> (tokens, logits or None)``: ``x`` the embedded tokens
    [B, N + 1, D]; ``features`` the previous exit's tokens (feature reuse) or ``None``; ``relations`` the
    relation-reuse terms or ``None``: in training one [B, heads, N + 1, N + 1] term per block (a sequence), in
    inference all of them unsplit, [B, depth * heads, N + 1, N + 1]; ``masks`` the exit's drop-path masks
    [B, 2 depth] (columns 2i, 2i + 1 belong to block i) or ``None``. ``logits``: every block's attention logits
    concatenated, [B, depth * heads, N + 1, N + 1], when the blocks emit them.

    The parameters belong to the blocks (this cell registers none); it holds the kernel ops and their
    constant inputs, flat, since resolving nested cells' attributes in ``construct`` costs compile time.
    """

    def __init__(self, blocks: Sequence[Block], train_op, eval_op) -> None:
        super().__init__()
        first = blocks[0].config
        self.train_op, self.eval_op = train_op, eval_op
        self.depth, self.heads, self.qkv_bias = len(blocks), first.num_heads, first.qkv_bias
        self.emit_relations, self.feature_reuse = first.emit_relations, blocks[0].feature_reuse
        self.placeholder = Tensor(np.zeros(1, np.float32))
        self.resize = blocks[0].resize if self.feature_reuse else self.placeholder
        self.eps = blocks[0].norm1.eps_tensor
        self.masked = tuple(b.config.drop_path > 0.0 for b in blocks)  # block i reads its columns of the masks
        # one kernel config per block in training, for: relation terms given or not x masked or not
        self.train_configs = tuple(
            tuple(self._config(1, relation, masked, True, 2 * i if masked else 0)
                  for relation in (False, True) for masked in (False, True))
            for i in range(self.depth))
        self.eval_configs = tuple(self._config(self.depth, relation, False, False, 0) for relation in (False, True))
        per_block = tuple(_kernel_weights(b, self.placeholder) for b in blocks)
        # not registered: the parameters are the blocks'
        self.__dict__["block_weights"] = per_block
        self.__dict__["stack_weights"] = tuple(w for weights in per_block for w in weights)

    def _config(self, depth: int, relation: bool, masked: bool, training: bool, mask_column: int) -> Tensor:
        """The config input of :func:`dvt_ms.kernels.block_stack_op` (see ``dvt_block_stack``)."""
        values = (depth, self.heads, self.qkv_bias, relation, masked, self.feature_reuse, self.emit_relations,
                  training, mask_column)
        return Tensor(np.array([int(v) for v in values], np.int32))

    @classmethod
    def for_blocks(cls, blocks: Sequence[Block]) -> FusedBlockStack | None:
        """The stack over ``blocks`` (one exit's: the same width, heads, grid and reuse), or ``None`` where the
        stock blocks must run: kernels unavailable or off (:mod:`dvt_ms.kernels`), or dropout in the blocks."""
        first = blocks[0].config
        if any(b.config.has_dropout for b in blocks):
            return None
        train_op = kernels.block_stack_op(first.num_heads, True, first.emit_relations)
        eval_op = kernels.block_stack_op(first.num_heads, False, first.emit_relations)
        if train_op is None or eval_op is None:
            return None
        return cls(blocks, train_op, eval_op)

    def construct(self, x, features=None, relations=None, masks=None):
        """See the class docstring; ``masks`` must be given in training when a block has drop path."""
        features = features if self.feature_reuse else self.placeholder
        if not self.training:
            relation = self.placeholder if relations is None else relations
            config = self.eval_configs[int(relations is not None)]
            x, logits = self.eval_op(x, features, relation, self.resize, self.placeholder, config, self.eps,
                                     *self.stack_weights)
            return x, (logits if self.emit_relations else None)
        all_logits = ()
        for i in range(self.depth):
            masked = self.masked[i]
            relation = self.placeholder if relations is None else relations[i]
            config = self.train_configs[i][2 * int(relations is not None) + int(masked)]
            out = self.train_op(x, features, relation, self.resize, masks if masked else self.placeholder, config,
                                self.eps, *self.block_weights[i])
            x = out[0]
            if self.emit_relations:
                all_logits = (*all_logits, out[1])
        return x, (ops.cat(all_logits, 1) if self.emit_relations else None)
