"""The compiled train step: overflow skipping and loss scaling, gradient clipping, EMA, LR position."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from dvt_ms.amp import apply_precision
from dvt_ms.train.ema import EMA
from dvt_ms.train.loss_scale import LossScaling, resolve_loss_scale_type
from dvt_ms.train.optimizer import AdamW
from dvt_ms.train.train_step import TrainStep
from tests.helpers import HAVE_TORCH, TINY_CONFIG, load_config, model_from_config, requires_torch

if HAVE_TORCH:
    import torch


class _TwoExitLinear(nn.Cell):
    """``(x, targets) -> (total, per_exit)`` with a squared error per 'exit' (enough to drive TrainStep)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(Tensor(np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)), name="w")
        self.b = Parameter(Tensor(np.array([0.1, -0.2], np.float32)), name="b")

    def construct(self, x, t):
        out = ops.matmul(x, self.w) + self.b
        per_exit = ops.stack((((out[:, 0] - t[:, 0]) ** 2).mean(), ((out[:, 1] - t[:, 1]) ** 2).mean()))
        return per_exit.sum(), per_exit


def _step(lrs, scaler, clip=None, ema=False):
    net = _TwoExitLinear()
    opt = AdamW([net.w, net.b], [0.0, 0.0])
    averager = EMA(opt.params, 0.5) if ema else None
    return net, TrainStep(net, opt, np.asarray(lrs, np.float32), scaler, 2, clip, averager)


def _data(scale=1.0):
    x = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], np.float32) * scale
    return Tensor(x), Tensor(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32))


def test_overflowed_steps_are_skipped_and_counted_dynamic_scale_adapts(graph_mode):
    net, step = _step([0.1] * 10, LossScaling(8.0, dynamic=True, factor=2.0, window=2))
    x, t = _data()
    step(x, t)
    w1 = net.w.asnumpy().copy()
    _, _, _, finite, scale = step(Tensor(np.full((3, 2), np.inf, np.float32)), t)
    assert not bool(finite.asnumpy()) and float(scale.asnumpy()) == 8.0
    np.testing.assert_array_equal(net.w.asnumpy(), w1)  # nothing moved
    assert int(step.optimizer.step.asnumpy()) == 1  # Adam's step only counts applied updates
    assert int(step.global_step.asnumpy()) == 2  # the schedule moves on
    assert float(step.loss_scaler.scale.asnumpy()) == 4.0
    assert int(step.loss_scaler.overflows.asnumpy()) == 1
    step(x, t)
    step(x, t)  # two finite steps in a row: the scale grows back
    assert float(step.loss_scaler.scale.asnumpy()) == 8.0
    assert int(step.optimizer.step.asnumpy()) == 3


def test_fixed_scale_never_changes_but_still_skips_overflow(graph_mode):
    _, step = _step([0.1] * 4, LossScaling(1024.0, dynamic=False))
    _, t = _data()
    step(Tensor(np.full((3, 2), np.nan, np.float32)), t)
    assert float(step.loss_scaler.scale.asnumpy()) == 1024.0
    assert int(step.loss_scaler.overflows.asnumpy()) == 1
    assert int(step.optimizer.step.asnumpy()) == 0


def test_loss_scale_does_not_change_the_update(graph_mode):
    x, t = _data()
    net_a, step_a = _step([0.05] * 3, LossScaling(1.0))
    net_b, step_b = _step([0.05] * 3, LossScaling(4096.0))
    for _ in range(3):
        step_a(x, t)
        step_b(x, t)
    np.testing.assert_allclose(net_a.w.asnumpy(), net_b.w.asnumpy(), rtol=0, atol=1e-7)


@requires_torch
def test_clipping_matches_torch_clip_grad_norm(graph_mode):
    x, t = _data(scale=10.0)  # large gradients: the clip is active
    _, step = _step([0.01], LossScaling(1.0), clip=0.5)
    step(x, t)
    tw = torch.nn.Parameter(torch.tensor(_TwoExitLinear().w.asnumpy()))
    tb = torch.nn.Parameter(torch.tensor(_TwoExitLinear().b.asnumpy()))
    opt = torch.optim.AdamW([tw, tb], lr=0.01, weight_decay=0.0)
    out = torch.tensor(x.asnumpy()) @ tw + tb
    tt = torch.tensor(t.asnumpy())
    (((out[:, 0] - tt[:, 0]) ** 2).mean() + ((out[:, 1] - tt[:, 1]) ** 2).mean()).backward()
    norm = torch.nn.utils.clip_grad_norm_([tw, tb], 0.5)
    assert float(norm) > 0.5
    opt.step()
    # Adam normalises the step, so compare the clipped first moment instead of the weights
    np.testing.assert_allclose(step.optimizer.exp_avg[0].asnumpy(), opt.state[tw]["exp_avg"].numpy(), rtol=1e-5)


