"""Per-step cosine schedule with linear warm-up and floor; linear lr scaling by global batch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dvt_ms.train.lr_schedule import cosine_schedule, scaled_lr


def test_warmup_then_cosine_to_the_floor():
    lr = cosine_schedule(1e-3, 1e-5, total_steps=100, warmup_steps=10, warmup_lr=1e-6)
    assert lr.shape == (100,) and lr.dtype == np.float32
    np.testing.assert_allclose(lr[:10], 1e-6 + (1e-3 - 1e-6) * np.arange(10) / 10, rtol=1e-6)
    assert lr[10] == pytest.approx(1e-3)
    assert lr[-1] == pytest.approx(1e-5)
    t = (40 - 10) / 89
    assert lr[40] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t)), rel=1e-6)
    assert np.all(np.diff(lr[:11]) > 0) and np.all(np.diff(lr[10:]) <= 0)
    assert lr[10:].min() >= np.float32(1e-5)


def test_no_warmup_and_single_step():
    lr = cosine_schedule(0.1, 0.0, total_steps=5)
    assert lr[0] == pytest.approx(0.1) and lr[-1] == pytest.approx(0.0, abs=1e-9)
    assert cosine_schedule(0.1, 0.01, total_steps=1)[0] == pytest.approx(0.1)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="warm-up"):
        cosine_schedule(1e-3, 1e-5, total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="min_lr"):
        cosine_schedule(1e-5, 1e-3, total_steps=10)
    with pytest.raises(ValueError, match="at least one step"):
        cosine_schedule(1e-3, 1e-5, total_steps=0)


def test_linear_scaling_by_global_batch():
    assert scaled_lr(2e-3, 1024, 1024) == pytest.approx(2e-3)
    assert scaled_lr(2e-3, 256, 1024) == pytest.approx(5e-4)
    assert scaled_lr(5e-4, 64, None) == pytest.approx(5e-4)
    with pytest.raises(ValueError):
        scaled_lr(1e-3, 64, 0)
