"""Dropout and stochastic depth whose masks are a pure function of explicit state (:mod:`dvt_ms.rng`: Philox
streams keyed by (seed, cell name, draw) and advanced once per training step, read through a fixed table), so
that a resumed run draws exactly the masks the uninterrupted run would have drawn. On CPU, :class:`Dropout`
computes the same masks with one fused kernel (:func:`dvt_ms.kernels.dropout_mask_op`). Each mask cell adds
some 20 nodes to the compiled graph (one on CPU for :class:`Dropout`).

Inference (``set_train(False)``) and rates of 0 return the input untouched, without any of these ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype

from ... import kernels
from ...rng import MAX_DRAWS, TABLE_MASK, TABLE_SIZE, UNIFORM_BITS, MaskStreams, stream_key, table_tensor

__all__ = ["DropPath", "DropPathMasks", "Dropout", "bind_masks"]


def _check_rate(rate: float) -> float:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"a drop rate must lie in [0, 1), got {rate}")
    return float(rate)


def _flatten(x):
    """``x`` as [B, F] (the batch may be dynamic, the other dimensions are static), its trailing shape and F."""
    rest = x.shape[1:]
    size = 1
    for d in rest:
        size = size * d
    return x.reshape(-1, size), rest, size


class _MaskCell(nn.Cell):
    """A cell drawing masks from the streams ``stream .. stream + streams_needed() - 1`` of a
    :class:`MaskStreams` (see :func:`bind_masks`)."""

    def __init__(self) -> None:
        super().__init__()
        self.stream, self.owned = 0, 0
        self.rank, self.num_ranks = 0, 1
        self.table = table_tensor()
        self.__dict__["_streams"] = None  # not a child: the streams belong to the model / the training step

    def streams_needed(self) -> int:
        """How many streams this cell draws from (0 when it never draws)."""
        return 0

    def bind(self, streams: MaskStreams, first: int) -> None:
        """Draw from ``streams`` starting at stream ``first`` (before the first compiled training call)."""
        self.__dict__["_streams"] = streams
        self.stream, self.owned = first, self.streams_needed()
        self.rank, self.num_ranks = streams.rank, streams.num_ranks

    def own_words(self, count: int, offset: int = 0) -> Tensor:
        """The [6, count] words of this cell's streams ``offset .. offset + count - 1`` at this step."""
        if self._streams is None:
            raise RuntimeError("a Dropout / DropPath cell draws masks in training mode only after "
                               "dvt_ms.models.layers.bind_masks(model) gave it its streams")
        if offset < 0 or offset + count > self.owned:
            raise ValueError("a mask cell was called with a draw index outside 0 .. MAX_DRAWS - 1")
        first = self.stream + offset
        return self._streams.words[:, first:first + count]

    def row_uniforms(self, flat: Tensor, words: Tensor) -> tuple[Tensor, Tensor]:
        """Per sample: the table base ``(O + p P) mod 2**18`` and the xor word, each [B, n] for the [6, n]
        ``words``, ``p`` the samples' global positions in the batch of ``flat`` [B, ...]."""
        local = ops.cumsum(ops.ones_like(flat[:, :1], dtype=mstype.int32), 0) - 1
        position = (local * self.num_ranks + self.rank) & TABLE_MASK
        base = (words[1:2] + position * words[2:3]) & TABLE_MASK
        xor = ops.gather(self.table, (words[3:4] + position * words[4:5]) & TABLE_MASK, 0) ^ words[5:6]
        return base, xor


