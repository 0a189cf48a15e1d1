"""Transformer block that can take reused features from the previous exit before its MLP."""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, lazy_inline, nn, ops

from ...device import env_switch
from .attention import Attention
from .dropout import DropPath
from .grid_resize import grid_resize_matrix
from .mlp import Mlp
from .norm import LayerNorm


class Block(nn.Cell):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    With feature reuse, the block owns ``feature_resuse_mlp`` (LayerNorm + MLP, named as in the
    official checkpoints, typo included). It maps the previous exit's last tokens to ``reuse_channels``
    channels, resizes them from the upstream grid to this grid, puts a zero vector in the class slot and
    concatenates them to the tokens right before ``norm2`` (which therefore takes dim + reuse_channels).
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, num_tokens: int, qkv_bias: bool,
                 norm_eps: float, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 reuse_from: tuple[int, int] | None = None, reuse_channels: int = 48,
                 reuse_hidden: int = 128) -> None:
        """``reuse_from``: (upstream embed dim, upstream grid side) when the block reuses features."""
        super().__init__()
        self.norm1 = LayerNorm(dim, norm_eps)
        self.attn = Attention(dim, num_heads, num_tokens, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.feature_reuse = reuse_from is not None
        mlp_in = dim + reuse_channels if self.feature_reuse else dim
        self.norm2 = LayerNorm(mlp_in, norm_eps)
        self.mlp = Mlp(mlp_in, mlp_hidden, dim, drop)
        if self.feature_reuse:
            up_dim, up_grid = reuse_from
            self.feature_resuse_mlp = nn.SequentialCell(
                [LayerNorm(up_dim, norm_eps), Mlp(up_dim, reuse_hidden, reuse_channels, drop)])
            grid = round((num_tokens - 1) ** 0.5)
            self.resize = Tensor(grid_resize_matrix(up_grid, grid))
            self.reuse_channels = reuse_channels
        # Blocks with equal signatures compile to the same graph (CompileOnceBlock): everything construct
        # reads besides parameters and inputs. Drop path only tests its rate against 0 (the masks come in);
        # an active dropout reads its own mask streams, so such a block shares with no other.
        self.signature = repr((dim, num_heads, mlp_hidden, num_tokens, qkv_bias, norm_eps, drop_path > 0.0,
                               reuse_from, reuse_channels, reuse_hidden)
                              + ((id(self),) if drop > 0.0 or attn_drop > 0.0 else ()))

    def reused_features(self, upstream):
        """[B, N_up + 1, D_up] upstream tokens -> [B, N + 1, reuse_channels] (zero class slot)."""
        f = self.feature_resuse_mlp(upstream)[:, 1:, :]
        f = ops.matmul(self.resize.astype(f.dtype), f)
        return ops.cat((ops.zeros_like(f[:, :1, :]), f), 1)

    def construct(self, x, upstream=None, relation=None, path_masks=None):
        """``path_masks``: [B, 2] drop-path masks of the attention and MLP branches (see
        :class:`~dvt_ms.models.layers.dropout.DropPathMasks`); without, ``drop_path`` draws its own."""
        y, logits = self.attn(self.norm1(x), relation)
        x = x + self.drop_path(y, 0, path_masks)
        h = x
        if self.feature_reuse:
            h = ops.cat((x, self.reused_features(upstream)), 2)
        x = x + self.drop_path(self.mlp(self.norm2(h)), 1, path_masks)
        return x, logits


class CompileOnceBlock(Block):
    """A :class:`Block` that Ascend compiles once for all blocks of equal :attr:`signature`
    (``mindspore.lazy_inline``), rather than once per block: the depth of the cascade stops multiplying
    the compile time. Built on Ascend only (see :func:`block_class`)."""

    @lazy_inline(attrs="signature")
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)


def _device_target() -> str:
    return ms.get_context("device_target")


def block_class(device: str | None = None) -> type[Block]:
    """The block class for a model built now on ``device`` (default: MindSpore's device target):
    :class:`CompileOnceBlock` on Ascend unless ``DVT_MS_LAZY_INLINE=0``, :class:`Block` elsewhere
    (``lazy_inline`` is for Ascend only: CPU's backend rejects the graphs it leaves un-inlined)."""
    device = device or _device_target()
    return CompileOnceBlock if device == "Ascend" and env_switch("DVT_MS_LAZY_INLINE") else Block
