"""Transformer block that can take reused features from the previous exit before its MLP."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, lazy_inline, nn, ops

from ... import kernels
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

    On CPU in float32, a block without dropout runs as one fused kernel with its backward
    (:func:`dvt_ms.kernels.block_stack_op`) instead of some eighty stock ops: the same parameters, the same
    numbers within float32 rounding (the exit runs all its blocks as one kernel in inference).
    ``emit_logits``: whether the attention logits are used (the next exit's relation reuse); the fused kernel
    then writes them.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, num_tokens: int, qkv_bias: bool,
                 norm_eps: float, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 reuse_from: tuple[int, int] | None = None, reuse_channels: int = 48,
                 reuse_hidden: int = 128, emit_logits: bool = True, mask_column: int = 0) -> None:
        """``reuse_from``: (upstream embed dim, upstream grid side) when the block reuses features.
        ``mask_column``: where this block's two drop-path columns start in the masks of its exit, which the
        fused kernel reads whole (the stock path takes its own two columns)."""
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
                               reuse_from, reuse_channels, reuse_hidden, emit_logits)
                              + ((id(self),) if drop > 0.0 or attn_drop > 0.0 else ()))
        self.fused, self.mask_column = None, int(mask_column)
        if drop == 0.0 and attn_drop == 0.0:
            self._bind_fused(num_heads, qkv_bias, emit_logits)

    def _bind_fused(self, heads: int, qkv_bias: bool, emit_logits: bool) -> None:
        """Hold the fused kernel (:attr:`fused`, ``None`` where the stock ops run), its constant inputs and the
        parameters in the kernel's order (:attr:`fused_weights`). Kept flat for the compiler: resolving nested
        cells' attributes in ``construct`` costs compile time per block."""
        train = kernels.block_stack_op(heads, True, emit_logits)
        infer = kernels.block_stack_op(heads, False, emit_logits)
        if train is None or infer is None:
            return
        self.fused, self.fused_eval = train, infer
        self.heads, self.emit_logits, self.qkv_bias = heads, emit_logits, qkv_bias
        self.placeholder = Tensor(np.zeros(1, np.float32))
        n1, attn, n2, mlp = self.norm1, self.attn, self.norm2, self.mlp
        weights = [n1.weight, n1.bias, attn.qkv.weight, attn.qkv.bias if qkv_bias else self.placeholder,
                   attn.proj.weight, attn.proj.bias, n2.weight, n2.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight,
                   mlp.fc2.bias]
        if self.feature_reuse:
            norm, reuse_mlp = self.feature_resuse_mlp[0], self.feature_resuse_mlp[1]
            weights += [norm.weight, norm.bias, reuse_mlp.fc1.weight, reuse_mlp.fc1.bias, reuse_mlp.fc2.weight,
                        reuse_mlp.fc2.bias]
        else:
            weights += [self.placeholder] * 6
        # not registered: the parameters belong to the child cells, in their order
        self.__dict__["fused_weights"] = tuple(weights)
        self.eps_tensor = n1.eps_tensor
        self.fused_drop_path = self.drop_path.rate > 0.0
        # the kernel's config (see dvt_block_stack) in training, for: relation term given or not x drop path on or
        # not; in inference, for: relation term given or not
        self.fused_configs = tuple(self.stack_config(relation, masked, True)
                                   for relation in (False, True) for masked in (False, True))
        self.fused_eval_configs = tuple(self.stack_config(relation, False, False) for relation in (False, True))

    def stack_config(self, relation: bool, masked: bool, training: bool, depth: int = 1) -> Tensor:
        """The config input of :func:`dvt_ms.kernels.block_stack_op` for ``depth`` blocks like this one."""
        values = (depth, self.heads, self.qkv_bias, relation, masked, self.feature_reuse, self.emit_logits, training,
                  self.mask_column if masked else 0)
        return Tensor(np.array([int(v) for v in values], np.int32))

    def reused_features(self, upstream):
        """[B, N_up + 1, D_up] upstream tokens -> [B, N + 1, reuse_channels] (zero class slot)."""
        f = self.feature_resuse_mlp(upstream)[:, 1:, :]
        f = ops.matmul(self.resize.astype(f.dtype), f)
        return ops.cat((ops.zeros_like(f[:, :1, :]), f), 1)

    def fused_forward(self, x, upstream, relation, path_masks):
        """:meth:`construct` through the fused kernel (drop path on: the exit's ``path_masks`` given)."""
        masked = self.training and self.fused_drop_path
        masks = path_masks if masked else self.placeholder
        rel = self.placeholder if relation is None else relation
        up, resize = (upstream, self.resize) if self.feature_reuse else (self.placeholder, self.placeholder)
        if self.training:
            config = self.fused_configs[2 * int(relation is not None) + int(masked)]
            out = self.fused(x, up, rel, resize, masks, config, self.eps_tensor, *self.fused_weights)
        else:
            config = self.fused_eval_configs[int(relation is not None)]
            out = self.fused_eval(x, up, rel, resize, masks, config, self.eps_tensor, *self.fused_weights)
        return out[0], out[1]

    def stock_forward(self, x, upstream, relation, path_masks):
        """:meth:`construct` through MindSpore's ops (and the per-op kernels of the layers)."""
        y, logits = self.attn(self.norm1(x), relation)
        x = x + self.drop_path(y, 0, path_masks)
        h = x
        if self.feature_reuse:
            h = ops.cat((x, self.reused_features(upstream)), 2)
        x = x + self.drop_path(self.mlp(self.norm2(h)), 1, path_masks)
        return x, logits

    def construct(self, x, upstream=None, relation=None, path_masks=None):
        """``path_masks``: drop-path masks (see :class:`~dvt_ms.models.layers.dropout.DropPathMasks`): the exit's
        [B, 2 depth] for the fused kernel (:attr:`fused` set), else [B, 2], the attention and MLP branches';
        without, ``drop_path`` draws its own."""
        # The two paths are methods of their own: the compiler then parses only the one taken.
        if self.fused is not None and x.dtype == ms.float32:
            if path_masks is not None or not self.training or not self.fused_drop_path:
                return self.fused_forward(x, upstream, relation, path_masks)
        return self.stock_forward(x, upstream, relation, path_masks)


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
