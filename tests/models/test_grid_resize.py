"""The resize operator between token grids."""

from __future__ import annotations

import numpy as np
import pytest

from dvt_ms.models.layers.grid_resize import (
    axis_resize_matrix,
    grid_resize_matrix,
    intermediate_grid,
    relation_resize_matrix,
)
from tests.helpers import requires_torch


def nearest_then_pool(x: np.ndarray, mid: int, out: int) -> np.ndarray:
    """Direct 2-D evaluation of the official rule on one [g, g] map."""
    g = x.shape[0]
    idx = [int(np.floor(i * g / mid)) for i in range(mid)]
    up = x[np.ix_(idx, idx)]
    res = np.zeros((out, out))
    for i in range(out):
        r0, r1 = (i * mid) // out, -((-(i + 1) * mid) // out)
        for j in range(out):
            c0, c1 = (j * mid) // out, -((-(j + 1) * mid) // out)
            res[i, j] = up[r0:r1, c0:c1].mean()
    return res


@pytest.mark.parametrize("g_up, g_down, mid", [(7, 10, 14), (10, 14, 20), (7, 14, 14), (4, 6, 8), (6, 8, 12),
                                               (8, 5, 8)])
def test_matches_nearest_then_adaptive_pool(g_up, g_down, mid):
    assert intermediate_grid(g_up, g_down) == mid
    x = np.random.RandomState(0).randn(g_up, g_up)
    expected = nearest_then_pool(x, mid, g_down)
    got = (grid_resize_matrix(g_up, g_down) @ x.reshape(-1)).reshape(g_down, g_down)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_rows_average_and_identity():
    np.testing.assert_allclose(axis_resize_matrix(7, 10).sum(1), 1.0)
    np.testing.assert_array_equal(grid_resize_matrix(5, 5), np.eye(25, dtype=np.float32))


def test_relation_matrix_keeps_class_token():
    p = relation_resize_matrix(7, 10)
    assert p.shape == (101, 50)
    assert p[0, 0] == 1 and p[0, 1:].sum() == 0 and p[1:, 0].sum() == 0


@requires_torch
def test_matches_torch_nearest_then_adaptive_pool():
    import torch
    import torch.nn.functional as F

    for g_up, g_down, mid in [(7, 10, 14), (10, 14, 20)]:
        x = torch.randn(1, 3, g_up, g_up)
        ref = F.adaptive_avg_pool2d(F.interpolate(x, (mid, mid), mode="nearest"), (g_down, g_down))
        got = x.reshape(1, 3, -1).numpy() @ grid_resize_matrix(g_up, g_down).T
        np.testing.assert_allclose(got.reshape(1, 3, g_down, g_down), ref.numpy(), rtol=1e-5, atol=1e-6)
