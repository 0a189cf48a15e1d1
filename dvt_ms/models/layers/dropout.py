"""Dropout and stochastic depth whose masks are a pure function of explicit state, so that a resumed run
draws exactly the masks the uninterrupted run would have drawn.

Why not ``nn.Dropout``: its random state lives inside the kernel; it can be neither saved nor restored, so
after a resume every mask differs from the straight run. MindSpore's Generator-based ops (whose state
could be saved) do not run on CPU.

Design: a counter-based generator inside the graph. Every uniform is ``philox(counter, key)`` of

* the key: 32 bits digested on the host from (seed, the cell's name in the model, which draw of the cell):
  every layer, and every call of a layer within one forward pass, has its own stream;
* stage 1, per sample: the counter (the sample's position in the global batch, the step counter). 24 of
  its 64 output bits are a drop-path uniform; for element-wise dropout all 64 are the counter and key of
* stage 2, per element: the counter (the element's index inside the sample), whose four 16-bit output
  words are the uniforms of four elements (keep probabilities are thus multiples of 2**-16).

The step counter is a Parameter the training step already owns and checkpoints (``TrainStep.global_step``,
bound with :func:`bind_masks`), so a resume restores the generator state with nothing added to it. The
forward pass that reports the loss and the one inside the gradient read the same counter and so draw the
same masks.

The alternative, uniforms drawn on the host (numpy Philox keyed by seed and step) and fed to the train step
as an extra input, moves one uniform per element every step (0.5M per image for the dropout of the T2T
stems, about 300 MB per step at a batch of 64) and works with dataset sink mode only as a dataset column.
Here the device computes them and nothing crosses. The price is compute: one Philox evaluation is about
100 small int32 ops, so element-wise dropout costs roughly 15x ``nn.Dropout`` on a CPU (a few percent of a
step on accelerators) and each dropout call adds some 250 nodes to the compiled graph. Drop path is cheap:
the masks of all blocks of an exit come from one evaluation (:class:`DropPathMasks`, one column per block
and branch).

Philox-4x16 is Philox4x32's round (Salmon et al., SC'11: products split into high and low halves, xored
with the other words and a Weyl-sequence key) on 16-bit words with 15-bit multipliers: every intermediate
value is a non-negative int32 below 2**31. Nothing overflows and no shift sees a sign bit, so the bits do
not depend on how a backend treats integer overflow or signed shifts; it needs only int32 Mul, BitwiseAnd,
BitwiseXor and RightShift (documented for Ascend, GPU and CPU). 7 rounds already pass a bit-avalanche
test; it runs 10.

Data parallel: the sample position is ``local index * num_ranks + rank``, which under the shard layout of
:mod:`dvt_ms.data.train_pipeline` (shard ``r`` takes every ``num_ranks``-th image) is the image's position
in the global batch. Ranks therefore draw different masks, and N workers draw for every image the mask one
process with an N-times larger batch would draw.

Inference (``set_train(False)``) and rates of 0 return the input untouched, without any of these ops.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype

__all__ = ["MAX_DRAWS", "DropPath", "DropPathMasks", "Dropout", "MaskSource", "bind_masks", "philox4x16",
           "stream_key"]

ROUNDS = 10
MAX_DRAWS = 4
"""Calls of one :class:`Dropout` / :class:`DropPath` per forward pass that draw different masks (the
``draw`` argument, 0 .. MAX_DRAWS-1)."""
_MULTIPLIERS = (0x6929, 0x66CF)  # odd, below 2**15: the top bits of Philox4x32's multipliers
_WEYL = (0x9E37, 0xBB67)  # the top 16 bits of Philox4x32's key increments (golden ratio, sqrt(3) - 1)
_LOW = 0xFFFF
_PATH_BITS = 24


def _hi(v):
    return ops.bitwise_right_shift(v, 16)


def _lo(v):
    return ops.bitwise_and(v, _LOW)


def _path_uniform(w0, w1):
    """A drop-path uniform as an int32 in [0, 2**24): ``w0`` and the high byte of ``w1``."""
    return w0 * 256 + ops.bitwise_right_shift(w1, 8)


def _next_key(k, weyl: int):
    if isinstance(k, int):
        return (k + weyl) & _LOW
    return _lo(k + weyl)


def philox4x16(c0, c1, c2, c3, k0, k1):
    """Philox-4x16-10 of the counter words ``c0..c3`` under the key words ``k0, k1``.

    Every argument is an int32 tensor (they broadcast) or, for keys, a Python int, each in ``[0, 2**16)``;
    returns four int32 tensors in ``[0, 2**16)``.
    """
    m0, m1 = _MULTIPLIERS
    for _ in range(ROUNDS):
        p0, p1 = c0 * m0, c2 * m1
        c0, c1, c2, c3 = (ops.bitwise_xor(ops.bitwise_xor(_hi(p1), c1), k0), _lo(p1),
                          ops.bitwise_xor(ops.bitwise_xor(_hi(p0), c3), k1), _lo(p0))
        k0, k1 = _next_key(k0, _WEYL[0]), _next_key(k1, _WEYL[1])
    return c0, c1, c2, c3


def stream_key(seed: int, name: str, draw: int) -> tuple[int, int]:
    """The Philox key ``(k0, k1)`` of draw ``draw`` of the cell called ``name`` in a model seeded ``seed``."""
    digest = int.from_bytes(hashlib.blake2b(f"{seed}/{name}/{draw}".encode(), digest_size=4).digest(), "little")
    return digest & _LOW, digest >> 16


def _flatten(x):
    """``x`` as [B, F] (the batch may be dynamic, the other dimensions are static), its trailing shape and F."""
    rest = x.shape[1:]
    size = 1
    for d in rest:
        size = size * d
    return x.reshape(-1, size), rest, size


def _check_rate(rate: float) -> float:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"a drop rate must lie in [0, 1), got {rate}")
    return float(rate)


class MaskSource:
    """What the masks of a model are drawn from: ``seed``, the int32 step ``counter`` (a Parameter that
    the training step advances; without one every call draws the masks of step 0) and this process's place
    in the data-parallel group (``rank`` of ``num_ranks``)."""

    def __init__(self, counter: Parameter | None = None, seed: int = 0, rank: int = 0, num_ranks: int = 1) -> None:
        if not 0 <= rank < num_ranks:
            raise ValueError(f"rank {rank} is outside 0..{num_ranks - 1}")
        self.counter = counter if counter is not None else Tensor(0, mstype.int32)
        self.seed, self.rank, self.num_ranks = int(seed), int(rank), int(num_ranks)


class _MaskCell(nn.Cell):
    """A cell drawing masks from a :class:`MaskSource` under keys of its own name (see :func:`bind_masks`)."""

    def __init__(self) -> None:
        super().__init__()
        self.source = MaskSource()

    def bind(self, source: MaskSource, name: str) -> None:
        """Draw from ``source`` under the streams of ``name`` (before the first compiled training call)."""
        self.source = source

    def sample_words(self, flat, k0, k1):
        """Stage 1: four int32 words [B, n] for the samples of ``flat`` [B, F] and this step under the key
        ``(k0, k1)`` (Python ints, n = 1, or [1, n] tensors)."""
        src = self.source
        local = ops.cumsum(ops.ones_like(flat[:, :1], dtype=mstype.int32), 0) - 1
        position = local * src.num_ranks + src.rank
        step = src.counter * 1
        return philox4x16(_lo(position), _hi(position), _lo(step), _hi(step), k0, k1)


class _RateCell(_MaskCell):
    """A mask cell with one rate, whose calls in a forward pass are draws ``0 .. MAX_DRAWS-1``."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = _check_rate(rate)
        self.keep = 1.0 - self.rate
        self.bind(self.source, "")

    def bind(self, source: MaskSource, name: str) -> None:
        super().bind(source, name)
        self.keys = tuple(stream_key(source.seed, name, draw) for draw in range(MAX_DRAWS))

    def scaled(self, keep, dtype):
        """``1 / (1 - rate)`` where ``keep`` is true, else 0: the expectation of the masked input is the input."""
        return ops.stop_gradient(keep.astype(dtype) * (1.0 / self.keep))


