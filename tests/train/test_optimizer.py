"""AdamW against torch.optim.AdamW, and the recipe's parameter groups."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from dvt_ms.config import create_model_from_config
from dvt_ms.train.optimizer import AdamW, no_weight_decay, param_groups
from tests.helpers import HAVE_TORCH, TINY_CONFIG, load_config, requires_torch

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
    model = create_model_from_config(load_config(TINY_CONFIG))
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
