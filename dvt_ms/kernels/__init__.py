"""Fused CPU kernels for inference and training: the one seam between the model's layers and custom operators.

MindSpore's CPU kernels for LayerNorm and exact GELU and their gradients are far slower than torch's, and a DVT exit
is full of both; its unfold (+ transpose) and the per-image broadcast behind a 2-D x 4-D matmul weigh on the T2T
stems and relation reuse (``benchmarks/`` measures what the kernels gain on a machine). On CPU the model calls
kernels of its own instead, through ``mindspore.ops.Custom`` (``func_type="aot"``) with a ``bprop`` that calls the
matching backward kernel:

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

Every kernel checks the count, dtypes and shapes of the tensors it is handed before it touches one, and refuses
what it cannot compute (float32 everywhere, int32 for its config or geometry): it returns an error code, which
MindSpore raises as a ``RuntimeError`` of its own wording, and records a message naming the kernel, the argument,
what it expects and what it got. :func:`kernel_error_from` and :func:`kernel_errors` turn MindSpore's error into a
:class:`KernelError` with that message. The kernels share one pool of worker threads, ``$DVT_MS_KERNEL_THREADS``
of them (the caller included; default one per core, at most 8).
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype

from ..device import env_switch
from .build import KernelBuildError, build_library, has_layer_kernels

__all__ = ["BLOCK_WEIGHTS", "MAX_THREADS", "PERFORMER_WEIGHTS", "THREADS_VARIABLE", "KernelBuildError", "KernelError",
           "StaticShapeKernels", "adamw_op", "all_finite_op", "all_float32", "block_stack_op",
           "drop_kernels_if_dynamic", "dropout_mask_op", "gelu_op", "kernel_error_from", "kernel_errors",
           "kernel_threads", "kernels_enabled", "kernels_restored", "last_kernel_error", "layer_norm_op",
           "pool_threads", "sandwich_op", "token_performer_op", "train_update_op", "unfold_op", "use_fused",
           "use_kernels"]

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


THREADS_VARIABLE = "DVT_MS_KERNEL_THREADS"
MAX_THREADS = 256  # the most the library takes (kMaxThreads in kernel_common.h)


def kernel_threads() -> int | None:
    """The size of the kernels' worker pool that ``$DVT_MS_KERNEL_THREADS`` asks for (the calling thread included),
    or ``None`` when it is unset or empty: one thread per core, at most 8. Raises ``ValueError`` for anything but a
    whole number from 1 to :data:`MAX_THREADS`. The pool is made on the first kernel call, with the value then."""
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise ValueError(f"${THREADS_VARIABLE} must be a whole number of threads from 1 to {MAX_THREADS}, got {text!r}")
    return int(text)


@functools.lru_cache(maxsize=1)
def _library() -> str | None:
    kernel_threads()  # a bad value is refused before any kernel runs
    try:
        return str(build_library())
    except KernelBuildError as err:
        _LOG.warning("dvt_ms: fused CPU kernels unavailable, using MindSpore's stock ops (%s)", err)
        return None


@functools.cache
def _functions(library: str) -> ctypes.CDLL:
    """The library's plain C functions, called through ctypes (the process shares one copy with MindSpore)."""
    lib = ctypes.CDLL(library)
    lib.dvt_last_error.restype, lib.dvt_last_error.argtypes = ctypes.c_char_p, []
    lib.dvt_kernel_threads.restype, lib.dvt_kernel_threads.argtypes = ctypes.c_int, []
    for name, sizes in (("dvt_block_stack_saved_floats", 10), ("dvt_performer_saved_floats", 5)):
        if hasattr(lib, name):  # layer kernels: built only where MindSpore ships oneDNN
            function = getattr(lib, name)
            function.restype, function.argtypes = ctypes.c_int64, [ctypes.c_int64] * sizes
    return lib


class KernelError(RuntimeError):
    """A fused kernel refused its arguments (count, dtype, shape or config) or failed: the message names the kernel,
    the argument, what it expects and what it got."""