class Dropout(_RateCell):
    """Element-wise dropout with rate ``p`` (kept elements scaled by ``1 / (1 - p)``), as ``nn.Dropout``;
    ``construct(x, draw=0)``: calls of one cell within one forward pass give different ``draw`` indices."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__(p)
        # Each output word of stage 2 is one element's 16-bit uniform: four elements per evaluation.
        self.keep_below = round(self.keep * 2 ** 16)

    def construct(self, x, draw: int = 0):
        if self.rate == 0.0 or not self.training:
            return x
        flat, rest, size = _flatten(x)
        k0, k1 = self.keys[draw]
        a0, a1, a2, a3 = self.sample_words(flat, k0, k1)
        quads = (size + 3) // 4
        index = ops.arange(quads, dtype=mstype.int32).reshape(1, quads)
        words = ops.stack(philox4x16(_lo(index), _hi(index), a0, a1, a2, a3), 2)  # [B, quads, 4]
        keep = words.reshape(-1, 4 * quads)[:, :size] < self.keep_below
        return (flat * self.scaled(keep, x.dtype)).reshape((-1, *rest))


class DropPath(_RateCell):
    """Stochastic depth: drops the whole residual branch per sample with rate ``drop_prob`` (kept samples
    scaled by ``1 / (1 - drop_prob)``).

    ``construct(x, draw=0, masks=None)``: with ``masks`` (the [B, n] output of :class:`DropPathMasks`) the
    branch is multiplied by column ``draw``; without, the cell draws its own mask (draw ``draw``, as
    :class:`Dropout`).
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__(drop_prob)
        self.drop_prob = self.rate
        self.keep_below = round(self.keep * 2 ** _PATH_BITS)

    def construct(self, x, draw: int = 0, masks=None):
        if self.rate == 0.0 or not self.training:
            return x
        if masks is None:
            k0, k1 = self.keys[draw]
            w0, w1, _, _ = self.sample_words(_flatten(x)[0], k0, k1)
            mask = self.scaled(_path_uniform(w0, w1) < self.keep_below, x.dtype)
        else:
            mask = masks[:, draw:draw + 1].astype(x.dtype)
        return x * mask.reshape((-1,) + (1,) * (x.ndim - 1))


