"""Tokens-to-token stem of T2T-ViT: soft splits (unfold) with a token performer or transformer between."""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ... import kernels
from .attention import AttentionScores
from .dropout import Dropout
from .init import frozen, orthogonal_features
from .mlp import GELU, Mlp, dense
from .norm import LayerNorm

T2T_NORM_EPS = 1e-5  # the tokens-to-token module uses torch's default LayerNorm epsilon


class TokenPerformer(nn.Cell):
    """Single-head Performer attention (positive random features) with ``v`` as the skip connection.

    Parameters as in the official checkpoints: ``kqv``, ``proj``, ``norm1``, ``norm2``, ``mlp.0``,
    ``mlp.2`` and the frozen random-feature matrix ``w`` [m, emb].
    """

    def __init__(self, dim: int, emb: int, kernel_ratio: float = 0.5, drop: float = 0.1) -> None:
        super().__init__()
        self.emb = emb
        self.m = int(emb * kernel_ratio)
        self.kqv = dense(dim, 3 * emb)
        self.dp = Dropout(drop)
        self.proj = dense(emb, emb)
        self.norm1 = LayerNorm(dim, T2T_NORM_EPS)
        self.norm2 = LayerNorm(emb, T2T_NORM_EPS)
        self.epsilon = 1e-8
        self.mlp = nn.SequentialCell([dense(emb, emb), GELU(), dense(emb, emb), Dropout(drop)])
        self.w = frozen("w", orthogonal_features(self.m, emb))
        self.inv_sqrt_m = 1.0 / math.sqrt(self.m)
        self.neg_half = Tensor(np.full((self.m, emb), -0.5, np.float32))
        self.features_mm = ops.MatMul(transpose_b=True)
        self.bmm_ta = ops.BatchMatMul(transpose_a=True)
        self.bmm_tb = ops.BatchMatMul(transpose_b=True)
        # CPU, float32: the whole performer in one kernel with its backward (see dvt_ms.kernels.token_performer_op)
        train, infer = kernels.token_performer_op(True), kernels.token_performer_op(False)
        self.fused = (train, infer) if train is not None and infer is not None else None
        if self.fused is not None:
            self.placeholder = Tensor(np.zeros(1, np.float32))
            self.eps_tensor = self.norm1.eps_tensor
            self.configs = tuple(Tensor(np.array([training, dropout], np.int32))
                                 for training in (0, 1) for dropout in (0, 1))
            fc1, fc2 = self.mlp[0], self.mlp[2]
            # not registered: the parameters belong to the child cells, in their order
            self.__dict__["fused_weights"] = (
                self.norm1.weight, self.norm1.bias, self.kqv.weight, self.kqv.bias, self.w, self.proj.weight,
                self.proj.bias, self.norm2.weight, self.norm2.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias)

    def random_features(self, x):
        """exp(w^T x - |x|^2 / 2) / sqrt(m): [B, T, emb] -> [B, T, m].

        ``[x, x*x] @ [w, -1/2]^T`` gives the exponent in one 2-D MatMul: no reduction kernel (slow on
        CPU) and no per-image broadcast of ``w``.
        """
        tokens = x.shape[1]
        flat = x.reshape(-1, self.emb)
        w = ops.cat((self.w.astype(x.dtype), self.neg_half.astype(x.dtype)), 1)  # [m, 2 emb]
        z = self.features_mm(ops.cat((flat, flat * flat), 1), w)
        return (ops.exp(z) * self.inv_sqrt_m).reshape(-1, tokens, self.m)

    def attend(self, x):
        k, q, v = ops.split(self.kqv(x), self.emb, axis=-1)
        kp, qp = self.random_features(k), self.random_features(q)
        # A column of ones appended to v makes the two batched matmuls also produce the normaliser
        # qp . sum_t kp (its last output column), with no reduction kernel.
        v1 = ops.cat((v, ops.ones_like(v[:, :, :1])), 2)  # [B, T, emb + 1]
        kptv = self.bmm_ta(v1, kp)  # [B, emb + 1, m]
        y1 = self.bmm_tb(qp, kptv)  # [B, T, emb + 1]
        y = y1[:, :, : self.emb] / (y1[:, :, self.emb:] + self.epsilon)
        return v + self.dp(self.proj(y))

    def fused_forward(self, x):
        """:meth:`construct` through the fused kernel."""
        dropout = self.training and self.dp.rate > 0.0
        if dropout:
            shape = (x.shape[0], x.shape[1], self.emb)
            probe = ops.zeros(shape, x.dtype)  # the dropouts' masks depend on the shape only
            masks = (self.dp.mask(probe), self.mlp[3].mask(probe))
        else:
            masks = (self.placeholder, self.placeholder)
        config = self.configs[2 * int(self.training) + int(dropout)]
        if self.training:
            return self.fused[0](x, masks[0], masks[1], config, self.eps_tensor, *self.fused_weights)[0]
        return self.fused[1](x, masks[0], masks[1], config, self.eps_tensor, *self.fused_weights)

    def construct(self, x):
        if self.fused is not None and x.dtype == ms.float32:
            return self.fused_forward(x)
        x = self.attend(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenAttention(nn.Cell):
    """One-head attention mapping ``dim`` -> ``emb`` with ``v`` as the skip connection; the scale is
    ``dim ** -0.5`` (the input width), as in the official token transformer."""

    def __init__(self, dim: int, emb: int, num_tokens: int, drop: float = 0.0) -> None:
        super().__init__()
        self.emb, self.num_tokens = emb, num_tokens
        self.scale = dim ** -0.5
        self.qkv = dense(dim, emb * 3, bias=False)
        self.proj = dense(emb, emb)
        self.drop = Dropout(drop)
        self.scores = AttentionScores(self.scale)

    def construct(self, x):
        q, k, v = ops.split(self.qkv(x), self.emb, axis=-1)
        attn, _ = self.scores(q, k)
        return v + self.drop(self.proj(ops.matmul(attn.astype(v.dtype), v)))


class TokenTransformer(nn.Cell):
    """The ``transformer`` variant of the T2T stem: ``norm1``, ``attn``, ``norm2``, ``mlp``."""

    def __init__(self, dim: int, emb: int, num_tokens: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, T2T_NORM_EPS)
        self.attn = TokenAttention(dim, emb, num_tokens, drop)
        self.norm2 = LayerNorm(emb, T2T_NORM_EPS)
        self.mlp = Mlp(emb, emb, emb, drop)

    def construct(self, x):
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokensToToken(nn.Cell):
    """unfold -> attention1 -> grid -> unfold -> attention2 -> grid -> unfold -> project.

    ``unfolds`` are the three (kernel, stride, padding) soft splits; grid sides are computed from them
    and the image size. Output: tokens [B, grid*grid, embed_dim].
    """

    def __init__(self, img_size: int, in_chans: int, embed_dim: int, unfolds, token_dim: int = 64,
                 variant: str = "performer", kernel_ratio: float = 0.5) -> None:
        super().__init__()
        self.unfolds = tuple(tuple(u) for u in unfolds)
        sizes, size = [], img_size
        for kernel, stride, padding in self.unfolds:
            size = (size + 2 * padding - kernel) // stride + 1
            sizes.append(size)
        self.sizes = tuple(sizes)
        self.grid = sizes[-1]
        self.token_dim = token_dim
        k0, k1, k2 = (u[0] for u in self.unfolds)
        dims = (in_chans * k0 * k0, token_dim * k1 * k1)
        if variant == "performer":
            self.attention1 = TokenPerformer(dims[0], token_dim, kernel_ratio)
            self.attention2 = TokenPerformer(dims[1], token_dim, kernel_ratio)
        else:
            self.attention1 = TokenTransformer(dims[0], token_dim, sizes[0] ** 2)
            self.attention2 = TokenTransformer(dims[1], token_dim, sizes[1] ** 2)
        self.project = dense(token_dim * k2 * k2, embed_dim)
        # Fused soft splits (CPU, float32, with backward): straight to tokens-first, the 2nd and 3rd reading the token
        # grid channels-last, so that neither an Im2Col nor a transpose runs.
        inputs = ((0, img_size, in_chans), (1, sizes[0], token_dim), (1, sizes[1], token_dim))
        ops_ = [kernels.unfold_op(size * size, channels * u[0] * u[0])
                for (_, _, channels), size, u in zip(inputs, sizes, self.unfolds, strict=True)]
        self.fused = tuple(ops_) if all(op is not None for op in ops_) else None
        self.geometries = tuple(Tensor(np.array([layout, side, *u], np.int32))
                                for (layout, side, _), u in zip(inputs, self.unfolds, strict=True))

    def soft_split(self, x, i: int):
        kernel, stride, padding = self.unfolds[i]
        return ops.unfold(x, kernel, 1, padding, stride).swapaxes(1, 2)

    def to_grid(self, x, side: int):
        return x.swapaxes(1, 2).reshape(-1, self.token_dim, side, side)

    def construct(self, x):
        if kernels.use_fused(self, x):
            x = self.attention1(self.fused[0](x, self.geometries[0]))
            x = self.attention2(self.fused[1](x, self.geometries[1]))
            return self.project(self.fused[2](x, self.geometries[2]))
        x = self.attention1(self.soft_split(x, 0))
        x = self.attention2(self.soft_split(self.to_grid(x, self.sizes[0]), 1))
        return self.project(self.soft_split(self.to_grid(x, self.sizes[1]), 2))
