"""Multi-head self-attention that returns its pre-softmax logits and takes an additive relation term."""

from __future__ import annotations

from mindspore import nn, ops

from .dropout import Dropout
from .mlp import dense


class AttentionScores(nn.Cell):
    """``(q, k[, relation]) -> (probs, logits)`` with ``logits = q k^T * scale (+ relation)`` and
    ``probs = softmax(logits)``. A cell of its own so that the precision policy
    (:func:`dvt_ms.amp.apply_precision`) keeps the softmax and the logits relation reuse passes
    downstream in float32 while the projections around it run in float16."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.qk = ops.BatchMatMul(transpose_b=True)

    def construct(self, q, k, relation=None):
        logits = self.qk(q, k) * self.scale
        if relation is not None:
            logits = logits + relation
        return ops.softmax(logits, axis=-1), logits


class Attention(nn.Cell):
    """Attention with ``qkv`` / ``proj`` as in timm. ``construct(x, relation)`` returns ``(out, logits)``
    where ``logits = q k^T * scale (+ relation)`` are the values relation reuse passes downstream."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.dim, self.num_heads, self.num_tokens = dim, num_heads, num_tokens
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = dense(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = Dropout(attn_drop)
        self.proj = dense(dim, dim)
        self.proj_drop = Dropout(proj_drop)
        self.scores = AttentionScores(self.scale)

    def construct(self, x, relation=None):
        n, h, d = self.num_tokens, self.num_heads, self.head_dim
        # One 4-D transpose and a split: on CPU a 5-D transpose then qkv[0..2] (StridedSlice) is ~3x slower.
        q, k, v = ops.split(self.qkv(x).reshape(-1, n, 3 * h, d).transpose(0, 2, 1, 3), h, axis=1)
        probs, logits = self.scores(q, k, relation)
        attn = self.attn_drop(probs).astype(v.dtype)  # float32 scores, v in the projections' precision
        out = ops.matmul(attn, v).swapaxes(1, 2).reshape(-1, n, self.dim)
        return self.proj_drop(self.proj(out)), logits