def last_kernel_error(library: str | None = None) -> str | None:
    """The most recent failure recorded by ``library`` (default: the one in use), ``"kernel: message"``, or
    ``None`` when no kernel has failed (or there are no kernels)."""
    library = library or _library()
    if library is None:
        return None
    return _functions(library).dvt_last_error().decode("utf-8", "replace") or None


# MindSpore's wording for a kernel that returned non-zero: "Return value from CPU AOT kernel(<path>)'s
# function(<symbol>) is <code>. ..."
_AOT_FAILURE = re.compile(r"AOT kernel\((?P<path>[^()]+)\)'s function\((?P<symbol>dvt_\w+)\) is (?P<code>-?\d+)")


def kernel_error_from(err: BaseException) -> KernelError | None:
    """The :class:`KernelError` behind ``err`` when it is MindSpore's report of a kernel of this library returning
    an error code (``err`` itself when it already is one), else ``None``. Its message is the one the kernel
    recorded, or says that there is none."""
    if isinstance(err, KernelError):
        return err
    match = _AOT_FAILURE.search(str(err)) if isinstance(err, RuntimeError) else None
    if match is None or not Path(match["path"]).name.startswith("dvt_cpu_kernels-"):
        return None
    symbol, code = match["symbol"], match["code"]
    message = last_kernel_error(match["path"])
    if message is None or not message.startswith(f"{symbol}: "):
        message = f"{symbol}: failed with error code {code}, and recorded no message"
    return KernelError(message)


@contextmanager
def kernel_errors() -> Iterator[None]:
    """Within the block, MindSpore's report of a failed kernel of this library is raised as the
    :class:`KernelError` that says why (chained to MindSpore's error); other errors pass unchanged."""
    try:
        yield
    except RuntimeError as err:
        found = kernel_error_from(err)
        if found is None or found is err:
            raise
        raise found from err


def pool_threads() -> int | None:
    """Threads of the kernels' worker pool (the calling thread included; the pool is made on first use), or
    ``None`` when the kernels are not in use."""
    library = _library() if kernels_enabled() else None
    return None if library is None else int(_functions(library).dvt_kernel_threads())


def _saved_floats(symbol: str, *sizes: int) -> int:
    """What a layer kernel's ``saved`` output holds, from the library's one description of its layout."""
    floats = int(getattr(_functions(_library()), symbol)(*sizes))
    if floats < 0:
        raise KernelError(last_kernel_error() or f"{symbol}: refused the sizes {sizes}")
    return floats


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


