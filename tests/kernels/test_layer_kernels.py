"""The fused layer kernels (``layer_kernels.cc``): a transformer block, an exit's block stack and the T2T token
performer give the stock ops' outputs and gradients; bad shapes are an error, not a crash."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from dvt_ms import kernels
from dvt_ms.models import DVTCascade
from dvt_ms.models.layers import Block, BlockConfig, FusedBlockStack, TokenPerformer, bind_masks
from tests.helpers import tiny_spec

pytestmark = pytest.mark.skipif(not kernels.has_layer_kernels(), reason="MindSpore ships no oneDNN here")

DIM, HEADS, HIDDEN, TOKENS, UP_DIM, UP_GRID = 32, 4, 64, 17, 24, 3


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest deviation relative to the largest magnitude of ``expected``."""
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


def stock_and_fused(factory):
    """The same cell built with the stock ops and with the fused kernels, holding the same random weights."""
    with kernels.use_kernels(False):
        stock = factory()
    with kernels.use_kernels(True):
        fused = factory()
    assert stock.fused is None and fused.fused is not None
    rng = np.random.RandomState(1)
    for p_stock, p_fused in zip(stock.get_parameters(), fused.get_parameters(), strict=True):
        assert p_stock.name == p_fused.name
        # trainable weights random (non-trivial norms and biases), fixed ones (random features) the stock cell's
        value = p_stock.data
        if p_stock.requires_grad:
            value = ms.Tensor((rng.randn(*p_stock.shape) * 0.3).astype(np.float32))
        p_stock.set_data(value)
        p_fused.set_data(value)
    return stock, fused


class OneBlock(nn.Cell):
    """A :class:`Block` run as an exit runs it: through a one-block :class:`FusedBlockStack` where the kernels are
    on (``fused``), else by itself; ``construct(x, features, relation, masks)`` as the block's."""

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        self.block = Block(config)
        self.fused = FusedBlockStack.for_blocks([self.block])

    def construct(self, x, features=None, relation=None, masks=None):
        if self.fused is None:
            return self.block(x, features, relation, masks)
        terms = None if relation is None else ((relation,) if self.training else relation)
        x, logits = self.fused(x, features, terms, masks)
        return (x,) if logits is None else (x, logits)  # no None among a compiled graph's outputs


class Weighted(nn.Cell):
    """``sum(out * cotangent)`` over a cell's outputs (a tuple or one tensor)."""

    def __init__(self, cell, cotangents) -> None:
        super().__init__()
        self.cell, self.cotangents = cell, tuple(ms.Tensor(c) for c in cotangents)

    def construct(self, *inputs):
        out = self.cell(*inputs)
        out = out if isinstance(out, tuple) else (out,)
        total = 0.0
        for i, c in enumerate(self.cotangents):  # outputs past the cotangents are not weighed
            total = total + (out[i] * c).sum()
        return total


