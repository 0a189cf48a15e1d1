"""Dropout and drop-path masks from the counter-based generator: the bits, the distribution, the streams."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

import dvt_ms
from dvt_ms.models import DVTCascade
from dvt_ms.models.layers import Dropout, DropPath, DropPathMasks, bind_masks
from dvt_ms.models.layers.dropout import philox4x16, stream_key

MULTIPLIERS, WEYL = (0x6929, 0x66CF), (0x9E37, 0xBB67)


def reference_philox(c, k, rounds=10):
    """Philox-4x16 in numpy int64, written from the description in the module docstring."""
    c0, c1, c2, c3 = (np.asarray(v, np.int64) for v in c)
    k0, k1 = (np.asarray(v, np.int64) for v in k)
    for _ in range(rounds):
        p0, p1 = c0 * MULTIPLIERS[0], c2 * MULTIPLIERS[1]
        c0, c1, c2, c3 = (p1 >> 16) ^ c1 ^ k0, p1 & 0xFFFF, (p0 >> 16) ^ c3 ^ k1, p0 & 0xFFFF
        k0, k1 = (k0 + WEYL[0]) & 0xFFFF, (k1 + WEYL[1]) & 0xFFFF
    return c0, c1, c2, c3


class _Philox(nn.Cell):
    def construct(self, c0, c1, c2, c3, k0, k1):
        return philox4x16(c0, c1, c2, c3, k0, k1)


class _Twice(nn.Cell):
    """Two cells of one kind (two layers); the first one called twice (two draws)."""

    def __init__(self, make) -> None:
        super().__init__()
        self.first, self.second = make(), make()

    def construct(self, x):
        return self.first(x, 0), self.first(x, 1), self.second(x, 0)


def _masks(cell: nn.Cell, x: np.ndarray, step: int = 0, seed: int = 0, rank: int = 0, num_ranks: int = 1):
    counter = Parameter(Tensor(step, ms.int32), name="step", requires_grad=False)
    bind_masks(cell, counter, seed, rank, num_ranks)
    cell.set_train(True)
    out = cell(Tensor(x))
    return [o.asnumpy() for o in out] if isinstance(out, tuple) else out.asnumpy()


def test_philox_bits_match_the_reference(graph_mode):
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2 ** 16, (4, 64, 1)).astype(np.int32)
    k = rng.integers(0, 2 ** 16, (2, 1, 3)).astype(np.int32)
    got = _Philox()(*(Tensor(v) for v in c), *(Tensor(v) for v in k))
    for g, want in zip(got, reference_philox(c, k), strict=True):
        assert g.shape == (64, 3)
        np.testing.assert_array_equal(g.asnumpy(), want)
    assert all(0 <= int(g.asnumpy().min()) and int(g.asnumpy().max()) < 2 ** 16 for g in got)


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
def test_dropout_keep_rate_scaling_and_streams(mode):
    ms.set_context(mode=mode)
    x = np.ones((8, 50, 64), np.float32)
    a, a1, b = _masks(_Twice(lambda: Dropout(0.25)), x, step=3)
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((a > 0).mean() - 0.75) < 0.01 and abs(a.mean() - 1.0) < 0.015
    # every element on its own: the kept fraction varies over samples, tokens and channels
    assert (a > 0).mean(axis=(1, 2)).std() > 0 and (a > 0).mean(axis=(0, 2)).std() > 0
    # the second draw of a layer and another layer are other streams (agreement ~ 0.75^2 + 0.25^2)
    for other in (a1, b):
        assert abs(((a > 0) == (other > 0)).mean() - 0.625) < 0.02
    later, _, _ = _masks(_Twice(lambda: Dropout(0.25)), x, step=4)
    again, _, _ = _masks(_Twice(lambda: Dropout(0.25)), x, step=3)
    np.testing.assert_array_equal(again, a)  # a function of the step alone
    assert abs(((a > 0) == (later > 0)).mean() - 0.625) < 0.02
    reseeded, _, _ = _masks(_Twice(lambda: Dropout(0.25)), x, step=3, seed=1)
    assert abs(((a > 0) == (reseeded > 0)).mean() - 0.625) < 0.02


def test_drop_path_keep_rate_scaling_per_sample(graph_mode):
    x = np.ones((4096, 3, 2), np.float32)
    a, a1, b = _masks(_Twice(lambda: DropPath(0.2)), x, step=7)
    assert (a == a[:, :1, :1]).all()  # one value per sample
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.8)}
    assert abs((a[:, 0, 0] > 0).mean() - 0.8) < 0.02 and abs(a.mean() - 1.0) < 0.025
    later = _masks(_Twice(lambda: DropPath(0.2)), x, step=8)[0]
    for other in (a1, b, later):  # other draw, other layer, other step: agreement ~ 0.8^2 + 0.2^2
        assert abs(((a[:, 0, 0] > 0) == (other[:, 0, 0] > 0)).mean() - 0.68) < 0.03


def test_data_parallel_ranks_draw_the_masks_of_their_global_positions(graph_mode):
    x = np.ones((16, 4, 8), np.float32)
    single = _masks(_Twice(lambda: Dropout(0.5)), np.ones((32, 4, 8), np.float32), step=2)[0]
    ranks = [_masks(_Twice(lambda: Dropout(0.5)), x, step=2, rank=r, num_ranks=2)[0] for r in (0, 1)]
    # shard r holds the images at positions r, r + 2, r + 4, ... of the global batch
    np.testing.assert_array_equal(ranks[0], single[0::2])
    np.testing.assert_array_equal(ranks[1], single[1::2])
    assert abs(((ranks[0] > 0) == (ranks[1] > 0)).mean() - 0.5) < 0.05


def test_drop_path_masks_columns_and_identity_in_inference(graph_mode):
    cell = DropPathMasks([0.0, 0.1, 0.5])
    m = _masks(cell, np.ones((4096, 5), np.float32), step=70000, seed=3)
    assert m.shape == (4096, 3)
    # the documented bits: stage 1 of (position, step) under the key of (seed, name, column), 24 bits
    position, step = np.arange(4096)[:, None], 70000
    keys = np.asarray([stream_key(3, "", j) for j in range(3)]).T[:, None, :]
    w0, w1, _, _ = reference_philox((position & 0xFFFF, position >> 16, step & 0xFFFF, step >> 16), keys)
    kept = (w0 * 256 + (w1 >> 8)) < np.round(np.array([1.0, 0.9, 0.5]) * 2 ** 24)
    np.testing.assert_array_equal(m > 0, kept)
    assert (m[:, 0] == 1.0).all()
    for j, rate in ((1, 0.1), (2, 0.5)):
        assert set(np.unique(m[:, j])) == {0.0, np.float32(1 / (1 - rate))}
        assert abs((m[:, j] == 0).mean() - rate) < 0.025
    x = Tensor(np.random.default_rng(0).standard_normal((3, 5, 6)).astype(np.float32))
    for cell in (Dropout(0.5), DropPath(0.5)):
        bind_masks(cell, Parameter(Tensor(9, ms.int32), name="s", requires_grad=False))
        cell.set_train(False)
        np.testing.assert_array_equal(cell(x).asnumpy(), x.asnumpy())
    assert DropPathMasks([0.0, 0.0]).set_train(True)(x) is None


def test_stream_keys_depend_on_seed_name_and_draw():
    keys = {stream_key(seed, name, draw) for seed in (0, 1) for name in ("a.drop", "b.drop") for draw in (0, 1)}
    assert len(keys) == 8 and all(0 <= k < 2 ** 16 for pair in keys for k in pair)
    with pytest.raises(ValueError, match="drop rate"):
        Dropout(1.0)


def test_cascade_masks_follow_the_step_counter_in_graph_and_pynative_mode(graph_mode):
    sizes = {"img_size": 32, "exit_grids": [4, 6], "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 3}
    model = DVTCascade(dvt_ms.spec_for("dvt_vit", **sizes, drop_path_rate=0.3, drop_rate=0.1, attn_drop_rate=0.1))
    plain = DVTCascade(dvt_ms.spec_for("dvt_vit", **sizes))
    assert list(model.parameters_dict()) == list(plain.parameters_dict())  # no helper parameter, same names
    counter = Parameter(Tensor(0, ms.int32), name="global_step", requires_grad=False)
    # per exit: pos_drop and the drop-path masks; per block: attn_drop, proj_drop, drop_path, mlp.drop and, in
    # the second exit, the feature-reuse MLP's drop
    assert bind_masks(model, counter, seed=5) == (2 + 2 * 4) + (2 + 2 * 5)
    x = Tensor(np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32))
    model.set_train(True)
    model.set_inputs(Tensor(shape=[None, 3, 32, 32], dtype=ms.float32))

    def logits():
        return np.concatenate([o.asnumpy() for o in model(x)], 1)

    first = logits()
    np.testing.assert_array_equal(logits(), first)  # the same step draws the same masks
    ops.assign(counter, Tensor(1, ms.int32))
    assert np.abs(logits() - first).max() > 1e-3
    ops.assign(counter, Tensor(0, ms.int32))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(logits(), first, rtol=1e-4, atol=1e-5)  # the masks do not depend on the mode
    model.set_train(False)
    assert np.abs(logits() - first).max() > 1e-3  # inference: no masks
