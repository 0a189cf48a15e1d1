"""Counter-based random streams for dropout and drop-path masks: Philox-4x16 of (step, stream key) and a fixed
table of uniforms, so that every mask is a pure function of explicit state and a resumed run draws exactly the
masks the uninterrupted run would have drawn. Built only from ops every backend runs natively (int32
``Mul``/``Add``/``Sub``/``BitwiseAnd``/``BitwiseXor``, ``Gather``, casts and a float32 ``Mul``; no shifts, no
float64); the mask cells that read the streams are in :mod:`dvt_ms.models.layers.dropout`.

Why not ``nn.Dropout``: its random state lives inside the kernel; it can be neither saved nor restored, so
after a resume every mask differs from the straight run. MindSpore's Generator-based ops (whose state could
be saved) do not run on CPU.

Design, in two levels:

* **Streams, once per step.** Every mask cell owns streams: one per draw for ``Dropout`` and ``DropPath``
  (calls of one cell within a forward pass, ``draw`` 0 .. ``MAX_DRAWS``-1), one per column for
  ``DropPathMasks``. For every training step :class:`MaskStreams` evaluates Philox-4x16-10 of (step, stream
  key) for all streams at once: one small vectorised evaluation, whose output (six int32 words per stream,
  the Parameter ``MaskStreams.words``) every mask cell reads. The key of a stream is digested on the host
  from (seed, the cell's name in the model, draw) (:func:`stream_key`), and its per-round schedule is
  computed there too. The training step computes the next step's words at its end, so the cells of a step
  always read words written before the step started.
* **Masks, per element, from a fixed table.** :func:`mask_table` holds 2**18 uniform 16-bit values, drawn once
  from NumPy's Philox bit stream with a fixed key (stable across NumPy versions). Under stream words
  (C, O, P, O2, P2, X) of this step, the uniform of element ``f`` of the sample at global position ``p`` is
  ``TABLE[(O + p P + f C) mod 2**18] ^ TABLE[(O2 + p P2) mod 2**18] ^ X``; it is kept when the uniform is
  below ``(1 - rate) * 2**16``. ``C``, ``P``, ``P2`` are odd, so within one sample distinct elements read
  distinct table entries (for up to 2**18 elements per sample; a larger sample is split into chunks of
  2**18, chunk ``r`` read with the odd stride ``(C + 2r) mod 2**11`` from offset ``r P2``): a mask is a set of
  independent table draws under an index map that changes with every step, stream and sample. Drop-path
  uniforms are the same with ``f = 0``.

Cost: per element, an int32 multiply-add, an ``and``, a gather, an ``xor`` and a compare; per step, one
Philox evaluation over (streams x 2) counters.

Philox-4x16 is Philox4x32's round (Salmon et al., SC'11) on 16-bit words with 15-bit multipliers: every
product is a non-negative int32 below 2**31, so nothing overflows. The high half of a product is taken
without a shift (``RightShift`` has no AI Core kernel on Ascend 910): ``p - (p & 0xFFFF)`` has at most
15 significant bits, so converting it to float32, scaling by 2**-16 and converting back is exact.

Data parallel: the sample position is ``local index * num_ranks + rank``, which under the shard layout of
:mod:`dvt_ms.data.train_pipeline` (shard ``r`` takes every ``num_ranks``-th image) is the image's position
in the global batch. Ranks therefore draw different masks, and N workers draw for every image the mask one
process with an N-times larger batch would draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

__all__ = ["LOW", "MAX_DRAWS", "ROUNDS", "TABLE_BITS", "TABLE_MASK", "TABLE_SIZE", "UNIFORM_BITS", "MaskStreams",
           "key_schedule", "mask_table", "philox4x16", "stream_key", "stream_words", "table_tensor"]

ROUNDS = 10
MAX_DRAWS = 4
"""Calls of one :class:`Dropout` / :class:`DropPath` per forward pass that draw different masks (the
``draw`` argument, 0 .. MAX_DRAWS-1)."""
TABLE_BITS = 18
TABLE_SIZE = 1 << TABLE_BITS
TABLE_MASK = TABLE_SIZE - 1
_TABLE_KEY = 0x5D7_0DF7  # the fixed Philox key of the table's NumPy bit stream
_MULTIPLIERS = (0x6929, 0x66CF)  # odd, below 2**15: the top bits of Philox4x32's multipliers
_WEYL = (0x9E37, 0xBB67)  # the top 16 bits of Philox4x32's key increments (golden ratio, sqrt(3) - 1)
LOW = 0xFFFF
UNIFORM_BITS = 16


def _hi(v):
    """``v >> 16`` for int32 ``v`` in [0, 2**31) (NumPy array or MindSpore tensor), without a shift op."""
    return ((v - (v & LOW)).astype("float32") * (1.0 / 65536.0)).astype("int32")


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
        c0, c1, c2, c3 = _hi(p1) ^ c1 ^ key0, p1 & LOW, _hi(p0) ^ c3 ^ key1, p0 & LOW
        if not scheduled:
            k0, k1 = (k0 + _WEYL[0]) & LOW, (k1 + _WEYL[1]) & LOW
    return c0, c1, c2, c3


def key_schedule(keys: np.ndarray, rounds: int = ROUNDS) -> tuple[np.ndarray, np.ndarray]:
    """The per-round keys of ``keys`` ([n, 2] int32): two [rounds, n] arrays (computed once on the host, so
    the graph holds no key arithmetic)."""
    r = np.arange(rounds, dtype=np.int64)[:, None]
    k = keys.astype(np.int64)
    return (((k[:, 0] + r * _WEYL[0]) & LOW).astype(np.int32), ((k[:, 1] + r * _WEYL[1]) & LOW).astype(np.int32))


def stream_key(seed: int, name: str, draw: int) -> tuple[int, int]:
    """The Philox key ``(k0, k1)`` of draw ``draw`` of the cell called ``name`` in a model seeded ``seed``."""
    digest = int.from_bytes(hashlib.blake2b(f"{seed}/{name}/{draw}".encode(), digest_size=4).digest(), "little")
    return digest & LOW, digest >> 16


def _odd(word):
    """An odd multiplier in [1, 2**11) from a 16-bit word (products with indices < 2**18 stay below 2**29)."""
    return (word & 0x7FE) + 1


def _offset(lo, hi):
    """A uniform table offset in [0, 2**TABLE_BITS) from two 16-bit words."""
    return (lo + hi * (1 << (TABLE_BITS - 16))) & TABLE_MASK


def _derive(c0, c1, c2, c3):
    """The six stream words (C, O, P, O2, P2, X) from Philox outputs of the counters 0 and 1 (rows)."""
    return _odd(c0[0]), _offset(c1[0], c2[0]), _odd(c3[0]), _offset(c0[1], c1[1]), _odd(c2[1]), c3[1]


def stream_words(step: int, keys: np.ndarray) -> np.ndarray:
    """The [6, n] words (C, O, P, O2, P2, X) at ``step`` of the streams keyed by ``keys`` ([n, 2]), computed
    on the host exactly as :class:`MaskStreams` computes them in the graph."""
    step = np.int32(step)
    counter = np.arange(2, dtype=np.int32).reshape(2, 1)
    outputs = philox4x16(step & LOW, _hi(step), counter, 0, keys[:, 0], keys[:, 1])
    return np.stack(_derive(*outputs)).astype(np.int32)


_TABLE: dict[str, Tensor] = {}


def mask_table() -> np.ndarray:
    """The fixed table of 2**18 uniform 16-bit values (int32) every mask indexes."""
    raw = np.random.Philox(key=_TABLE_KEY).random_raw(TABLE_SIZE // 4)  # the stable raw bit stream
    words = raw.astype("<u8").view("<u2").reshape(-1)  # four 16-bit words per 64-bit output
    return words.astype(np.int32)


def table_tensor() -> Tensor:
    """:func:`mask_table` as one tensor shared by every mask cell."""
    if "table" not in _TABLE:
        _TABLE["table"] = Tensor(mask_table())
    return _TABLE["table"]


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
        outputs = philox4x16(step & LOW, _hi(step), self.counter, 0, self.k0, self.k1)
        ops.assign(self.words, ops.stack(_derive(*outputs)))
        return self.words