class DropPathMasks(_MaskCell):
    """The per-sample drop-path masks of many branches in one evaluation: ``construct(x)`` returns
    [B, len(rates)] float masks (column ``j``: 0 with probability ``rates[j]``, else ``1 / (1 - rates[j])``)
    for the batch of ``x``, or ``None`` in inference or when every rate is 0. Column ``j`` draws under the
    key of (seed, this cell's name, ``j``)."""

    def __init__(self, rates: Sequence[float]) -> None:
        super().__init__()
        self.rates = tuple(_check_rate(r) for r in rates)
        self.active = any(r > 0.0 for r in self.rates)
        keep = np.asarray([1.0 - r for r in self.rates], np.float64)
        self.keep_below = Tensor(np.round(keep * 2 ** _PATH_BITS).astype(np.int32).reshape(1, -1))
        self.scale = Tensor((1.0 / keep).astype(np.float32).reshape(1, -1))
        self.bind(self.source, "")

    def bind(self, source: MaskSource, name: str) -> None:
        super().bind(source, name)
        keys = np.asarray([stream_key(source.seed, name, j) for j in range(len(self.rates))], np.int32)
        self.k0, self.k1 = Tensor(keys[:, 0].reshape(1, -1)), Tensor(keys[:, 1].reshape(1, -1))

    def construct(self, x):
        if not self.active or not self.training:
            return None
        w0, w1, _, _ = self.sample_words(_flatten(x)[0], self.k0, self.k1)
        keep = _path_uniform(w0, w1) < self.keep_below
        return ops.stop_gradient(keep.astype(mstype.float32) * self.scale)


def bind_masks(model: nn.Cell, counter: Parameter | None = None, seed: int = 0, rank: int = 0,
               num_ranks: int = 1) -> int:
    """Make every mask cell of ``model`` (:class:`Dropout`, :class:`DropPath`, :class:`DropPathMasks`) draw
    from ``MaskSource(counter, seed, rank, num_ranks)`` under the keys of its name in ``model``; returns how
    many cells were bound.

    Bind before the first compiled training call: the source is a constant of the compiled graph.
    """
    source = MaskSource(counter, seed, rank, num_ranks)
    count = 0
    for name, cell in model.cells_and_names():
        if isinstance(cell, _MaskCell):
            cell.bind(source, name)
            count += 1
    return count