def outputs_and_gradients(cell, inputs, cotangents, positions):
    cell.set_train(True)
    out = cell(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    weights = ms.ParameterTuple(cell.trainable_params())
    grads = ms.grad(Weighted(cell, cotangents), grad_position=positions, weights=weights)(*inputs)
    by_input = grads[0] if isinstance(grads[0], tuple) else (grads[0],)
    return [o.asnumpy() for o in out if o is not None] + [g.asnumpy() for g in (*by_input, *grads[1])]


@pytest.mark.exhaustive
@pytest.mark.parametrize("qkv_bias", [True, False], ids=["qkv_bias", "no_qkv_bias"])
@pytest.mark.parametrize("reuse", [True, False], ids=["feature_reuse", "no_feature_reuse"])
@pytest.mark.parametrize("relation", [True, False], ids=["relation", "no_relation"])
@pytest.mark.parametrize("drop_path", [0.0, 0.1], ids=["no_drop_path", "drop_path"])
def test_block_outputs_and_gradients_match_stock_ops(qkv_bias, reuse, relation, drop_path, graph_mode):
    """Every gradient (tokens, upstream tokens, relation term, every parameter) of a block within 1e-5 of the
    stock ops', drop-path masks given as the exit gives them; inference outputs too."""
    def make():
        return OneBlock(BlockConfig(dim=DIM, num_heads=HEADS, mlp_hidden=HIDDEN, num_tokens=TOKENS, qkv_bias=qkv_bias,
                                    norm_eps=1e-6, drop_path=drop_path,
                                    reuse_from=(UP_DIM, UP_GRID) if reuse else None, reuse_channels=8,
                                    reuse_hidden=12))

    stock, fused = stock_and_fused(make)
    rng = np.random.RandomState(0)
    x = ms.Tensor(rng.randn(3, TOKENS, DIM).astype(np.float32))
    up = ms.Tensor(rng.randn(3, UP_GRID * UP_GRID + 1, UP_DIM).astype(np.float32)) if reuse else None
    rel = ms.Tensor(rng.randn(3, HEADS, TOKENS, TOKENS).astype(np.float32)) if relation else None
    masks = ms.Tensor(np.array([[1.25, 0.0], [0.0, 1.25], [1.25, 1.25]], np.float32)) if drop_path else None
    for cell in (stock, fused):
        cell.set_train(False)
    for s, f in zip(stock(x, up, rel), fused(x, up, rel), strict=True):
        assert relative_error(f.asnumpy(), s.asnumpy()) <= 1e-5

    inputs = (x, up, rel, masks)
    positions = tuple(i for i, t in enumerate(inputs[:3]) if t is not None)
    cotangents = (rng.randn(3, TOKENS, DIM).astype(np.float32), rng.randn(3, HEADS, TOKENS, TOKENS).astype(np.float32))
    expected = outputs_and_gradients(stock, inputs, cotangents, positions)
    got = outputs_and_gradients(fused, inputs, cotangents, positions)
    assert len(got) == len(expected) == 2 + len(positions) + len(list(stock.trainable_params()))
    for e, g in zip(expected, got, strict=True):
        assert relative_error(g, e) <= 1e-5


def test_block_without_emitted_logits_matches_stock_ops(graph_mode):
    config = BlockConfig(dim=DIM, num_heads=HEADS, mlp_hidden=HIDDEN, num_tokens=TOKENS, qkv_bias=True,
                         norm_eps=1e-6, emit_relations=False)
    stock, fused = stock_and_fused(lambda: OneBlock(config))
    x = ms.Tensor(np.random.RandomState(0).randn(2, TOKENS, DIM).astype(np.float32))
    for cell in (stock, fused):
        cell.set_train(True)
    expected = stock(x)[0].asnumpy()
    got = fused(x)
    assert relative_error(got[0].asnumpy(), expected) <= 1e-5
    assert len(got) == 1  # the stack returns no logits


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no_dropout", "dropout"])
def test_token_performer_outputs_and_gradients_match_stock_ops(dropout, graph_mode):
    """The fused token performer draws the same dropout masks as the stock cells and gives the same output and
    gradients (the fixed random features get none)."""
    stock, fused = stock_and_fused(lambda: TokenPerformer(27, 16, 0.5, dropout))
    for cell in (stock, fused):
        bind_masks(cell, seed=3)
    rng = np.random.RandomState(0)
    x = ms.Tensor(rng.randn(3, 49, 27).astype(np.float32))
    for cell in (stock, fused):
        cell.set_train(False)
    assert relative_error(fused(x).asnumpy(), stock(x).asnumpy()) <= 1e-5
    cotangent = rng.randn(3, 49, 16).astype(np.float32)
    expected = outputs_and_gradients(stock, (x,), (cotangent,), 0)
    got = outputs_and_gradients(fused, (x,), (cotangent,), 0)
    for e, g in zip(expected, got, strict=True):
        assert relative_error(g, e) <= 1e-5


def test_exit_runs_its_blocks_as_one_kernel_in_inference(graph_mode):
    with kernels.use_kernels(True):
        model = DVTCascade(tiny_spec())
    assert all(model.exit(k).fused is not None for k in range(model.num_exits))
    with kernels.use_kernels(False):
        stock = DVTCascade(tiny_spec())
    for p, q in zip(stock.get_parameters(), model.get_parameters(), strict=True):
        q.set_data(p.data)
    x = ms.Tensor(np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32))
    for m in (stock, model):
        m.set_train(False)
    for s, f in zip(stock(x), model(x), strict=True):
        assert relative_error(f.asnumpy(), s.asnumpy()) <= 1e-5


def block_stack_inputs(qkv_weight_shape=(3 * DIM, DIM)):
    rng = np.random.RandomState(0)

    def t(*shape):
        return ms.Tensor(rng.randn(*shape).astype(np.float32))

    ph = ms.Tensor(np.zeros(1, np.float32))
    config = ms.Tensor(np.array([1, HEADS, 1, 0, 0, 0, 1, 0, 0], np.int32))
    weights = [t(DIM), t(DIM), t(*qkv_weight_shape), t(3 * DIM), t(DIM, DIM), t(DIM), t(DIM), t(DIM), t(HIDDEN, DIM),
               t(HIDDEN), t(DIM, HIDDEN), t(DIM)] + [ph] * 6
    return [t(2, TOKENS, DIM), ph, ph, ph, ph, config, ms.Tensor(np.array([1e-6], np.float32)), *weights]


def test_block_stack_rejects_weights_of_the_wrong_shape(graph_mode):
    """A weight whose shape disagrees with the tokens makes the kernel return an error code, which MindSpore
    raises; nothing is read or written out of bounds."""
    with kernels.use_kernels(True):
        op = kernels.block_stack_op(HEADS, False, True)
    good = op(*block_stack_inputs())
    assert tuple(good[0].shape) == (2, TOKENS, DIM)
    with pytest.raises(RuntimeError, match="dvt_block_stack"):
        op(*block_stack_inputs(qkv_weight_shape=(3 * DIM, DIM + 8)))[0].asnumpy()
