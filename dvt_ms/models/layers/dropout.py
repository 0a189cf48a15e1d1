"""Dropout and stochastic depth whose masks are a pure function of explicit state, so that a resumed run
draws exactly the masks the uninterrupted run would have drawn, built only from ops that every backend runs
natively (int32 ``Mul``/``Add``/``Sub``/``BitwiseAnd``/``BitwiseXor``/``Less``/``CumSum``, ``Gather``, casts
and a float32 ``Mul``; no shifts, no float64). On CPU, :class:`Dropout` computes the same masks with one fused
kernel (:func:`dvt_ms.kernels.dropout_mask_op`).

Why not ``nn.Dropout``: its random state lives inside the kernel; it can be neither saved nor restored, so
after a resume every mask differs from the straight run. MindSpore's Generator-based ops (whose state could
be saved) do not run on CPU.

Design, in two levels:

* **Streams, once per step.** Every mask cell owns streams: one per draw for :class:`Dropout` and
  :class:`DropPath` (calls of one cell within a forward pass, ``draw`` 0 .. ``MAX_DRAWS``-1), one per column
  for :class:`DropPathMasks`. For every training step :class:`MaskStreams` evaluates Philox-4x16-10 of
  (step, stream key) for all streams at once: one small vectorised evaluation, whose output (six int32 words
  per stream, the Parameter ``MaskStreams.words``) every mask cell reads. The key of a stream is digested on
  the host from (seed, the cell's name in the model, draw), and its per-round schedule is computed there
  too. The training step computes the next step's words at its end, so the cells of a step always read
  words written before the step started.
* **Masks, per element, from a fixed table.** ``TABLE`` holds 2**18 uniform 16-bit values, drawn once from
  NumPy's Philox bit stream with a fixed key (stable across NumPy versions). Under stream words
  (C, O, P, O2, P2, X) of this step, the uniform of element ``f`` of the sample at global position ``p`` is
  ``TABLE[(O + p P + f C) mod 2**18] ^ TABLE[(O2 + p P2) mod 2**18] ^ X``; it is kept when the uniform is
  below ``(1 - rate) * 2**16``. ``C``, ``P``, ``P2`` are odd, so within one sample distinct elements read
  distinct table entries (for up to 2**18 elements per sample; a larger sample is split into chunks of
  2**18, chunk ``r`` read with the odd stride ``(C + 2r) mod 2**11`` from offset ``r P2``): a mask is a set of
  independent table draws under an index map that changes with every step, stream and sample. Drop-path
  uniforms are the same with ``f = 0``.

Cost: per element, an int32 multiply-add, an ``and``, a gather, an ``xor`` and a compare; per step, one
Philox evaluation over (streams x 2) counters. Each mask cell adds some 20 nodes to the compiled graph (one
on CPU for :class:`Dropout`).

Philox-4x16 is Philox4x32's round (Salmon et al., SC'11) on 16-bit words with 15-bit multipliers: every
product is a non-negative int32 below 2**31, so nothing overflows. The high half of a product is taken
without a shift (``RightShift`` has no AI Core kernel on Ascend 910): ``p - (p & 0xFFFF)`` has at most
15 significant bits, so converting it to float32, scaling by 2**-16 and converting back is exact.

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

from ... import kernels

__all__ = ["MAX_DRAWS", "TABLE_BITS", "DropPath", "DropPathMasks", "Dropout", "MaskStreams", "bind_masks",
           "key_schedule", "mask_table", "philox4x16", "stream_key", "stream_words"]

ROUNDS = 10
MAX_DRAWS = 4
"""Calls of one :class:`Dropout` / :class:`DropPath` per forward pass that draw different masks (the
``draw`` argument, 0 .. MAX_DRAWS-1)."""
TABLE_BITS = 18
_TABLE_SIZE = 1 << TABLE_BITS
_TABLE_MASK = _TABLE_SIZE - 1
_TABLE_KEY = 0x5D7_0DF7  # the fixed Philox key of the table's NumPy bit stream
_MULTIPLIERS = (0x6929, 0x66CF)  # odd, below 2**15: the top bits of Philox4x32's multipliers
_WEYL = (0x9E37, 0xBB67)  # the top 16 bits of Philox4x32's key increments (golden ratio, sqrt(3) - 1)
_LOW = 0xFFFF
_UNIFORM_BITS = 16


def _hi(v):
    """``v >> 16`` for int32 ``v`` in [0, 2**31) (NumPy array or MindSpore tensor), without a shift op."""
    return ((v - (v & _LOW)).astype("float32") * (1.0 / 65536.0)).astype("int32")


def philox4x16(c0, c1, c2, c3, k0, k1, rounds: int = ROUNDS):
    """Philox-4x16 of the counter words ``c0..c3`` under the key words ``k0, k1``.

    Arguments are int32 NumPy arrays or MindSpore tensors (they broadcast; keys may be Python ints), each in
    ``[0, 2**16)``; returns four int32 arrays / tensors in ``[0, 2**16)``. ``k0`` / ``k1`` may also be the
    key schedule, one key per round (:func:`key_schedule`). Uses only ``*``, ``-``, ``&``, ``^`` and float32
    casts, so the same code runs on the host and inside a compiled graph.
    """
    m0, m1 = _MULTIPLIERS
    scheduled = isinstance(k0, tuple)
    for r in range(rounds):
        key0, key1 = (k0[r], k1[r]) if scheduled else (k0, k1)
        p0, p1 = c0 * m0, c2 * m1
        c0, c1, c2, c3 = _hi(p1) ^ c1 ^ key0, p1 & _LOW, _hi(p0) ^ c3 ^ key1, p0 & _LOW
        if not scheduled:
            k0, k1 = (k0 + _WEYL[0]) & _LOW, (k1 + _WEYL[1]) & _LOW
    return c0, c1, c2, c3


def key_schedule(keys: np.ndarray, rounds: int = ROUNDS) -> tuple[np.ndarray, np.ndarray]:
    """The per-round keys of ``keys`` ([n, 2] int32): two [rounds, n] arrays (computed once on the host, so
    the graph holds no key arithmetic)."""
    r = np.arange(rounds, dtype=np.int64)[:, None]
    k = keys.astype(np.int64)
    return (((k[:, 0] + r * _WEYL[0]) & _LOW).astype(np.int32), ((k[:, 1] + r * _WEYL[1]) & _LOW).astype(np.int32))


def stream_key(seed: int, name: str, draw: int) -> tuple[int, int]:
    """The Philox key ``(k0, k1)`` of draw ``draw`` of the cell called ``name`` in a model seeded ``seed``."""
    digest = int.from_bytes(hashlib.blake2b(f"{seed}/{name}/{draw}".encode(), digest_size=4).digest(), "little")
    return digest & _LOW, digest >> 16


def _odd(word):
    """An odd multiplier in [1, 2**11) from a 16-bit word (products with indices < 2**18 stay below 2**29)."""
    return (word & 0x7FE) + 1


def _offset(lo, hi):
    """A uniform table offset in [0, 2**TABLE_BITS) from two 16-bit words."""
    return (lo + hi * (1 << (TABLE_BITS - 16))) & _TABLE_MASK


def _derive(c0, c1, c2, c3):
    """The six stream words (C, O, P, O2, P2, X) from Philox outputs of the counters 0 and 1 (rows)."""
    return _odd(c0[0]), _offset(c1[0], c2[0]), _odd(c3[0]), _offset(c0[1], c1[1]), _odd(c2[1]), c3[1]


def stream_words(step: int, keys: np.ndarray) -> np.ndarray:
    """The [6, n] words (C, O, P, O2, P2, X) at ``step`` of the streams keyed by ``keys`` ([n, 2]), computed
    on the host exactly as :class:`MaskStreams` computes them in the graph."""
    step = np.int32(step)
    counter = np.arange(2, dtype=np.int32).reshape(2, 1)
    outputs = philox4x16(step & _LOW, _hi(step), counter, 0, keys[:, 0], keys[:, 1])
    return np.stack(_derive(*outputs)).astype(np.int32)


_TABLE: dict[str, Tensor] = {}


def mask_table() -> np.ndarray:
    """The fixed table of 2**18 uniform 16-bit values (int32) every mask indexes."""
    raw = np.random.Philox(key=_TABLE_KEY).random_raw(_TABLE_SIZE // 4)  # the stable raw bit stream
    words = raw.astype("<u8").view("<u2").reshape(-1)  # four 16-bit words per 64-bit output
    return words.astype(np.int32)


def _table_tensor() -> Tensor:
    """:func:`mask_table` as one tensor shared by every mask cell."""
    if "table" not in _TABLE:
        _TABLE["table"] = Tensor(mask_table())
    return _TABLE["table"]


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


class MaskStreams(nn.Cell):
    """The per-step words of every mask stream of a model (see the module docstring).

    ``construct(step)`` computes the words of ``step`` (an int32 scalar tensor) and assigns them to
    :attr:`words` ([6, n_streams] int32), which every bound mask cell reads: the training step calls it
    at its end for the next step. :meth:`set_step` does the same on the host. ``rank`` / ``num_ranks``: this
    process's place in the data-parallel group.
    """

    def __init__(self, keys: Sequence[tuple[int, int]], rank: int = 0, num_ranks: int = 1) -> None:
        super().__init__()
        if not 0 <= rank < num_ranks:
            raise ValueError(f"rank {rank} is outside 0..{num_ranks - 1}")
        self.rank, self.num_ranks = int(rank), int(num_ranks)
        keys = np.asarray(keys, np.int32).reshape(-1, 2)
        self.num_streams = len(keys)
        self.host_keys = keys if len(keys) else np.zeros((1, 2), np.int32)  # one unused stream: no empty tensors
        k0, k1 = key_schedule(self.host_keys)
        self.k0, self.k1 = tuple(Tensor(k) for k in k0), tuple(Tensor(k) for k in k1)
        self.counter = Tensor(np.arange(2, dtype=np.int32).reshape(2, 1))
        self.words = Parameter(Tensor(self.words_at(0)), name="mask_stream_words", requires_grad=False)

    def words_at(self, step: int) -> np.ndarray:
        """The [6, n_streams] words of ``step``, computed on the host."""
        if not 0 <= step < 2 ** 31:
            raise ValueError(f"the mask step must lie in [0, 2**31), got {step}")
        return stream_words(step, self.host_keys)

    def set_step(self, step: int) -> None:
        """Make the bound cells draw the masks of ``step`` (host side)."""
        ops.assign(self.words, Tensor(self.words_at(step)))

    def construct(self, step):
        outputs = philox4x16(step & _LOW, _hi(step), self.counter, 0, self.k0, self.k1)
        ops.assign(self.words, ops.stack(_derive(*outputs)))
        return self.words


class _MaskCell(nn.Cell):
    """A cell drawing masks from the streams ``stream .. stream + streams_needed() - 1`` of a
    :class:`MaskStreams` (see :func:`bind_masks`)."""

    def __init__(self) -> None:
        super().__init__()
        self.stream, self.owned = 0, 0
        self.rank, self.num_ranks = 0, 1
        self.table = _table_tensor()
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
        position = (local * self.num_ranks + self.rank) & _TABLE_MASK
        base = (words[1:2] + position * words[2:3]) & _TABLE_MASK
        xor = ops.gather(self.table, (words[3:4] + position * words[4:5]) & _TABLE_MASK, 0) ^ words[5:6]
        return base, xor


class _RateCell(_MaskCell):
    """A mask cell with one rate, whose calls in a forward pass are draws ``0 .. MAX_DRAWS-1``."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = _check_rate(rate)
        self.keep = 1.0 - self.rate
        self.keep_below = round(self.keep * 2 ** _UNIFORM_BITS)

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
        if size <= _TABLE_SIZE:
            index = ops.arange(size, dtype=mstype.int32).reshape(1, size)
            uniform = ops.gather(self.table, (base + index * words[0:1]) & _TABLE_MASK, 0) ^ xor
        else:  # chunks of 2**18 elements; chunk r from offset r * P2 with the odd stride (C + 2r) mod 2**11
            chunks = (size + _TABLE_MASK) // _TABLE_SIZE
            index = ops.arange(_TABLE_SIZE, dtype=mstype.int32).reshape(1, 1, _TABLE_SIZE)
            chunk = ops.arange(chunks, dtype=mstype.int32).reshape(1, chunks, 1)
            start = (base.reshape(-1, 1, 1) + chunk * words[4:5].reshape(1, 1, 1)) & _TABLE_MASK
            stride = (words[0:1].reshape(1, 1, 1) + chunk * 2) & 0x7FF
            uniform = ops.gather(self.table, (start + index * stride) & _TABLE_MASK, 0)
            uniform = uniform.reshape(-1, chunks * _TABLE_SIZE)[:, :size] ^ xor
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
        self.keep_below = Tensor(np.round(keep * 2 ** _UNIFORM_BITS).astype(np.int32).reshape(1, -1))
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
