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


@requires_torch
@pytest.mark.parametrize("g_up, g_down, mid", [(7, 10, 14), (10, 14, 20), (7, 14, 14), (4, 6, 8), (6, 8, 12),
                                               (8, 5, 8), (2, 3, 4), (5, 5, 5)])
def test_matches_torch_nearest_then_adaptive_pool(g_up, g_down, mid):
    """The official rule as torch computes it: nearest upsampling to ``mid``, adaptive average pooling."""
    import torch
    import torch.nn.functional as F

    assert intermediate_grid(g_up, g_down) == mid
    x = torch.randn(1, 3, g_up, g_up, generator=torch.Generator().manual_seed(g_up * 100 + g_down))
    ref = F.adaptive_avg_pool2d(F.interpolate(x, (mid, mid), mode="nearest"), (g_down, g_down))
    got = x.reshape(1, 3, -1).numpy() @ grid_resize_matrix(g_up, g_down).T
    np.testing.assert_allclose(got.reshape(1, 3, g_down, g_down), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_rows_average_and_identity():
    np.testing.assert_allclose(axis_resize_matrix(7, 10).sum(1), 1.0)
    np.testing.assert_array_equal(grid_resize_matrix(5, 5), np.eye(25, dtype=np.float32))


def test_relation_matrix_keeps_class_token():
    p = relation_resize_matrix(7, 10)
    assert p.shape == (101, 50)
    assert p[0, 0] == 1 and p[0, 1:].sum() == 0 and p[1:, 0].sum() == 0

