"""Stems of a DVT exit as spec types: how an image becomes a grid of tokens.

A stem is a frozen dataclass holding its own geometry. Each type knows

* its token grids: :meth:`~Stem.grids` (the grid side after each of its stages) and :meth:`~Stem.grid`
  (the last one, the exit's token grid);
* its consistency for an image size (:meth:`~Stem.check`);
* its multiply-accumulates (:meth:`~Stem.macs`, the counting rule of :mod:`dvt_ms.flops`);
* its MindSpore cell (:meth:`~Stem.build_cell`; MindSpore is imported only there);
* :attr:`~Stem.attribute`, the exit attribute that holds the cell, and so the prefix of the stem's
  parameter names (the official checkpoints' ``patch_embed`` and ``tokens_to_token``), and
  :attr:`~Stem.label`, how a state dict's stem is described.

The PyTorch reference builds its own module of each type (``dvt_ms.reference.torch_dvt``, looked up by
type), so that nothing here imports torch. A new stem is a new type here, plus its PyTorch builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["STEM_TYPES", "PatchStem", "Stem", "T2TStem", "Unfold", "conv_out"]

Unfold = tuple[int, int, int]  # (kernel, stride, padding) of one soft split


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution / unfold along one axis (floor rule, as torch)."""
    return (size + 2 * padding - kernel) // stride + 1


class Stem:
    """What every stem type provides; the concrete types are :class:`PatchStem` and :class:`T2TStem`."""

    attribute: ClassVar[str]
    label: ClassVar[str]

    def grids(self, img_size: int) -> tuple[int, ...]:
        """Grid side after each stage of the stem, for a square image of ``img_size`` pixels."""
        raise NotImplementedError

    def grid(self, img_size: int) -> int:
        """Side of the token grid the stem produces from a square image of ``img_size`` pixels."""
        return self.grids(img_size)[-1]

    def check(self, img_size: int) -> None:
        """Raise ``ValueError`` naming the first inconsistency of the stem for ``img_size`` pixels."""
        if min(self.grids(img_size)) < 1:
            raise ValueError(f"image size {img_size} is too small for its stem")

    def macs(self, img_size: int, in_chans: int, embed_dim: int) -> int:
        """Multiply-accumulates of the stem on one image (see :mod:`dvt_ms.flops` for the rule)."""
        raise NotImplementedError

    def build_cell(self, img_size: int, in_chans: int, embed_dim: int) -> Any:
        """The MindSpore cell of the stem: images ``[B, in_chans, H, W]`` -> tokens ``[B, grid^2, embed_dim]``."""
        raise NotImplementedError


@dataclass(frozen=True)
class PatchStem(Stem):
    """Convolutional patch embedding (DeiT / ViT): kernel ``patch_size``, ``stride`` and ``padding``."""

    patch_size: int = 16
    stride: int = 16
    padding: int = 0

    attribute: ClassVar[str] = "patch_embed"
    label: ClassVar[str] = "patch stem"

    def grids(self, img_size: int) -> tuple[int, ...]:
        return (conv_out(img_size, self.patch_size, self.stride, self.padding),)

    def macs(self, img_size: int, in_chans: int, embed_dim: int) -> int:
        """The patch convolution: ``grid^2 * in_chans * patch^2 * embed_dim``."""
        grid = self.grid(img_size)
        return grid * grid * in_chans * self.patch_size * self.patch_size * embed_dim

    def build_cell(self, img_size: int, in_chans: int, embed_dim: int) -> Any:
        from .layers import PatchEmbed

        return PatchEmbed(img_size, in_chans, embed_dim, self.patch_size, self.stride, self.padding)


@dataclass(frozen=True)
class T2TStem(Stem):
    """Tokens-to-token stem of T2T-ViT: three soft splits ``unfolds`` ((kernel, stride, padding) each)
    with a token module of width ``token_dim`` after the first two (``variant`` ``"performer"``, with
    ``int(token_dim * kernel_ratio)`` random features, or ``"transformer"``), then a linear projection to
    the embedding width. ``unfolds`` is stored as a tuple of int triples whatever sequences it was given."""

    unfolds: tuple[Unfold, ...]
    variant: str = "performer"
    token_dim: int = 64
    kernel_ratio: float = 0.5

    attribute: ClassVar[str] = "tokens_to_token"
    label: ClassVar[str] = "T2T stem"
    VARIANTS: ClassVar[tuple[str, ...]] = ("performer", "transformer")

    def __post_init__(self) -> None:
        object.__setattr__(self, "unfolds", tuple(tuple(int(v) for v in u) for u in self.unfolds))

    def grids(self, img_size: int) -> tuple[int, ...]:
        sizes, size = [], img_size
        for kernel, stride, padding in self.unfolds:
            size = conv_out(size, kernel, stride, padding)
            sizes.append(size)
        return tuple(sizes)

    def check(self, img_size: int) -> None:
        if len(self.unfolds) != 3 or any(len(u) != 3 for u in self.unfolds):
            raise ValueError("t2t_unfolds needs 3 (kernel, stride, padding) triples")
        if self.variant not in self.VARIANTS:
            raise ValueError("t2t_variant must be 'performer' or 'transformer'")
        super().check(img_size)

    def token_module_macs(self, tokens: int, in_width: int) -> int:
        """MACs of one token module on ``tokens`` tokens of width ``in_width``.

        Both variants: ``tokens * (3 in_width emb + emb^2 + 2 emb^2)`` for kqv / qkv, proj and the MLP
        (ratio 1), ``emb = token_dim``. The performer adds its four einsums (random features of k and q,
        the normaliser, ``v^T k'`` and ``q' (v^T k')^T``), the transformer ``q k^T`` and ``attn v``.
        """
        emb = self.token_dim
        linear = tokens * (in_width * 3 * emb + emb * emb + 2 * emb * emb)
        if self.variant == "performer":
            m = int(emb * self.kernel_ratio)
            random_features = 2 * tokens * m * emb  # w^T k and w^T q
            normaliser = tokens * m  # q' . sum_t k'
            kv = tokens * emb * m  # v^T k'
            out = tokens * m * emb  # q' (v^T k')^T
            return linear + random_features + normaliser + kv + out
        return linear + 2 * tokens * tokens * emb  # one-head attention: q k^T and attn v

    def macs(self, img_size: int, in_chans: int, embed_dim: int) -> int:
        """The two token modules on the first two soft splits, then the projection of the last one."""
        grids = self.grids(img_size)
        k0, k1, k2 = (kernel for kernel, _, _ in self.unfolds)
        macs = self.token_module_macs(grids[0] ** 2, in_chans * k0 ** 2)
        macs += self.token_module_macs(grids[1] ** 2, self.token_dim * k1 ** 2)
        return macs + grids[2] ** 2 * self.token_dim * k2 ** 2 * embed_dim

    def build_cell(self, img_size: int, in_chans: int, embed_dim: int) -> Any:
        from .layers import TokensToToken

        return TokensToToken(img_size, in_chans, embed_dim, self.unfolds, self.token_dim, self.variant,
                             self.kernel_ratio)


STEM_TYPES: tuple[type[Stem], ...] = (PatchStem, T2TStem)
"""Every stem type, in the order a state dict's stem is looked for."""
