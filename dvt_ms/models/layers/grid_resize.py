"""The fixed linear resize between two token grids, used by feature and relation reuse.

The official rule resizes a g_up x g_up map to g_down x g_down by nearest-neighbour upsampling to an
intermediate grid and adaptive average pooling (7 -> 14 -> 10, 10 -> 20 -> 14). Both steps are linear
and separable, so the whole resize is one matrix on flattened tokens: ``kron(A, A)`` with ``A`` the
1-D operator. The intermediate grid is the smallest multiple of g_up that is >= g_down, which gives
the official grids and, for 7 -> 14, plain nearest upsampling as in the official MindSpore port.
"""

from __future__ import annotations

import math

import numpy as np


def intermediate_grid(g_up: int, g_down: int) -> int:
    """Grid that nearest upsampling reaches before pooling: the smallest multiple of g_up >= g_down."""
    return max(1, math.ceil(g_down / g_up)) * g_up


def nearest_matrix(n_in: int, n_out: int) -> np.ndarray:
    """1-D nearest-neighbour resize as torch computes it: out[i] = in[floor(i * n_in / n_out)]."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        m[i, min(math.floor(i * scale), n_in - 1)] = 1.0
    return m


def adaptive_avg_matrix(n_in: int, n_out: int) -> np.ndarray:
    """1-D adaptive average pooling: bin i averages [floor(i n_in / n_out), ceil((i+1) n_in / n_out))."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def axis_resize_matrix(g_up: int, g_down: int) -> np.ndarray:
    """1-D operator [g_down, g_up]: nearest to the intermediate grid, then adaptive average pooling."""
    mid = intermediate_grid(g_up, g_down)
    return adaptive_avg_matrix(mid, g_down) @ nearest_matrix(g_up, mid)


def grid_resize_matrix(g_up: int, g_down: int) -> np.ndarray:
    """Operator [g_down**2, g_up**2] acting on row-major flattened image tokens."""
    a = axis_resize_matrix(g_up, g_down)
    return np.kron(a, a).astype(np.float32)


def relation_resize_matrix(g_up: int, g_down: int) -> np.ndarray:
    """Operator [g_down**2 + 1, g_up**2 + 1] on tokens with the class token first (kept as it is)."""
    inner = grid_resize_matrix(g_up, g_down)
    out = np.zeros((inner.shape[0] + 1, inner.shape[1] + 1), np.float32)
    out[0, 0] = 1.0
    out[1:, 1:] = inner
    return out
