"""Dropout and drop-path masks from the stream generator: the bits, the distribution, the streams."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

import dvt_ms
from dvt_ms.models import DVTCascade
from dvt_ms.models.layers import Dropout, DropPath, DropPathMasks, MaskStreams, bind_masks
from dvt_ms.rng import TABLE_BITS, mask_table, philox4x16, stream_key, stream_words

MULTIPLIERS, WEYL = (0x6929, 0x66CF), (0x9E37, 0xBB67)
MASK = (1 << TABLE_BITS) - 1


def reference_philox(c, k, rounds=10):
    """Philox-4x16 in numpy int64 with shifts, written from the description in the module docstring."""
    c0, c1, c2, c3 = (np.asarray(v, np.int64) for v in c)
    k0, k1 = (np.asarray(v, np.int64) for v in k)
    for _ in range(rounds):
        p0, p1 = c0 * MULTIPLIERS[0], c2 * MULTIPLIERS[1]
        c0, c1, c2, c3 = (p1 >> 16) ^ c1 ^ k0, p1 & 0xFFFF, (p0 >> 16) ^ c3 ^ k1, p0 & 0xFFFF
        k0, k1 = (k0 + WEYL[0]) & 0xFFFF, (k1 + WEYL[1]) & 0xFFFF
    return c0, c1, c2, c3


def reference_words(step, keys):
    """The documented stream words (C, O, P, O2, P2, X) from the shift-based reference."""
    a, b = (reference_philox((step & 0xFFFF, step >> 16, c, 0), (keys[:, 0], keys[:, 1])) for c in (0, 1))
    odd = lambda w: (w & 0x7FE) + 1  # noqa: E731
    offset = lambda lo, hi: (lo + hi * (1 << (TABLE_BITS - 16))) & MASK  # noqa: E731
    return np.stack([odd(a[0]), offset(a[1], a[2]), odd(a[3]), offset(b[0], b[1]), odd(b[2]), b[3]])


def reference_uniforms(words, positions, size):
    """Uniform [len(positions), size] of one stream as the module docstring defines them (size < 2**18)."""
    c, o, p, o2, p2, x = (int(w) for w in words)
    table = mask_table().astype(np.int64)
    pos = np.asarray(positions, np.int64)[:, None]
    return table[(o + pos * p + np.arange(size)[None] * c) & MASK] ^ table[(o2 + pos * p2) & MASK] ^ x


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
    streams = bind_masks(cell, seed, rank, num_ranks)
    streams.set_step(step)
    cell.set_train(True)
    out = cell(Tensor(x))
    return [o.asnumpy() for o in out] if isinstance(out, tuple) else out.asnumpy()


def test_philox_without_shifts_matches_the_shift_reference(graph_mode):
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2 ** 16, (4, 64, 1)).astype(np.int32)
    k = rng.integers(0, 2 ** 16, (2, 1, 3)).astype(np.int32)
    want = reference_philox(c, k)
    got = _Philox()(*(Tensor(v) for v in c), *(Tensor(v) for v in k))
    host = philox4x16(*c, *k)
    for g, h, w in zip(got, host, want, strict=True):
        assert g.shape == (64, 3)
        np.testing.assert_array_equal(g.asnumpy(), w)
        np.testing.assert_array_equal(h, w)
    assert all(0 <= int(g.asnumpy().min()) and int(g.asnumpy().max()) < 2 ** 16 for g in got)


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
def test_stream_words_in_the_graph_equal_the_host_and_the_reference(mode):
    ms.set_context(mode=mode)
    keys = np.asarray([stream_key(7, f"cell{i}", i % 4) for i in range(9)], np.int32)
    streams = MaskStreams(keys)
    for step in (0, 1, 65535, 65536, 2 ** 31 - 1):
        want = reference_words(step, keys.astype(np.int64))
        np.testing.assert_array_equal(stream_words(step, keys), want)
        got = streams(Tensor(step, ms.int32)).asnumpy()
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(streams.words.asnumpy(), want)
    assert (want[[0, 2, 4]] % 2 == 1).all() and want[[1, 3]].max() <= MASK and want[5].max() < 2 ** 16
    with pytest.raises(ValueError, match="mask step"):
        streams.words_at(-1)


def test_the_table_is_fixed_and_uniform():
    table = mask_table()
    assert table.shape == (2 ** TABLE_BITS,) and table.dtype == np.int32
    np.testing.assert_array_equal(table, mask_table())
    assert table.min() >= 0 and table.max() < 2 ** 16
    counts = np.bincount(table >> 12, minlength=16)  # 16 bins of 4096 values: ~16384 entries each
    assert np.abs(counts - len(table) / 16).max() < 5 * np.sqrt(len(table) / 16)
    assert abs(np.corrcoef(table[:-1], table[1:])[0, 1]) < 0.01


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
    # samples of one batch agree by chance only, element by element
    kept = (a > 0).reshape(8, -1)
    for i in range(1, 8):
        assert abs((kept[0] == kept[i]).mean() - 0.625) < 0.03


def test_dropout_bits_are_the_documented_ones(graph_mode):
    cell = Dropout(0.3)
    streams = bind_masks(cell, seed=11)
    streams.set_step(123456)
    cell.set_train(True)
    x = np.ones((5, 7, 9), np.float32)
    got = cell(Tensor(x), 2).asnumpy().reshape(5, -1)
    words = stream_words(123456, np.asarray([stream_key(11, "", 2)], np.int32))[:, 0]
    kept = reference_uniforms(words, np.arange(5), 63) < round(0.7 * 2 ** 16)
    np.testing.assert_array_equal(got > 0, kept)


def test_dropout_of_samples_larger_than_the_table(graph_mode):
    size = 2 ** TABLE_BITS + 1000
    got = _masks(Dropout(0.5), np.ones((2, size), np.float32), step=5)
    kept = got > 0
    assert abs(kept.mean() - 0.5) < 0.01
    # the second chunk is no copy of the first one, at any shift: agreement of +-1 sequences over all
    # circular shifts at once (FFT), at most chance plus a few standard deviations (0.5 +- 0.016)
    for row in kept:
        first, second = np.where(row[:2 ** TABLE_BITS], 1.0, -1.0), np.where(row[2 ** TABLE_BITS:], 1.0, -1.0)
        padded = np.zeros(2 ** TABLE_BITS)
        padded[:len(second)] = second
        dots = np.fft.irfft(np.fft.rfft(first) * np.conj(np.fft.rfft(padded)), 2 ** TABLE_BITS)
        assert (dots.max() / len(second) + 1) / 2 < 0.6


@pytest.mark.parametrize("shape", [(5, 7, 9), (2, 2 ** TABLE_BITS + 1000)], ids=["one_chunk", "two_chunks"])
@pytest.mark.parametrize("rank", [0, 1])
def test_fused_dropout_masks_are_the_graph_ops_bits(shape, rank, graph_mode):
    """On CPU the dropout kernel computes the masks the stock graph ops compute, bit for bit (ranks and samples
    larger than the table included)."""
    from dvt_ms import kernels

    masks = []
    for fused in (False, True):
        with kernels.use_kernels(fused):
            cell = _Twice(lambda: Dropout(0.3))
        assert (cell.first.fused is not None) == fused
        masks.append(_masks(cell, np.ones(shape, np.float32), step=77, seed=5, rank=rank, num_ranks=2))
    for stock, got in zip(*masks, strict=True):
        np.testing.assert_array_equal(got, stock)


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
    with pytest.raises(ValueError, match="rank 2"):
        bind_masks(Dropout(0.5), rank=2, num_ranks=2)


def test_drop_path_masks_columns_and_identity_in_inference(graph_mode):
    cell = DropPathMasks([0.0, 0.1, 0.5])
    m = _masks(cell, np.ones((4096, 5), np.float32), step=70000, seed=3)
    assert m.shape == (4096, 3)
    keys = np.asarray([stream_key(3, "", j) for j in range(3)], np.int32)
    words = stream_words(70000, keys)
    for j, rate in enumerate((0.0, 0.1, 0.5)):
        kept = reference_uniforms(words[:, j], np.arange(4096), 1)[:, 0] < round((1 - rate) * 2 ** 16)
        np.testing.assert_array_equal(m[:, j] > 0, kept)
    assert (m[:, 0] == 1.0).all()
    for j, rate in ((1, 0.1), (2, 0.5)):
        assert set(np.unique(m[:, j])) == {0.0, np.float32(1 / (1 - rate))}
        assert abs((m[:, j] == 0).mean() - rate) < 0.025
    x = Tensor(np.random.default_rng(0).standard_normal((3, 5, 6)).astype(np.float32))
    for cell in (Dropout(0.5), DropPath(0.5)):
        bind_masks(cell).set_step(9)
        cell.set_train(False)
        np.testing.assert_array_equal(cell(x).asnumpy(), x.asnumpy())
    assert DropPathMasks([0.0, 0.0]).set_train(True)(x) is None


def test_stream_keys_depend_on_seed_name_and_draw():
    keys = {stream_key(seed, name, draw) for seed in (0, 1) for name in ("a.drop", "b.drop") for draw in (0, 1)}
    assert len(keys) == 8 and all(0 <= k < 2 ** 16 for pair in keys for k in pair)
    with pytest.raises(ValueError, match="drop rate"):
        Dropout(1.0)


def test_cascade_masks_follow_the_step_in_graph_and_pynative_mode(graph_mode):
    sizes = {"img_size": 32, "exit_grids": [4, 6], "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 3}
    model = DVTCascade(dvt_ms.spec_for("dvt_vit", **sizes, drop_path_rate=0.3, drop_rate=0.1, attn_drop_rate=0.1))
    plain = DVTCascade(dvt_ms.spec_for("dvt_vit", **sizes))
    assert list(model.parameters_dict()) == list(plain.parameters_dict())  # no helper parameter, same names
    streams = bind_masks(model, seed=5)
    # per exit: pos_drop (4 draws), the drop-path masks (a column per block and branch) and the second
    # block's drop_path (4 draws; it draws its own mask when called alone; the first block's rate is 0); per
    # block: attn_drop, proj_drop, mlp.drop (4 draws each) and, in the second exit, the feature-reuse MLP's drop
    assert streams.num_streams == (4 + 4 + 4 + 2 * 3 * 4) + (4 + 4 + 4 + 2 * 4 * 4)
    x = Tensor(np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32))
    model.set_train(True)

    def logits():
        return np.concatenate([o.asnumpy() for o in model(x)], 1)

    first = logits()
    np.testing.assert_array_equal(logits(), first)  # the same step draws the same masks
    streams.set_step(1)
    assert np.abs(logits() - first).max() > 1e-3
    streams.set_step(0)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(logits(), first, rtol=1e-4, atol=1e-5)  # the masks do not depend on the mode
    model.set_train(False)
    assert np.abs(logits() - first).max() > 1e-3  # inference: no masks


def test_unbound_cells_and_bad_draws_are_clear_errors(graph_mode):
    x = Tensor(np.ones((2, 4), np.float32))
    cell = Dropout(0.5)
    cell.set_train(True)
    with pytest.raises(RuntimeError, match="bind_masks"):
        cell(x)
    bind_masks(cell)
    with pytest.raises(ValueError, match="draw index"):
        cell(x, 4)
    assert cell(x, 3).shape == (2, 4)