def test_ema_and_learning_rate_position(graph_mode):
    net, step = _step([0.1, 0.2, 0.3], LossScaling(1.0), ema=True)
    x, t = _data()
    w0 = net.w.asnumpy().copy()
    _, _, lr, _, _ = step(x, t)
    assert float(lr.asnumpy()) == pytest.approx(0.1)
    w1 = net.w.asnumpy().copy()
    np.testing.assert_allclose(step.ema.shadow[0].asnumpy(), 0.5 * w0 + 0.5 * w1, rtol=1e-6)
    _, _, lr, _, _ = step(x, t)
    assert float(lr.asnumpy()) == pytest.approx(0.2)
    step(x, t)
    _, _, lr, _, _ = step(x, t)  # past the end of the table: stays at the last value
    assert float(lr.asnumpy()) == pytest.approx(0.3)
    sums, count = step.take_loss_sums()
    assert count == 4 and sums.shape == (2,) and np.all(sums > 0)
    assert step.take_loss_sums()[1] == 0


def test_one_pass_update_gives_the_per_tensor_updates_bits(graph_mode, monkeypatch):
    """On CPU the step's whole update (overflow check, unscaling, AdamW, EMA) runs as one in-place kernel; it
    leaves every weight, moment, shadow and counter with the same bits as the per-tensor update, an overflowed
    step included."""
    from dvt_ms import kernels

    def run():
        net = _TwoExitLinear()
        opt = AdamW([net.w, net.b], [0.05, 0.0])
        step = TrainStep(net, opt, np.array([0.1, 0.05, 0.02, 0.01], np.float32), LossScaling(1024.0), 2, None,
                         EMA(opt.params, 0.75))
        x, t = _data()
        for inputs in (x, x * 2, Tensor(np.full((3, 2), np.inf, np.float32)), x * 0.5):
            step(inputs, t)
        state = [p.asnumpy() for p in (*opt.params, *opt.exp_avg, *opt.exp_avg_sq, *step.ema.shadow)]
        counters = [int(c.asnumpy()) for c in (opt.step, step.loss_scaler.overflows, step.global_step)]
        return step.one_pass_update, state, counters

    one_pass, state, counters = run()
    monkeypatch.setattr(kernels, "train_update_op", lambda: None)
    per_tensor, expected_state, expected_counters = run()
    assert one_pass and not per_tensor
    assert counters == expected_counters == [3, 1, 4]
    for got, expected in zip(state, expected_state, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_loss_scale_type_resolution():
    assert resolve_loss_scale_type("auto", "O2", "Ascend") == "dynamic"
    assert resolve_loss_scale_type("auto", "O3", "GPU") == "dynamic"
    assert resolve_loss_scale_type("auto", "O2", "CPU") == "fixed"
    assert resolve_loss_scale_type("auto", "O0", "Ascend") == "fixed"
    assert resolve_loss_scale_type("dynamic", "O0", "CPU") == "dynamic"
    with pytest.raises(ValueError, match="loss_scale_type"):
        resolve_loss_scale_type("static", "O0", "CPU")


@pytest.mark.slow
@pytest.mark.parametrize("level", ["O2", "O3"])
def test_mixed_precision_trains_the_tiny_cascade(graph_mode, level):
    from dvt_ms.data.augment import one_hot
    from dvt_ms.train.loss import NetWithLoss
    from dvt_ms.train.optimizer import param_groups

    ms.set_seed(0)
    model = model_from_config(load_config(TINY_CONFIG), depth=1)
    apply_precision(model, level)
    params, decays = param_groups(model, 0.05)
    step = TrainStep(NetWithLoss(model), AdamW(params, decays), np.full(6, 2e-3, np.float32),
                     LossScaling(1024.0, dynamic=True, window=2), model.num_exits)
    step.set_train(True)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    t = ms.Tensor(one_hot(np.arange(8) % 10, 10))
    losses = [float(step(x, t)[0].asnumpy()) for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert int(step.loss_scaler.overflows.asnumpy()) == 0
