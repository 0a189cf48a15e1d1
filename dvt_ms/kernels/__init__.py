"""Fused CPU kernels for inference and training: the one seam between the model's layers and custom operators.

MindSpore's CPU kernels for LayerNorm and exact GELU (and their gradients: LayerNormGrad alone took a
quarter of a T2T-ViT-12 train step) are 5-25x slower than torch's on the same machine, and a DVT exit is
full of both; its unfold (+ transpose) and the per-image broadcast behind a 2-D x 4-D matmul cost the T2T
stems and relation reuse as much again. On CPU the model calls kernels of its own instead, through
``mindspore.ops.Custom`` (``func_type="aot"``) with a ``bprop`` that calls the matching backward kernel:

* whole layers (``layer_kernels.cc``, where MindSpore ships oneDNN, whose sgemm runs their matrix products): a
  transformer block with its reuse MLP, drop path and residuals (:func:`block_stack_op`; an exit's blocks as
  one kernel in inference) and the T2T token performer (:func:`token_performer_op`). MindSpore's compile
  time grows with the nodes of a graph and its launch cost with the kernels per call: a block is one node
  instead of ~80;
* single ops (``cpu_kernels.cc``): LayerNorm, GELU, the T2T soft splits and relation reuse's resize, where
  the layer kernels do not cover them;
* the train step's whole update (:func:`train_update_op`: overflow check, unscaling, AdamW and the EMA in
  place, one node for every parameter), or AdamW per tensor and the overflow check where that cannot run.

The kernels are compiled on first use with the system compiler (see :mod:`.build`). Each op here returns
``None`` where the stock ops must be used: on Ascend/GPU, when no compiler is found or the build fails (a
warning says so, once), or when switched off with ``DVT_MS_KERNELS=0`` or :func:`use_kernels`. The choice is
made when a cell is built; the layers take the kernel path for float32 inputs, the stock path otherwise
(float16). The custom ops need static shapes: :func:`drop_kernels_if_dynamic` switches a network back to the
stock ops before it is compiled for a dynamic batch dimension (``set_inputs`` with ``None``).
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype

from ..device import env_switch
from .build import KernelBuildError, build_library, has_layer_kernels

__all__ = ["BLOCK_WEIGHTS", "PERFORMER_WEIGHTS", "KernelBuildError", "StaticShapeKernels", "adamw_op", "all_finite_op",
           "all_float32", "block_stack_op", "drop_kernels_if_dynamic", "dropout_mask_op", "gelu_op", "kernels_enabled",
           "kernels_restored", "layer_norm_op", "sandwich_op", "stack_saved_floats", "token_performer_op",
           "train_update_op", "unfold_op", "use_fused", "use_kernels"]

_LOG = logging.getLogger(__name__)
# None: the environment decides; a context variable, so threads and asyncio tasks each see their own block
_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar("dvt_ms_kernels", default=None)


def kernels_enabled() -> bool:
    """Whether cells built now take the fused CPU kernels: CPU device, not switched off."""
    wanted = _override.get()
    if wanted is None:
        wanted = env_switch("DVT_MS_KERNELS")
    return wanted and ms.get_context("device_target") == "CPU"


@contextmanager
def use_kernels(enabled: bool) -> Iterator[None]:
    """Build cells inside this block with (``True``) or without (``False``) the fused CPU kernels."""
    token = _override.set(bool(enabled))
    try:
        yield
    finally:
        _override.reset(token)


@functools.lru_cache(maxsize=1)
def _library() -> str | None:
    try:
        return str(build_library())
    except KernelBuildError as err:
        _LOG.warning("dvt_ms: fused CPU kernels unavailable, using MindSpore's stock ops (%s)", err)
        return None


def _custom(symbol: str, out_shape, out_dtype, bprop=None):
    if not kernels_enabled():
        return None
    library = _library()
    if library is None:
        return None
    return ops.Custom(f"{library}:{symbol}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot", bprop=bprop)


_SHARED: dict[tuple, object] = {}


def _shared(factory):
    """One op per (factory, arguments, kernel library or none) for the whole process: every LayerNorm (GELU, ...)
    of a model calls the same primitive, so the compiler parses its Python ``bprop`` once rather than
    once per layer (a tenth of a T2T-ViT-12 train step's compile time)."""

    @functools.wraps(factory)
    def shared(*args):
        key = (factory.__name__, args, _library() if kernels_enabled() else None)
        if key not in _SHARED:
            _SHARED[key] = factory(*args)
        return _SHARED[key]

    return shared


@_shared
def layer_norm_op():
    """``op(x, weight, bias, eps)`` -> LayerNorm of float32 ``x`` over its last axis (``eps`` a [1]
    tensor), with its backward (gradients of ``x``, ``weight`` and ``bias``), or ``None`` where the stock
    op must be used."""
    grad = _custom("dvt_layer_norm_grad", lambda x, w, dy, eps: (x, w, w), lambda x, w, dy, eps: (x, w, w))
    if grad is None:
        return None

    def bprop(x, weight, bias, eps, out, dout):
        dx, dweight, dbias = grad(x, weight, dout, eps)
        return dx, dweight, dbias, ops.zeros_like(eps)

    return _custom("dvt_layer_norm", lambda x, w, b, eps: x, lambda x, w, b, eps: x, bprop)


@_shared
def gelu_op():
    """``op(x)`` -> exact (erf) GELU of float32 ``x``, with its backward, or ``None`` where the stock op
    must be used."""
    grad = _custom("dvt_gelu_grad", lambda x, dy: x, lambda x, dy: x)
    if grad is None:
        return None

    def bprop(x, out, dout):
        return (grad(x, dout),)

    return _custom("dvt_gelu", lambda x: x, lambda x: x, bprop)


@_shared
def unfold_op(tokens: int, features: int):
    """``op(x, geometry)`` -> soft split of float32 ``x`` with the tokens axis first, [B, tokens, features]
    (torch's ``unfold(x).transpose(1, 2)``), with its backward (torch's fold), or ``None`` where the stock
    op must be used.

    ``geometry`` is an int32 tensor ``[channels_last, side, kernel, stride, padding]``: ``x`` is an image
    [B, C, side, side] (``channels_last`` 0) or a grid of tokens [B, side * side, C] (1).
    """
    grad = _custom("dvt_unfold_grad", lambda x, g, dy: x, lambda x, g, dy: x)
    if grad is None:
        return None

    def bprop(x, geometry, out, dout):
        return grad(x, geometry, dout), ops.zeros_like(geometry)

    op = _custom("dvt_unfold", lambda x, g: [x[0], tokens, features], lambda x, g: x, bprop)
    # PyNative caches an op's inferred shape by name and input shapes; the output shape here also
    # depends on the geometry's values, so make it part of the op's identity.
    op.add_prim_attr("dvt_output", f"{tokens}x{features}")
    return op


@_shared
def sandwich_op():
    """``op(x, p)`` -> ``p @ x @ p.T`` for every plane of float32 ``x`` [B, C, n_in, n_in] with a sparse
    resize operator ``p`` [n_out, n_in], or ``None`` where the stock ops must be used. Its backward gives
    ``x`` the gradient ``p.T @ dy @ p`` and the constant ``p`` none."""
    transposed = _custom("dvt_sandwich", lambda dy, pt: [dy[0], dy[1], pt[0], pt[0]], lambda dy, pt: dy)
    if transposed is None:
        return None

    def bprop(x, p, out, dout):
        return transposed(dout, p.swapaxes(0, 1)), ops.zeros_like(p)

    return _custom("dvt_sandwich", lambda x, p: [x[0], x[1], p[0], p[0]], lambda x, p: x, bprop)


def _layer_custom(symbol: str, out_shape, out_dtype, bprop=None):
    """A layer kernel (``layer_kernels.cc``): ``None`` also where MindSpore ships no oneDNN."""
    return _custom(symbol, out_shape, out_dtype, bprop) if has_layer_kernels() else None


BLOCK_WEIGHTS = 18
"""Weights per block of :func:`block_stack_op`, in this order (absent ones as ``[1]`` placeholders): norm1
weight, bias; qkv weight, bias; proj weight, bias; norm2 weight, bias; fc1 weight, bias; fc2 weight, bias; the
reuse MLP's norm weight, bias, fc1 weight, bias, fc2 weight, bias."""


def stack_saved_floats(heads: int, x, upstream, weights) -> int:
    """Floats a training call of :func:`block_stack_op` keeps for its backward (its ``saved`` output), from
    its input shapes; mirrors ``Stack::saved_per_block`` of ``layer_kernels.cc`` (which checks it)."""
    b, n, c = x
    rows, total = b * n, 0
    for k in range(0, len(weights), BLOCK_WEIGHTS):
        w = weights[k:k + BLOCK_WEIGHTS]
        reuse_width = w[16][0] if list(w[12]) != [1] else 0
        hidden = w[8][0]
        # halves' inputs, LayerNorm 1 output, qkv, probabilities, mixed values, statistics 1; LayerNorm 2 output,
        # fc1 output, statistics 2
        total += (2 * rows * c + rows * c + 3 * rows * c + b * heads * n * n + rows * c + 2 * rows
                  + rows * (c + reuse_width) + rows * hidden + 2 * rows)
        if reuse_width:  # resized features; the reuse MLP's LayerNorm output, fc1 output, statistics and output
            up_rows = b * upstream[1]
            total += rows * reuse_width + up_rows * (upstream[2] + w[14][0] + 2 + reuse_width)
    return total


@_shared
def block_stack_op(heads: int, training: bool, emit_logits: bool):
    """``op(x, upstream, relation, resize, masks, config, eps, *weights)`` -> ``(y, logits[, saved])``: the
    transformer blocks of an exit, one after the other, for float32 tokens ``x`` [B, N, C] with ``heads``
    heads (see ``dvt_block_stack`` in ``layer_kernels.cc`` for the inputs, ``config`` and placeholders);
    ``logits`` are the blocks' attention logits [B, depth * heads, N, N], or ``[1]`` unless ``emit_logits``.
    ``None`` where the stock ops must be used.

    With ``training`` the op takes one block (``BLOCK_WEIGHTS`` weights: its backward's signature is fixed),
    also returns ``saved`` (what the backward reads) and has that backward: the gradients of ``x``,
    ``upstream``, ``relation`` and every weight."""

    def logits_shape(x, weights):
        return [x[0], len(weights) // BLOCK_WEIGHTS * heads, x[1], x[1]] if emit_logits else [1]

    if not training:
        def eval_shapes(x, upstream, relation, resize, masks, config, eps, *weights):
            return x, logits_shape(x, weights)

        op = _layer_custom("dvt_block_stack", eval_shapes, lambda x, *_: (x, x))
    else:
        def grad_shapes(x, upstream, relation, resize, masks, config, eps, *rest):
            return (x, upstream, relation, *rest[:BLOCK_WEIGHTS])

        grad = _layer_custom("dvt_block_stack_grad", grad_shapes, lambda x, *_: (x,) * (3 + BLOCK_WEIGHTS))
        if grad is None:
            return None

        def bprop(x, upstream, relation, resize, masks, config, eps, norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b,
                  norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b, reuse_norm_w, reuse_norm_b, reuse_fc1_w, reuse_fc1_b,
                  reuse_fc2_w, reuse_fc2_b, out, dout):
            g = grad(x, upstream, relation, resize, masks, config, eps, norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b,
                     norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b, reuse_norm_w, reuse_norm_b, reuse_fc1_w,
                     reuse_fc1_b, reuse_fc2_w, reuse_fc2_b, out[2], dout[0], dout[1])
            return (g[0], g[1], g[2], ops.zeros_like(resize), ops.zeros_like(masks), ops.zeros_like(config),
                    ops.zeros_like(eps), *g[3:])

        def train_shapes(x, upstream, relation, resize, masks, config, eps, *weights):
            return x, logits_shape(x, weights), [stack_saved_floats(heads, x, upstream, weights)]

        op = _layer_custom("dvt_block_stack", train_shapes, lambda x, *_: (x, x, x), bprop)
    if op is not None:  # output shapes depend on the head count: part of the op's identity for PyNative
        op.add_prim_attr("dvt_output", f"{heads}-{training}-{emit_logits}")
    return op


def adamw_op():
    """``op(param, grad, exp_avg, exp_avg_sq, hyper)`` -> the new ``(param, exp_avg, exp_avg_sq)`` of one
    float32 AdamW update in one pass (``hyper``: float32 [9], see ``dvt_adamw`` in ``cpu_kernels.cc``; its last
    entry 0 leaves all three unchanged), or ``None`` where the stock ops must be used."""
    return _custom("dvt_adamw", lambda p, g, m, v, h: (p, p, p), lambda p, g, m, v, h: (p, p, p))


PERFORMER_WEIGHTS = 13
"""Weights of :func:`token_performer_op`, in this order: norm1 weight, bias; kqv weight, bias; the random
features ``w``; proj weight, bias; norm2 weight, bias; the MLP's first and second Linear (weight, bias each)."""


def performer_saved_floats(x, kqv_weight, features) -> int:
    """Floats a training call of :func:`token_performer_op` keeps for its backward; mirrors
    ``Performer::saved`` of ``layer_kernels.cc`` (which checks it)."""
    b, tokens, d = x
    e, m, rows = kqv_weight[0] // 3, features[0], b * tokens
    return rows * (d + 2 + 3 * e + 2 * m + e + 1 + e + e + 2 + e) + b * (e + 1) * m


@_shared
def token_performer_op(training: bool):
    """``op(x, dropout1, dropout2, config, eps, *weights)`` -> the T2T stem's token performer of float32 ``x``
    [B, T, D] in one kernel (see ``dvt_token_performer`` in ``layer_kernels.cc``; ``dropout1`` / ``dropout2``
    the multipliers of its two dropouts, or ``[1]``), or ``None`` where the stock ops must be used. With
    ``training`` it returns ``(out, saved)`` and has its backward (the random features get no gradient)."""
    if not training:
        return _layer_custom("dvt_token_performer",
                             lambda x, m1, m2, c, eps, n1w, n1b, kqv, *_: [x[0], x[1], kqv[0] // 3], lambda x, *_: x)
    grad = _layer_custom("dvt_token_performer_grad", lambda x, m1, m2, c, eps, *rest: (x, *rest[:PERFORMER_WEIGHTS]),
                         lambda x, *_: (x,) * (1 + PERFORMER_WEIGHTS))
    if grad is None:
        return None

    def bprop(x, dropout1, dropout2, config, eps, norm1_w, norm1_b, kqv_w, kqv_b, features, proj_w, proj_b, norm2_w,
              norm2_b, fc1_w, fc1_b, fc2_w, fc2_b, out, dout):
        g = grad(x, dropout1, dropout2, config, eps, norm1_w, norm1_b, kqv_w, kqv_b, features, proj_w, proj_b, norm2_w,
                 norm2_b, fc1_w, fc1_b, fc2_w, fc2_b, out[1], dout[0])
        return (g[0], ops.zeros_like(dropout1), ops.zeros_like(dropout2), ops.zeros_like(config), ops.zeros_like(eps),
                *g[1:])

    def shapes(x, m1, m2, c, eps, n1w, n1b, kqv, kqv_b, features, *_):
        return [x[0], x[1], kqv[0] // 3], [performer_saved_floats(x, kqv, features)]

    return _layer_custom("dvt_token_performer", shapes, lambda x, *_: (x, x), bprop)


@_shared
def dropout_mask_op():
    """``op(x, words, table, config, scale)`` -> float32 dropout multipliers of ``x``'s shape, computed as
    :meth:`dvt_ms.models.layers.Dropout.mask` computes them with graph ops (the same bits; see
    ``dvt_dropout_mask`` in ``cpu_kernels.cc``), or ``None`` where the stock ops must be used. It has no
    backward: callers stop the gradient at the masks."""
    return _custom("dvt_dropout_mask", lambda x, *_: x, lambda x, *_: mstype.float32)


def train_update_op():
    """``op(hyper, decayed, *params, *grads, *exp_avg, *exp_avg_sq[, *ema_shadows])`` -> float32 [1]: the whole
    update of a float32 CPU train step in place (overflow check of the scaled gradients, unscaling, AdamW, the
    EMA; see ``dvt_train_update`` in ``cpu_kernels.cc``), 1 when it was applied, 0 when a gradient was not
    finite and nothing changed; or ``None`` where the stock ops must be used. One graph node instead of some
    ten per parameter: a smaller graph that compiles several times faster."""
    op = _custom("dvt_train_update", lambda *shapes: [1], lambda *dtypes: mstype.float32)
    if op is not None:
        op.add_prim_attr("side_effect_mem", True)  # writes its tensor inputs: ordered like an Assign
    return op


def all_finite_op():
    """``op(*tensors)`` -> float32 [1]: 1 when every element of the float32 ``tensors`` is finite, else 0 (one
    node for all of them), or ``None`` where the stock ops must be used."""
    return _custom("dvt_all_finite", lambda *shapes: [1], lambda *dtypes: mstype.float32)


def all_float32(tensors: Iterable[Tensor]) -> bool:
    """Whether every tensor (parameter) is float32: the train step's fused kernels (AdamW, the overflow check)
    take float32 only."""
    return all(t.dtype == mstype.float32 for t in tensors)


def use_fused(cell: nn.Cell, x: Tensor) -> bool:
    """Whether ``cell`` runs its fused kernel (``cell.fused``) on ``x``: it holds one and ``x`` is float32
    (training included: every kernel has its backward). Called from ``construct``; graph mode folds it to a
    constant."""
    return cell.fused is not None and x.dtype == ms.float32


class StaticShapeKernels:
    """Mixin for a cell compiled on its own: ``set_inputs`` with a dynamic dimension switches the fused
    kernels off in every cell under it (they need static shapes), for all graphs compiled later."""

    def set_inputs(self, *inputs) -> None:
        """As :meth:`mindspore.nn.Cell.set_inputs`, dropping the fused kernels for dynamic shapes."""
        drop_kernels_if_dynamic(self, inputs)
        super().set_inputs(*inputs)


@contextmanager
def kernels_restored(cell: nn.Cell) -> Iterator[None]:
    """Within the block ``cell`` may lose its fused kernels (a graph traced for a dynamic batch, e.g. an
    export); afterwards every cell under it holds the kernel it held before, for the graphs compiled later."""
    saved = [(sub, sub.fused) for _, sub in cell.cells_and_names() if getattr(sub, "fused", None) is not None]
    try:
        yield
    finally:
        for sub, fused in saved:
            sub.fused = fused


def drop_kernels_if_dynamic(cell: nn.Cell, inputs: Sequence[object]) -> bool:
    """Before ``cell.set_inputs(*inputs)``: if any input has a dynamic dimension (``None`` or -1), make
    every cell under ``cell`` use the stock ops (cells that can take a kernel hold it as ``fused``).
    Returns whether the kernels were dropped."""
    dynamic = any(isinstance(t, Tensor) and any(d is None or d < 0 for d in t.shape) for t in inputs)
    if dynamic:
        for _, sub in cell.cells_and_names():
            if getattr(sub, "fused", None) is not None:
                sub.fused = None
    return dynamic
