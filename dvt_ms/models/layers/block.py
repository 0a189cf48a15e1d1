"""Transformer block that can take reused features from the previous exit before its MLP."""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
from mindspore import Tensor, lazy_inline, nn, ops

from ...device import env_switch
from .attention import Attention
from .dropout import DropPath
from .grid_resize import grid_resize_matrix
from .mlp import Mlp
from .norm import LayerNorm


@dataclass(frozen=True, kw_only=True)
class BlockConfig:
    """Everything a :class:`Block` is built from.

    ``num_tokens`` counts the class token. ``reuse_from``: (width, grid side) of the previous exit's tokens when
    the block reuses them (feature reuse), else ``None``. ``emit_relations``: whether the block's attention
    logits are used (the next exit's relation reuse reads them)."""

    dim: int
    num_heads: int
    mlp_hidden: int
    num_tokens: int
    qkv_bias: bool
    norm_eps: float
    drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    reuse_from: tuple[int, int] | None = None
    reuse_channels: int = 48
    reuse_hidden: int = 128
    emit_relations: bool = True

    @property
    def grid(self) -> int:
        return round((self.num_tokens - 1) ** 0.5)

    @property
    def has_dropout(self) -> bool:
        return self.drop > 0.0 or self.attn_drop > 0.0


class Block(nn.Cell):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    With feature reuse, the block owns ``feature_resuse_mlp`` (LayerNorm + MLP, named as in the official
    checkpoints, typo included). It maps the previous exit's last tokens to ``reuse_channels`` channels, resizes
    them from the upstream grid to this grid, puts a zero vector in the class slot and concatenates them to the
    tokens right before ``norm2`` (which therefore takes dim + reuse_channels).

    This is the math only. On CPU an exit runs its blocks through one fused kernel instead
    (:class:`~dvt_ms.models.layers.fused_stack.FusedBlockStack`), with these blocks' parameters.
    """

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        c = self.config = config
        self.norm1 = LayerNorm(c.dim, c.norm_eps)
        self.attn = Attention(c.dim, c.num_heads, c.num_tokens, c.qkv_bias, c.attn_drop, c.drop)
        self.drop_path = DropPath(c.drop_path)
        self.feature_reuse = c.reuse_from is not None
        mlp_in = c.dim + c.reuse_channels if self.feature_reuse else c.dim
        self.norm2 = LayerNorm(mlp_in, c.norm_eps)
        self.mlp = Mlp(mlp_in, c.mlp_hidden, c.dim, c.drop)
        if self.feature_reuse:
            width, up_grid = c.reuse_from
            self.feature_resuse_mlp = nn.SequentialCell(
                [LayerNorm(width, c.norm_eps), Mlp(width, c.reuse_hidden, c.reuse_channels, c.drop)])
            self.resize = Tensor(grid_resize_matrix(up_grid, c.grid))
        # Blocks with equal signatures compile to the same graph (CompileOnceBlock): everything construct reads
        # besides parameters and inputs. Drop path only tests its rate against 0 (the masks come in); an active
        # dropout reads its own mask streams, so such a block shares with no other.
        self.signature = repr((c.dim, c.num_heads, c.mlp_hidden, c.num_tokens, c.qkv_bias, c.norm_eps,
                               c.drop_path > 0.0, c.reuse_from, c.reuse_channels, c.reuse_hidden, c.emit_relations)
                              + ((id(self),) if c.has_dropout else ()))

    def reused_features(self, features):
        """[B, N_up + 1, D_up] previous exit's tokens -> [B, N + 1, reuse_channels] (zero class slot)."""
        f = self.feature_resuse_mlp(features)[:, 1:, :]
        f = ops.matmul(self.resize.astype(f.dtype), f)
        return ops.cat((ops.zeros_like(f[:, :1, :]), f), 1)

    def construct(self, x, features=None, relation=None, path_masks=None):
        """``features``: the previous exit's tokens (feature reuse); ``relation``: this block's relation-reuse
        term, added to its attention logits; ``path_masks``: [B, 2] drop-path masks of the attention and MLP
        branches (:class:`~dvt_ms.models.layers.dropout.DropPathMasks`), else ``drop_path`` draws its own.
        Returns the new tokens and the attention logits."""
        y, logits = self.attn(self.norm1(x), relation)
        x = x + self.drop_path(y, 0, path_masks)
        h = ops.cat((x, self.reused_features(features)), 2) if self.feature_reuse else x
        x = x + self.drop_path(self.mlp(self.norm2(h)), 1, path_masks)
        return x, logits


class CompileOnceBlock(Block):
    """A :class:`Block` that Ascend compiles once for all blocks of equal :attr:`signature`
    (``mindspore.lazy_inline``), rather than once per block: the depth of the cascade stops multiplying
    the compile time. Built on Ascend only (see :func:`block_class`)."""

    @lazy_inline(attrs="signature")
    def __init__(self, config: BlockConfig) -> None:
        super().__init__(config)


def _device_target() -> str:
    return ms.get_context("device_target")


def block_class(device: str | None = None) -> type[Block]:
    """The block class for a model built now on ``device`` (default: MindSpore's device target):
    :class:`CompileOnceBlock` on Ascend unless ``DVT_MS_LAZY_INLINE=0``, :class:`Block` elsewhere
    (``lazy_inline`` is for Ascend only: CPU's backend rejects the graphs it leaves un-inlined)."""
    device = device or _device_target()
    return CompileOnceBlock if device == "Ascend" and env_switch("DVT_MS_LAZY_INLINE") else Block