def _stack_saved_floats(heads: int, x, features, weights) -> int:
    """Floats a training call of :func:`block_stack_op` keeps for its backward (its ``saved`` output), from its
    input shapes (the weights' give the MLP widths and whether features are reused)."""
    reuse = list(weights[12]) != [1]
    reused = (features[1], features[2], weights[14][0], weights[16][0]) if reuse else (0, 0, 0, 0)
    return _saved_floats("dvt_block_stack_saved_floats", x[0], x[1], x[2], heads, weights[8][0], *reused,
                         len(weights) // BLOCK_WEIGHTS)


@_shared
def block_stack_op(heads: int, training: bool, emit_relations: bool):
    """``op(x, features, relation, resize, masks, config, eps, *weights)`` -> ``(y, logits[, saved])``: the
    transformer blocks of an exit, one after the other, for float32 tokens ``x`` [B, N, C] with ``heads``
    heads, ``features`` the previous exit's tokens when the blocks reuse them (see ``dvt_block_stack`` in
    ``layer_kernels.cc`` for the inputs, ``config`` and placeholders); ``logits`` are the blocks' attention logits
    [B, depth * heads, N, N], the relations the next exit reuses, or ``[1]`` unless ``emit_relations``. ``None``
    where the stock ops must be used.

    With ``training`` the op takes one block (``BLOCK_WEIGHTS`` weights: its backward's signature is fixed),
    also returns ``saved`` (what the backward reads) and has that backward: the gradients of ``x``,
    ``features``, ``relation`` and every weight."""

    def logits_shape(x, weights):
        return [x[0], len(weights) // BLOCK_WEIGHTS * heads, x[1], x[1]] if emit_relations else [1]

    if not training:
        def eval_shapes(x, features, relation, resize, masks, config, eps, *weights):
            return x, logits_shape(x, weights)

        op = _layer_custom("dvt_block_stack", eval_shapes, lambda x, *_: (x, x))
    else:
        def grad_shapes(x, features, relation, resize, masks, config, eps, *rest):
            return (x, features, relation, *rest[:BLOCK_WEIGHTS])

        grad = _layer_custom("dvt_block_stack_grad", grad_shapes, lambda x, *_: (x,) * (3 + BLOCK_WEIGHTS))
        if grad is None:
            return None

        def bprop(x, features, relation, resize, masks, config, eps, norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b,
                  norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b, reuse_norm_w, reuse_norm_b, reuse_fc1_w, reuse_fc1_b,
                  reuse_fc2_w, reuse_fc2_b, out, dout):
            g = grad(x, features, relation, resize, masks, config, eps, norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b,
                     norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b, reuse_norm_w, reuse_norm_b, reuse_fc1_w,
                     reuse_fc1_b, reuse_fc2_w, reuse_fc2_b, out[2], dout[0], dout[1])
            return (g[0], g[1], g[2], ops.zeros_like(resize), ops.zeros_like(masks), ops.zeros_like(config),
                    ops.zeros_like(eps), *g[3:])

        def train_shapes(x, features, relation, resize, masks, config, eps, *weights):
            return x, logits_shape(x, weights), [_stack_saved_floats(heads, x, features, weights)]

        op = _layer_custom("dvt_block_stack", train_shapes, lambda x, *_: (x, x, x), bprop)
    if op is not None:  # output shapes depend on the head count: part of the op's identity for PyNative
        op.add_prim_attr("dvt_output", f"{heads}-{training}-{emit_relations}")
    return op


def adamw_op():
    """``op(param, grad, exp_avg, exp_avg_sq, hyper)`` -> the new ``(param, exp_avg, exp_avg_sq)`` of one
    float32 AdamW update in one pass (``hyper``: float32 [9], see ``dvt_adamw`` in ``cpu_kernels.cc``; its last
    entry 0 leaves all three unchanged), or ``None`` where the stock ops must be used."""
    return _custom("dvt_adamw", lambda p, g, m, v, h: (p, p, p), lambda p, g, m, v, h: (p, p, p))


PERFORMER_WEIGHTS = 13
"""Weights of :func:`token_performer_op`, in this order: norm1 weight, bias; kqv weight, bias; the random
features ``w``; proj weight, bias; norm2 weight, bias; the MLP's first and second Linear (weight, bias each)."""


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

    def bprop(x, dropout1, dropout2, config, eps, norm1_w, norm1_b, kqv_w, kqv_b, random_w, proj_w, proj_b, norm2_w,
              norm2_b, fc1_w, fc1_b, fc2_w, fc2_b, out, dout):
        g = grad(x, dropout1, dropout2, config, eps, norm1_w, norm1_b, kqv_w, kqv_b, random_w, proj_w, proj_b, norm2_w,
                 norm2_b, fc1_w, fc1_b, fc2_w, fc2_b, out[1], dout[0])
        return (g[0], ops.zeros_like(dropout1), ops.zeros_like(dropout2), ops.zeros_like(config), ops.zeros_like(eps),
                *g[1:])

    def shapes(x, m1, m2, c, eps, n1w, n1b, kqv, kqv_b, random_w, *_):
        saved = _saved_floats("dvt_performer_saved_floats", x[0], x[1], x[2], kqv[0] // 3, random_w[0])
        return [x[0], x[1], kqv[0] // 3], [saved]

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
