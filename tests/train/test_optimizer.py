"""AdamW against torch.optim.AdamW, and the recipe's parameter groups."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from dvt_ms import kernels
from dvt_ms.train.optimizer import AdamW, bias_correction_tables, no_weight_decay, param_groups
from tests.helpers import HAVE_TORCH, TINY_CONFIG, load_config, model_from_config, requires_torch

if HAVE_TORCH:
    import torch


class _Regression(nn.Cell):
    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.w = Parameter(Tensor(w), name="w")
        self.b = Parameter(Tensor(b), name="b")

    def construct(self, x, y):
        return ((ops.matmul(x, self.w.T) + self.b - y) ** 2).mean()


@requires_torch
@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_adamw_matches_torch_after_five_steps(mode, request):
    request.getfixturevalue(f"{mode}_mode")
    rng = np.random.default_rng(0)
    w0, b0 = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    x, y = rng.standard_normal((16, 3)).astype(np.float32), rng.standard_normal((16, 4)).astype(np.float32)
    lrs = [0.01, 0.02, 0.03, 0.02, 0.01]

    net = _Regression(w0, b0)
    opt = AdamW([net.w, net.b], [0.1, 0.0], betas=(0.9, 0.999), eps=1e-8)
    grad_fn = ms.value_and_grad(net, None, opt.params)

    def step(xt, yt, lr):
        _, grads = grad_fn(xt, yt)
        opt(grads, lr)

    step = ms.jit(step) if mode == "graph" else step
    tw, tb = torch.nn.Parameter(torch.tensor(w0)), torch.nn.Parameter(torch.tensor(b0))
    topt = torch.optim.AdamW([{"params": [tw], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}],
                             lr=lrs[0], betas=(0.9, 0.999), eps=1e-8)
    for lr in lrs:
        step(Tensor(x), Tensor(y), Tensor(lr, ms.float32))
        for group in topt.param_groups:
            group["lr"] = lr
        topt.zero_grad()
        ((torch.tensor(x) @ tw.T + tb - torch.tensor(y)) ** 2).mean().backward()
        topt.step()
    np.testing.assert_allclose(net.w.asnumpy(), tw.detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(net.b.asnumpy(), tb.detach().numpy(), rtol=0, atol=1e-6)
    assert int(opt.step.asnumpy()) == 5
    # the moments are torch's too
    np.testing.assert_allclose(opt.exp_avg_sq[0].asnumpy(), topt.state[tw]["exp_avg_sq"].numpy(), rtol=1e-5,
                               atol=1e-9)
    assert not np.allclose(net.w.asnumpy(), w0)


def test_no_weight_decay_on_norms_biases_tokens_and_position_embeddings():
    model = model_from_config(load_config(TINY_CONFIG))
    params, decays = param_groups(model, 0.05)
    by_name = {p.name: d for p, d in zip(params, decays, strict=True)}
    assert by_name["less_less_token.cls_token"] == 0.0
    assert by_name["less_less_token.pos_embed"] == 0.0
    assert by_name["less_token.blocks.0.norm1.weight"] == 0.0
    assert by_name["less_token.blocks.0.attn.qkv.bias"] == 0.0
    assert by_name["normal_token.head.bias"] == 0.0
    assert by_name["normal_token.blocks.0.attn.qkv.weight"] == 0.05
    assert by_name["normal_token.head.weight"] == 0.05
    assert by_name["less_less_token.patch_embed.proj.weight"] == 0.05
    # every matrix / kernel but the tokens decays, every vector does not
    for p, d in zip(params, decays, strict=True):
        assert (d == 0.0) == no_weight_decay(p.name, p)
        if len(p.shape) > 1 and not p.name.endswith(("cls_token", "pos_embed")):
            assert d == 0.05, p.name


def test_frozen_parameters_are_not_optimised():
    import dvt_ms

    model = dvt_ms.create_model("dvt_t2t_vit", img_size=32, exit_grids=[4, 6, 8], embed_dim=32, depth=1,
                                num_heads=2, num_classes=10)
    params, _ = param_groups(model, 0.05)
    names = {p.name for p in params}
    frozen = [p.name for p in model.get_parameters() if not p.requires_grad]
    assert frozen and not names & set(frozen)


def test_adamw_rejects_bad_settings():
    p = Parameter(Tensor(np.zeros(2, np.float32)), name="p")
    with pytest.raises(ValueError, match="betas"):
        AdamW([p], [0.0], betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="weight decays"):
        AdamW([p], [0.0, 0.1])


def _float64_update(param, m, v, lr, t, beta1=0.9, beta2=0.999, eps=1e-8, decay=0.05):
    """The parameter after one AdamW update, given the updated moments, with the bias corrections computed in
    float64 at every step (as the graph did before the tables)."""
    bias1 = 1.0 - beta1 ** np.float64(t)
    bias2_sqrt = np.float32(np.sqrt(1.0 - beta2 ** np.float64(t)))
    step_size = np.float32(np.float64(lr) / bias1)
    decayed = param * np.float32(1.0 - np.float32(lr) * np.float32(decay))
    return (decayed - step_size * (m / (np.sqrt(v) / bias2_sqrt + np.float32(eps)))).astype(np.float32)


def test_bias_correction_tables_stop_where_float32_reaches_one():
    bias1, bias2_sqrt = bias_correction_tables(0.9, 0.999)
    assert bias1.dtype == bias2_sqrt.dtype == np.float32
    t = np.arange(1, len(bias1) + 1, dtype=np.float64)
    np.testing.assert_array_equal(bias2_sqrt, np.sqrt(1.0 - 0.999 ** t).astype(np.float32))  # the same bits
    np.testing.assert_array_equal(bias1, (1.0 - 0.9 ** t).astype(np.float32))
    first_one = int(np.argmax(bias2_sqrt == 1.0))  # later steps all use the last entry: it must be final
    assert (bias1[first_one:] == 1.0).all() and (bias2_sqrt[first_one:] == 1.0).all()
    assert bias2_sqrt[first_one - 1] < 1.0 and len(bias1) - first_one < 10
    assert len(bias1) < 20000  # set by the betas, not by the length of the run
    assert len(bias_correction_tables(0.9, 0.9999)[0]) > 160000


def test_adamw_without_float64_stays_within_one_ulp_of_the_float64_update(graph_mode):
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(256).astype(np.float32)
    grads = rng.standard_normal((30, 256)).astype(np.float32)
    lrs = rng.uniform(1e-5, 3e-3, 30).astype(np.float32)
    p = Parameter(Tensor(w0), name="p")
    opt = AdamW([p], [0.05])

    @ms.jit
    def update(g, lr):
        return opt((g,), lr)

    for t in range(1, 31):  # one update at a time, from the optimizer's own state
        before = p.asnumpy().copy()
        update(Tensor(grads[t - 1]), Tensor(lrs[t - 1]))
        want = _float64_update(before, opt.exp_avg[0].asnumpy(), opt.exp_avg_sq[0].asnumpy(), lrs[t - 1], t)
        ulps = np.abs(p.asnumpy().view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
        assert ulps.max() <= 1, (t, ulps.max())


def test_betas_too_close_to_one_are_refused():
    with pytest.raises(ValueError, match=r"betas 0\.9, 0\.9999999"):
        bias_correction_tables(0.9, 0.9999999)


def test_fused_cpu_update_gives_the_stock_ops_bits(graph_mode):
    """On CPU the update runs as one fused kernel per tensor: weights and moments are bit-identical to the
    stock element-wise ops over many steps, with and without weight decay."""
    rng = np.random.default_rng(5)
    w0, b0 = rng.standard_normal((2, 300)).astype(np.float32)
    grads = rng.standard_normal((12, 2, 300)).astype(np.float32) * 1e-2
    lrs = rng.uniform(1e-5, 3e-3, 12).astype(np.float32)
    states = []
    for enabled in (False, True):
        w, b = Parameter(Tensor(w0), name="w"), Parameter(Tensor(b0), name="b")
        with kernels.use_kernels(enabled):
            opt = AdamW([w, b], [0.05, 0.0])
        assert (opt.fused is not None) == enabled

        @ms.jit
        def update(gw, gb, lr, opt=opt):
            return opt((gw, gb), lr)

        for (gw, gb), lr in zip(grads, lrs, strict=True):
            update(Tensor(gw), Tensor(gb), Tensor(lr))
        states.append([t.asnumpy() for t in (w, b, *opt.exp_avg, *opt.exp_avg_sq)])
    for stock, fused in zip(*states, strict=True):
        np.testing.assert_array_equal(fused, stock)
