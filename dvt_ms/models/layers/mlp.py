"""Two-layer MLP with exact GELU."""

from __future__ import annotations

from mindspore import nn, ops

from ... import kernels
from .dropout import Dropout
from .init import trunc_normal


def dense(in_dim: int, out_dim: int, bias: bool = True) -> nn.Dense:
    """A Linear layer initialised as in timm (trunc-normal 0.02 weight, zero bias)."""
    return nn.Dense(in_dim, out_dim, weight_init=trunc_normal((out_dim, in_dim)), bias_init="zeros", has_bias=bias)


class GELU(nn.Cell):
    """Exact (erf) GELU; the fused kernel of :mod:`dvt_ms.kernels` in float32 on CPU (with its backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.fused = kernels.gelu_op()

    def construct(self, x):
        if kernels.use_fused(self, x):
            return self.fused(x)
        return ops.gelu(x, approximate="none")


class Mlp(nn.Cell):
    """fc1 -> GELU (erf) -> dropout -> fc2 -> dropout; parameters ``fc1``/``fc2`` as in timm."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = dense(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = dense(hidden_features, out_features)
        self.drop = Dropout(drop)

    def construct(self, x):
        x = self.drop(self.act(self.fc1(x)), 0)
        return self.drop(self.fc2(x), 1)
