"""Weight initialisers matching the official PyTorch models."""

from __future__ import annotations

import math

import numpy as np
from mindspore import Parameter, Tensor
from mindspore.common.initializer import Orthogonal, TruncatedNormal, Uniform, initializer


def trunc_normal(shape: tuple[int, ...], std: float = 0.02) -> Tensor:
    """Truncated normal, as timm's ``trunc_normal_(std=.02)`` used for Linear weights and tokens."""
    return initializer(TruncatedNormal(sigma=std), shape)


def torch_default_uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
    """torch's default Conv2d/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform, a=sqrt(5))."""
    return initializer(Uniform(scale=1.0 / math.sqrt(fan_in)), shape)


def frozen(name: str, value: np.ndarray) -> Parameter:
    """A parameter kept in the state dict but never trained (performer features, sinusoid table)."""
    return Parameter(Tensor(value.astype(np.float32)), name=name, requires_grad=False)


def orthogonal_features(rows: int, cols: int) -> np.ndarray:
    """Performer random features: orthogonal rows scaled by sqrt(rows)."""
    w = initializer(Orthogonal(), (rows, cols)).init_data().asnumpy()
    return w * math.sqrt(rows)


def sinusoid_table(n_position: int, dim: int) -> np.ndarray:
    """The fixed sine/cosine position table of T2T-ViT, shape [1, n_position, dim]."""
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    rates = np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)[None, :]
    table = pos / rates
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table[None].astype(np.float32)