class _RateCell(_MaskCell):
    """A mask cell with one rate, whose calls in a forward pass are draws ``0 .. MAX_DRAWS-1``."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = _check_rate(rate)
        self.keep = 1.0 - self.rate
        self.keep_below = round(self.keep * 2 ** UNIFORM_BITS)

    def streams_needed(self) -> int:
        return MAX_DRAWS if self.rate > 0.0 else 0

    def scaled(self, keep: Tensor, dtype) -> Tensor:
        """``1 / (1 - rate)`` where ``keep`` is true, else 0: the expectation of the masked input is the input."""
        return ops.stop_gradient(keep.astype(dtype) * (1.0 / self.keep))


class Dropout(_RateCell):
    """Element-wise dropout with rate ``p`` (kept elements scaled by ``1 / (1 - p)``), as ``nn.Dropout``;
    ``construct(x, draw=0)``: calls of one cell within one forward pass give different ``draw`` indices.

    On CPU the masks of float32 inputs come from one fused kernel (:func:`dvt_ms.kernels.dropout_mask_op`, the
    same int32 arithmetic and table, so the same bits) instead of some twenty graph nodes."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__(p)
        self.fused = kernels.dropout_mask_op() if self.rate > 0.0 else None
        self.mask_scale = Tensor(np.array([1.0 / self.keep], np.float32))
        self.mask_config = self._mask_config()

    def _mask_config(self) -> Tensor:
        return Tensor(np.array([self.rank, self.num_ranks, self.keep_below], np.int32))

    def bind(self, streams: MaskStreams, first: int) -> None:
        super().bind(streams, first)
        self.mask_config = self._mask_config()

    def construct(self, x, draw: int = 0):
        if self.rate == 0.0 or not self.training:
            return x
        return x * self.mask(x, draw)

    def mask(self, x, draw: int = 0):
        """The multipliers this cell applies to ``x`` (0 or ``1 / (1 - p)`` per element, ``x``'s shape and type),
        for a fused kernel that applies them itself; only in training with a rate above 0."""
        words = self.own_words(1, draw)
        if kernels.use_fused(self, x):
            return ops.stop_gradient(self.fused(x, words, self.table, self.mask_config, self.mask_scale))
        flat, rest, size = _flatten(x)
        base, xor = self.row_uniforms(flat, words)  # [B, 1] each
        if size <= TABLE_SIZE:
            index = ops.arange(size, dtype=mstype.int32).reshape(1, size)
            uniform = ops.gather(self.table, (base + index * words[0:1]) & TABLE_MASK, 0) ^ xor
        else:  # chunks of 2**18 elements; chunk r from offset r * P2 with the odd stride (C + 2r) mod 2**11
            chunks = (size + TABLE_MASK) // TABLE_SIZE
            index = ops.arange(TABLE_SIZE, dtype=mstype.int32).reshape(1, 1, TABLE_SIZE)
            chunk = ops.arange(chunks, dtype=mstype.int32).reshape(1, chunks, 1)
            start = (base.reshape(-1, 1, 1) + chunk * words[4:5].reshape(1, 1, 1)) & TABLE_MASK
            stride = (words[0:1].reshape(1, 1, 1) + chunk * 2) & 0x7FF
            uniform = ops.gather(self.table, (start + index * stride) & TABLE_MASK, 0)
            uniform = uniform.reshape(-1, chunks * TABLE_SIZE)[:, :size] ^ xor
        return self.scaled(uniform < self.keep_below, x.dtype).reshape((-1, *rest))


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

    def construct(self, x, draw: int = 0, masks=None):
        if self.rate == 0.0 or not self.training:
            return x
        if masks is None:
            base, xor = self.row_uniforms(_flatten(x)[0], self.own_words(1, draw))
            uniform = ops.gather(self.table, base, 0) ^ xor
            mask = self.scaled(uniform < self.keep_below, x.dtype)
        else:
            mask = masks[:, draw:draw + 1].astype(x.dtype)
        return x * mask.reshape((-1,) + (1,) * (x.ndim - 1))


class DropPathMasks(_MaskCell):
    """The per-sample drop-path masks of many branches in one evaluation: ``construct(x)`` returns
    [B, len(rates)] float masks (column ``j``: 0 with probability ``rates[j]``, else ``1 / (1 - rates[j])``)
    for the batch of ``x``, or ``None`` in inference or when every rate is 0. Column ``j`` draws from
    stream ``j`` of the cell (keyed by (seed, this cell's name, ``j``))."""

    def __init__(self, rates: Sequence[float]) -> None:
        super().__init__()
        self.rates = tuple(_check_rate(r) for r in rates)
        self.active = any(r > 0.0 for r in self.rates)
        keep = np.asarray([1.0 - r for r in self.rates], np.float64)
        self.keep_below = Tensor(np.round(keep * 2 ** UNIFORM_BITS).astype(np.int32).reshape(1, -1))
        self.scale = Tensor((1.0 / keep).astype(np.float32).reshape(1, -1))

    def streams_needed(self) -> int:
        return len(self.rates) if self.active else 0

    def construct(self, x):
        if not self.active or not self.training:
            return None
        base, xor = self.row_uniforms(_flatten(x)[0], self.own_words(len(self.rates)))
        uniform = ops.gather(self.table, base, 0) ^ xor
        return ops.stop_gradient((uniform < self.keep_below).astype(mstype.float32) * self.scale)


def bind_masks(model: nn.Cell, seed: int = 0, rank: int = 0, num_ranks: int = 1) -> MaskStreams:
    """Give every mask cell of ``model`` (:class:`Dropout`, :class:`DropPath`, :class:`DropPathMasks`) its
    streams, keyed by (``seed``, its name in ``model``, draw), and return the :class:`MaskStreams` they
    read. Until something advances them (the training step writes the next step's words at the end of
    every step; :meth:`MaskStreams.set_step` sets them on the host) every training-mode call draws the masks
    of step 0.

    Bind before the first compiled training call: the streams are constants of the compiled graph.
    """
    cells, keys = [], []
    for name, cell in model.cells_and_names():
        if isinstance(cell, _MaskCell):
            cells.append((cell, len(keys)))
            keys += [stream_key(seed, name, j) for j in range(cell.streams_needed())]
    streams = MaskStreams(keys, rank, num_ranks)
    for cell, first in cells:
        cell.bind(streams, first)
    return streams
