"""Fused CPU kernels for inference and training: the one seam between the model's layers and custom operators.

MindSpore's CPU kernels for LayerNorm and exact GELU (and their gradients: LayerNormGrad alone took a
quarter of a T2T-ViT-12 train step) are 5-25x slower than torch's on the same machine, and a DVT exit is
full of both; its unfold (+ transpose) and the per-image broadcast behind a 2-D x 4-D matmul cost the T2T
stems and relation reuse as much again. On CPU, the layers (LayerNorm, GELU, the T2T soft splits, relation
reuse's resize) call the kernels of ``cpu_kernels.cc`` instead, through ``mindspore.ops.Custom``
(``func_type="aot"``) with a ``bprop`` that calls the matching backward kernel, and the train step runs
AdamW (one pass per tensor) and the overflow check (one node for every gradient) as kernels too. The
kernels are compiled on first use with the system compiler (see :mod:`.build`). Each op here returns
``None`` where the stock ops must be used: on Ascend/GPU, when no compiler is found (a warning says so,
once), or when switched off with ``DVT_MS_KERNELS=0`` or :func:`use_kernels`. The choice is made when a
cell is built; the layers take the kernel path for float32 inputs, the stock path otherwise (float16). The
custom ops need static shapes: :func:`drop_kernels_if_dynamic` switches a network back to the stock ops
before it is compiled for a dynamic batch dimension (``set_inputs`` with ``None``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype

from ..device import env_switch
from .build import KernelBuildError, build_library

__all__ = ["KernelBuildError", "StaticShapeKernels", "adamw_op", "all_finite_op", "all_float32",
           "drop_kernels_if_dynamic", "gelu_op", "kernels_enabled", "layer_norm_op", "sandwich_op", "unfold_op",
           "use_fused", "use_kernels"]

_LOG = logging.getLogger(__name__)
_override: list[bool] = []


def kernels_enabled() -> bool:
    """Whether cells built now take the fused CPU kernels: CPU device, not switched off."""
    if _override:
        wanted = _override[-1]
    else:
        wanted = env_switch("DVT_MS_KERNELS")
    return wanted and ms.get_context("device_target") == "CPU"


@contextmanager
def use_kernels(enabled: bool) -> Iterator[None]:
    """Build cells inside this block with (``True``) or without (``False``) the fused CPU kernels."""
    _override.append(bool(enabled))
    try:
        yield
    finally:
        _override.pop()


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


def adamw_op():
    """``op(param, grad, exp_avg, exp_avg_sq, hyper)`` -> the new ``(param, exp_avg, exp_avg_sq)`` of one
    float32 AdamW update in one pass (``hyper``: float32 [9], see ``dvt_adamw`` in ``cpu_kernels.cc``; its last
    entry 0 leaves all three unchanged), or ``None`` where the stock ops must be used."""
    return _custom("dvt_adamw", lambda p, g, m, v, h: (p, p, p), lambda p, g, m, v, h: (p, p, p))


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
