"""LayerNorm whose parameters are named ``weight`` / ``bias`` like torch's, so checkpoints map 1:1."""

from __future__ import annotations

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ... import kernels


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with an explicit epsilon (torch default 1e-5, DeiT 1e-6).

    In float32 on CPU (inference and training) it runs the fused kernel of :mod:`dvt_ms.kernels`;
    otherwise MindSpore's ``ops.LayerNorm``.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = Parameter(Tensor(np.ones(dim, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(dim, np.float32)), name="bias")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.fused = kernels.layer_norm_op()
        self.eps_tensor = Tensor(np.array([eps], np.float32))

    def construct(self, x):
        if kernels.use_fused(self, x):
            return self.fused(x, self.weight, self.bias, self.eps_tensor)
        return self.layer_norm(x, self.weight.astype(x.dtype), self.bias.astype(x.dtype))[0]
