"""Plain-data description of a DVT cascade.

A :class:`CascadeSpec` holds everything that decides the shapes and the numbers of a cascade: the input
size, one :class:`ExitSpec` per exit (stem, transformer size) and the reuse switches. Both
the MindSpore cells and the PyTorch reference are built from the same spec, so that they cannot drift
apart, and the FLOPs counter reads it without building a network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .stems import STEM_TYPES, PatchStem, T2TStem, Unfold, conv_out


@dataclass(frozen=True)
class ExitSpec:
    """One exit of the cascade: a full vision transformer with its own stem, tokens and head.

    ``stem`` turns the image into tokens and decides the token grid: a :class:`~.stems.PatchStem` (a
    convolution, as in DeiT/ViT) or a :class:`~.stems.T2TStem` (the tokens-to-token stem of T2T-ViT).
    ``feature_reuse`` / ``relation_reuse`` say whether this exit reuses the previous exit's features /
    attention logits; the first exit never does.
    """

    stem: PatchStem | T2TStem
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    norm_eps: float
    pos_embed: str  # "learned" | "sinusoid"
    feature_reuse: bool = False
    relation_reuse: bool = False

    def grid(self, img_size: int) -> int:
        """Side of the token grid this exit produces from a square image of ``img_size`` pixels."""
        return self.stem.grid(img_size)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class CascadeSpec:
    """A whole DVT cascade. ``exit_names`` are the attribute names of the exits (and so the prefixes
    of their parameter names): the official checkpoints use ``less_less_token``, ``less_token`` and
    ``normal_token``."""

    img_size: int
    in_chans: int
    num_classes: int
    exits: tuple[ExitSpec, ...]
    exit_names: tuple[str, ...]
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    reuse_channels: int = 48  # feature-reuse channels appended before each block's MLP
    reuse_hidden: int = 128  # hidden width of the feature-reuse MLP
    relation_expansion: int = 3  # hidden width of the relation-reuse MLP, in multiples of its output
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        validate_spec(self)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def grids(self) -> list[int]:
        return [e.grid(self.img_size) for e in self.exits]

    def num_tokens(self, k: int) -> int:
        """Tokens of exit ``k`` including the class token."""
        return self.exits[k].grid(self.img_size) ** 2 + 1


def validate_spec(spec: CascadeSpec) -> None:
    """Raise ``ValueError`` naming the first inconsistency of a cascade spec."""
    if spec.num_exits < 1:
        raise ValueError("a DVT cascade needs at least one exit")
    if len(spec.exit_names) != spec.num_exits:
        raise ValueError(f"exit_names has {len(spec.exit_names)} names for {spec.num_exits} exits")
    if len(set(spec.exit_names)) != spec.num_exits:
        raise ValueError(f"exit_names must be distinct, got {list(spec.exit_names)}")
    if spec.img_size < 1 or spec.in_chans < 1 or spec.num_classes < 1:
        raise ValueError(
            f"img_size, in_chans and num_classes must be positive, got {spec.img_size}, "
            f"{spec.in_chans}, {spec.num_classes}")
    for k, e in enumerate(spec.exits):
        where = f"exit {k + 1} ({spec.exit_names[k]})"
        if not isinstance(e.stem, STEM_TYPES):
            names = " or ".join(t.__name__ for t in STEM_TYPES)
            raise ValueError(f"{where}: stem must be a {names}, got {e.stem!r}")
        if e.pos_embed not in ("learned", "sinusoid"):
            raise ValueError(f"{where}: pos_embed must be 'learned' or 'sinusoid', got {e.pos_embed!r}")
        if e.embed_dim % e.num_heads:
            raise ValueError(f"{where}: embed_dim {e.embed_dim} is not divisible by num_heads {e.num_heads}")
        if e.depth < 1:
            raise ValueError(f"{where}: depth must be >= 1, got {e.depth}")
        try:
            e.stem.check(spec.img_size)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if k == 0 and (e.feature_reuse or e.relation_reuse):
            raise ValueError("the first exit has nothing to reuse: feature_reuse/relation_reuse must be off")


def patch_for_grid(img_size: int, grid: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a non-overlapping patch embedding giving ``grid`` tokens per side.

    Exact division gives plain patches (224 -> 7: 32/32/0). Otherwise the patch is rounded up and the
    image is padded symmetrically, as the official 10x10 exit does (224 -> 10: 23/23/3).
    """
    if grid < 1 or grid > img_size:
        raise ValueError(f"cannot make a {grid}x{grid} token grid from a {img_size}px image")
    patch = math.ceil(img_size / grid)
    padding = math.ceil((patch * grid - img_size) / 2)
    if conv_out(img_size, patch, patch, padding) != grid:
        raise ValueError(f"no symmetric patch embedding turns {img_size}px into a {grid}x{grid} grid")
    return patch, patch, padding


def t2t_unfolds_for_grid(img_size: int, grid: int) -> tuple[Unfold, Unfold, Unfold]:
    """T2T soft splits giving ``grid`` tokens per side: a first split of stride ``img / (4 grid)``
    followed by the usual two (3, 2, 1) splits. The published grids keep their official values."""
    published = {(224, 7): (14, 8, 3), (224, 10): (11, 6, 5), (224, 14): (7, 4, 2)}
    second = (3, 2, 1)
    if (img_size, grid) in published:
        return published[(img_size, grid)], second, second
    target = 4 * grid
    for stride in range(max(1, img_size // target), 0, -1):
        for kernel in range(2 * stride - 1 if stride > 1 else 1, img_size + 1):
            padding = max(0, math.ceil(((target - 1) * stride + kernel - img_size) / 2))
            if padding < kernel and conv_out(img_size, kernel, stride, padding) == target:
                return (kernel, stride, padding), second, second
    raise ValueError(f"cannot build a T2T stem turning {img_size}px into a {grid}x{grid} grid")


def with_reuse(spec: CascadeSpec, feature_reuse: bool, relation_reuse: bool) -> CascadeSpec:
    """The same cascade with the reuse switches of every downstream exit set."""
    exits = tuple(e if k == 0 else replace(e, feature_reuse=feature_reuse, relation_reuse=relation_reuse)
                  for k, e in enumerate(spec.exits))
    return replace(spec, exits=exits)


def default_exit_names(n: int) -> tuple[str, ...]:
    """Official attribute names for 2 and 3 exits, ``exit{k}`` otherwise."""
    if n == 3:
        return ("less_less_token", "less_token", "normal_token")
    if n == 2:
        return ("less_less_token", "normal_token")
    if n == 1:
        return ("normal_token",)
    return tuple(f"exit{k + 1}" for k in range(n))


def per_exit(value, n: int, name: str) -> list:
    """Broadcast a scalar to ``n`` exits, or check that a sequence has one value per exit."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values for {n} exits")
        return list(value)
    return [value] * n
