"""Multi-head self-attention that returns its pre-softmax logits and takes an additive relation term."""

from __future__ import annotations

from mindspore import nn, ops

from .mlp import dense


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
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop)
        self.qk = ops.BatchMatMul(transpose_b=True)

    def construct(self, x, relation=None):
        n, h, d = self.num_tokens, self.num_heads, self.head_dim
        # One 4-D transpose and a split: on CPU a 5-D transpose then qkv[0..2] (StridedSlice) is ~3x slower.
        q, k, v = ops.split(self.qkv(x).reshape(-1, n, 3 * h, d).transpose(0, 2, 1, 3), h, axis=1)
        logits = self.qk(q, k) * self.scale
        if relation is not None:
            logits = logits + relation
        attn = self.attn_drop(ops.softmax(logits, axis=-1))
        out = ops.matmul(attn, v).swapaxes(1, 2).reshape(-1, n, self.dim)
        return self.proj_drop(self.proj(out)), logits
