"""Multi-exit loss: the sum of every exit's soft-target cross-entropy (as torch computes it)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from dvt_ms.data.augment import one_hot
from dvt_ms.train.loss import MultiExitLoss
from tests.helpers import HAVE_TORCH, requires_torch

if HAVE_TORCH:
    import torch


@requires_torch
def test_sum_of_per_exit_cross_entropy_matches_torch(graph_mode):
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal((6, 5)).astype(np.float32) * s for s in (1.0, 3.0, 0.5)]
    labels = rng.integers(0, 5, 6)
    targets = one_hot(labels, 5, smoothing=0.1)
    total, per_exit = MultiExitLoss()(tuple(ms.Tensor(z) for z in logits), ms.Tensor(targets))
    expected = [float(torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(labels), label_smoothing=0.1))
                for z in logits]
    np.testing.assert_allclose(per_exit.asnumpy(), expected, rtol=1e-5)
    assert float(total.asnumpy()) == pytest.approx(sum(expected), rel=1e-5)


def test_float16_logits_are_reduced_in_float32(pynative_mode):
    z = np.array([[10.0, -10.0, 0.0]], np.float32)
    total, _ = MultiExitLoss()((ms.Tensor(z, ms.float16),), ms.Tensor(one_hot([0], 3)))
    assert total.dtype == ms.float32
    assert float(total.asnumpy()) == pytest.approx(float(np.log1p(np.exp(-10.0) + np.exp(-20.0))), abs=1e-4)


def test_one_hot_smoothing_and_label_range():
    t = one_hot([2, 0], 4, smoothing=0.2)
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    assert t[0, 2] == pytest.approx(0.85) and t[0, 0] == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        one_hot([4], 4)
