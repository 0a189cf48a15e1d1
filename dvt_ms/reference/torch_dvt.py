"""PyTorch reference implementation of the Dynamic Vision Transformer (DVT, NeurIPS 2021).

An independent re-implementation, built from the same plain-data :class:`~dvt_ms.models.spec.CascadeSpec`
as the MindSpore cells, used to check the port numerically. Its module tree mirrors the official PyTorch
checkpoints: ``state_dict()`` of :func:`build_torch_dvt` has exactly the keys, order and shapes of the
published ``DVT_T2t_vit_12``, ``DVT_T2t_vit_14`` and ``DVT_Deit_small`` files, so their weights load
with ``load_state_dict(..., strict=True)`` (after stripping a possible ``module.`` prefix).

The attribute names follow the checkpoint keys, including the official typo ``feature_resuse_mlp``.

Grid resizing (feature and relation reuse) is done here with the same torch operators as the official
code: nearest-neighbour upsampling to an intermediate grid ``ceil(dst / src) * src`` (the rule of
:func:`dvt_ms.models.layers.grid_resize.intermediate_grid`) followed by adaptive average pooling to the
destination grid (7 -> 14 -> 10 and 10 -> 20 -> 14 for the published models). Grid resizes and the T2T soft
splits are parameter-free submodules (:class:`GridResize`, :class:`SoftSplit`), outside ``state_dict()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dvt_ms.models.layers.grid_resize import intermediate_grid
from dvt_ms.models.spec import CascadeSpec
from dvt_ms.models.stems import PatchStem, T2TStem

__all__ = [
    "STEM_BUILDERS",
    "Attention",
    "Block",
    "DVTCascade",
    "DVTExit",
    "DropPath",
    "GridResize",
    "Mlp",
    "PatchEmbed",
    "SoftSplit",
    "TokenPerformer",
    "TokenTransformer",
    "TokensToToken",
    "build_stem",
    "build_torch_dvt",
    "resize_relations",
    "resize_token_grid",
    "sinusoid_table",
]

T2T_NORM_EPS = 1e-5  # the tokens-to-token stem uses torch's default LayerNorm epsilon
PERFORMER_DROPOUT = 0.1  # fixed dropout of the token performer (after proj and at the end of its MLP)
PERFORMER_EPSILON = 1e-8  # added to the performer's normaliser


# --------------------------------------------------------------------------------------------------
# grid resizing
# --------------------------------------------------------------------------------------------------

def resize_token_grid(x: Tensor, src: int, dst: int) -> Tensor:
    """Resize the last axis of ``x``, a flattened ``src x src`` token grid, to a ``dst x dst`` grid.

    ``x`` has shape ``[..., src * src]`` (row-major grid); the result has shape ``[..., dst * dst]``.
    Every leading index is resized independently with ``F.interpolate(mode='nearest')`` to
    :func:`~dvt_ms.models.layers.grid_resize.intermediate_grid` followed by ``F.adaptive_avg_pool2d`` to ``dst``.
    """
    if src < 1 or dst < 1:
        raise ValueError(f"grid sides must be positive, got {src} -> {dst}")
    if x.shape[-1] != src * src:
        raise ValueError(f"last axis has {x.shape[-1]} entries, expected a {src}x{src} grid")
    lead = x.shape[:-1]
    grid = x.reshape(1, -1, src, src)
    size = intermediate_grid(src, dst)
    grid = F.interpolate(grid, size=(size, size), mode="nearest")
    grid = F.adaptive_avg_pool2d(grid, (dst, dst))
    return grid.reshape(*lead, dst * dst)


class GridResize(nn.Module):
    """The ``src x src`` -> ``dst x dst`` token-grid resize of feature and relation reuse.

    ``forward`` resizes the last axis (:func:`resize_token_grid`); :meth:`relations` resizes both token axes
    of attention logits, keeping the class entries.
    """

    def __init__(self, src: int, dst: int) -> None:
        super().__init__()
        self.src, self.dst = src, dst

    def forward(self, x: Tensor) -> Tensor:
        return resize_token_grid(x, self.src, self.dst)

    def after_class(self, x: Tensor) -> Tensor:
        """Resize the last axis ``[class, grid...]`` of ``x``: the class entry is kept, the grid resized."""
        return torch.cat((x[..., :1], self(x[..., 1:])), dim=-1)

    def relations(self, rel: Tensor) -> Tensor:
        """Attention logits ``[B, C, 1 + src^2, 1 + src^2]`` -> ``[B, C, 1 + dst^2, 1 + dst^2]``.

        As the official ``forward_features``: first the image part of the key axis (last axis) is resized
        with the class column kept, then the image part of the query axis with the class row kept.
        """
        out = self.after_class(rel)
        return self.after_class(out.transpose(-1, -2)).transpose(-1, -2)

    def extra_repr(self) -> str:
        return f"{self.src} -> {self.dst}"


def resize_relations(rel: Tensor, src: int, dst: int) -> Tensor:
    """Resize attention logits ``[B, C, 1 + src^2, 1 + src^2]`` to ``[B, C, 1 + dst^2, 1 + dst^2]``
    (:meth:`GridResize.relations`)."""
    return GridResize(src, dst).relations(rel)


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """The fixed sinusoid position table of T2T-ViT, shape ``[1, n_position, dim]`` (float32).

    Entry ``(p, j)`` is ``sin`` (even ``j``) or ``cos`` (odd ``j``) of ``p / 10000 ** (2 * (j // 2) / dim)``.
    """
    position = np.arange(n_position, dtype=np.float64)[:, None]
    pair = (np.arange(dim) // 2).astype(np.float64)[None, :]
    angle = position / np.power(10000.0, 2.0 * pair / dim)
    table = np.empty_like(angle)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.from_numpy(table.astype(np.float32))[None]


# --------------------------------------------------------------------------------------------------
# transformer parts
# --------------------------------------------------------------------------------------------------

class DropPath(nn.Module):
    """Stochastic depth: zero whole samples with probability ``p`` in training, rescale the others."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        mask.bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """``fc1 -> GELU (exact) -> dropout -> fc2 -> dropout``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention that also returns its pre-softmax logits.

    ``forward(x, reused)`` returns ``(out, logits)`` where ``logits = q k^T * head_dim^-0.5 (+ reused)``
    has shape ``[B, heads, N, N]``; the softmax is taken over these (reused-augmented) logits.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, reused: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        logits = (q @ k.transpose(-2, -1)) * self.scale
        if reused is not None:
            logits = logits + reused
        weights = self.attn_drop(logits.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(out)), logits


class Block(nn.Module):
    """Pre-norm transformer block with optional DVT feature reuse.

    With ``reuse_dim`` set, the block owns ``feature_resuse_mlp`` (LayerNorm of the upstream width, then
    an MLP ``reuse_dim -> reuse_hidden -> reuse_channels``), and its ``norm2``/``mlp.fc1`` take
    ``dim + reuse_channels`` inputs: the upstream tokens, mapped, resized from ``reuse_grids[0]`` to
    ``reuse_grids[1]`` and with a zero class entry, are concatenated to the tokens before the MLP.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 reuse_dim: int | None = None, reuse_hidden: int = 128, reuse_channels: int = 48,
                 reuse_grids: tuple[int, int] | None = None) -> None:
        super().__init__()
        extra = reuse_channels if reuse_dim is not None else 0
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim + extra, eps=norm_eps)
        self.mlp = Mlp(dim + extra, int(dim * mlp_ratio), dim, drop=drop)
        self.reuse_grids = reuse_grids
        self.reuse_channels = reuse_channels if reuse_dim is not None else 0
        if reuse_dim is not None:
            if reuse_grids is None:
                raise ValueError("feature reuse needs reuse_grids=(upstream grid, own grid)")
            self.feature_resuse_mlp = nn.Sequential(
                nn.LayerNorm(reuse_dim, eps=norm_eps),
                Mlp(reuse_dim, reuse_hidden, reuse_channels, drop=drop),
            )
            self.reuse_resize = GridResize(*reuse_grids)
        else:
            self.feature_resuse_mlp = self.reuse_resize = None

    def reused_features(self, upstream: Tensor) -> Tensor:
        """Map upstream tokens ``[B, 1 + g_up^2, D_up]`` to ``[B, 1 + g^2, reuse_channels]``.

        The class entry of the result is zero; the image entries are resized to this block's grid.
        """
        if self.feature_resuse_mlp is None:
            raise RuntimeError("this block was built without feature reuse")
        mapped = self.feature_resuse_mlp(upstream)[:, 1:]  # [B, g_up^2, R]
        resized = self.reuse_resize(mapped.transpose(1, 2)).transpose(1, 2)  # [B, g^2, R]
        zero = resized.new_zeros(resized.shape[0], 1, resized.shape[2])
        return torch.cat((zero, resized), dim=1)

    def forward(self, x: Tensor, features_to_be_reused: Tensor | None = None,
                relations_to_be_reused: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(tokens, attention logits)``; see the class docstring for the reuse inputs."""
        attended, logits = self.attn(self.norm1(x), relations_to_be_reused)
        x = x + self.drop_path(attended)
        mlp_in = x
        if features_to_be_reused is not None:
            mlp_in = torch.cat((x, self.reused_features(features_to_be_reused)), dim=2)
        x = x + self.drop_path(self.mlp(self.norm2(mlp_in)))
        return x, logits


# --------------------------------------------------------------------------------------------------
# stems
# --------------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """Convolutional patch stem: ``[B, C, H, W] -> [B, grid^2, embed]``."""

    def __init__(self, in_chans: int, embed_dim: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TokenPerformer(nn.Module):
    """Single-head performer attention of the T2T stem (positive random features), then an MLP.

    ``kqv`` maps ``dim`` inputs to ``3 * emb`` (split as k, q, v); ``w`` is the frozen ``[m, emb]``
    random feature matrix (orthogonal rows scaled by ``sqrt(m)``, ``m = int(emb * kernel_ratio)``).
    The value ``v`` is the skip connection: ``y = v + proj(attn)``, ``out = y + mlp(norm2(y))``.
    """

    def __init__(self, dim: int, emb: int, kernel_ratio: float = 0.5, drop: float = PERFORMER_DROPOUT) -> None:
        super().__init__()
        self.emb = emb
        self.m = int(emb * kernel_ratio)
        self.w = nn.Parameter(nn.init.orthogonal_(torch.randn(self.m, emb)) * math.sqrt(self.m),
                              requires_grad=False)
        self.kqv = nn.Linear(dim, 3 * emb)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(emb, emb)
        self.norm1 = nn.LayerNorm(dim, eps=T2T_NORM_EPS)
        self.norm2 = nn.LayerNorm(emb, eps=T2T_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb), nn.Dropout(drop))

    def random_features(self, x: Tensor) -> Tensor:
        """``exp(w x - |x|^2 / 2) / sqrt(m)``: ``[B, T, emb] -> [B, T, m]``."""
        half_sq_norm = 0.5 * (x * x).sum(dim=-1, keepdim=True)
        return torch.exp(x @ self.w.t() - half_sq_norm) / math.sqrt(self.m)

    def attend(self, x: Tensor) -> Tensor:
        """Linear-time attention plus the ``v`` skip connection (without the MLP)."""
        k, q, v = self.kqv(x).split(self.emb, dim=-1)
        k_feat, q_feat = self.random_features(k), self.random_features(q)  # [B, T, m]
        normaliser = q_feat @ k_feat.sum(dim=1).unsqueeze(-1)  # [B, T, 1]
        context = v.transpose(1, 2) @ k_feat  # [B, emb, m]
        attended = (q_feat @ context.transpose(1, 2)) / (normaliser + PERFORMER_EPSILON)  # [B, T, emb]
        return v + self.dp(self.proj(attended))

    def forward(self, x: Tensor) -> Tensor:
        y = self.attend(self.norm1(x))
        return y + self.mlp(self.norm2(y))


class _TokenAttention(nn.Module):
    """One-head attention of the token transformer: ``dim`` inputs, ``emb`` outputs, ``v`` as skip.

    The scale is ``dim ** -0.5`` (the input width, as the official code), not ``emb ** -0.5``.
    """

    def __init__(self, dim: int, emb: int) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.emb = emb
        self.qkv = nn.Linear(dim, 3 * emb, bias=False)
        self.proj = nn.Linear(emb, emb)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).split(self.emb, dim=-1)
        weights = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return v + self.proj(weights @ v)


class TokenTransformer(nn.Module):
    """Token transformer of the T2T stem (``t2t_variant='transformer'``): attention, then an MLP (ratio 1)."""

    def __init__(self, dim: int, emb: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=T2T_NORM_EPS)
        self.attn = _TokenAttention(dim, emb)
        self.norm2 = nn.LayerNorm(emb, eps=T2T_NORM_EPS)
        self.mlp = Mlp(emb, emb, emb)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SoftSplit(nn.Module):
    """A T2T soft split of a ``channels``-channel map: ``F.unfold`` to ``[B, L, channels * kernel^2]``."""

    def __init__(self, channels: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.channels, self.kernel, self.stride, self.padding = channels, kernel, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.unfold(x, kernel_size=self.kernel, stride=self.stride, padding=self.padding).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel={self.kernel}, stride={self.stride}, padding={self.padding}"


class TokensToToken(nn.Module):
    """Tokens-to-token stem: three soft splits (unfolds) with a token performer/transformer between them
    and a final linear projection to the embedding width."""

    def __init__(self, stem: T2TStem, img_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.unfolds = stem.unfolds
        self.grids = stem.grids(img_size)
        (k0, _, _), (k1, _, _), (k2, _, _) = self.unfolds
        emb = stem.token_dim
        if stem.variant == "performer":
            self.attention1 = TokenPerformer(in_chans * k0 * k0, emb, stem.kernel_ratio)
            self.attention2 = TokenPerformer(emb * k1 * k1, emb, stem.kernel_ratio)
        else:
            self.attention1 = TokenTransformer(in_chans * k0 * k0, emb)
            self.attention2 = TokenTransformer(emb * k1 * k1, emb)
        self.project = nn.Linear(emb * k2 * k2, embed_dim)
        self.soft_splits = nn.ModuleList(SoftSplit(channels, *u) for channels, u in
                                         zip((in_chans, emb, emb), self.unfolds, strict=True))

    def _split(self, x: Tensor, step: int) -> Tensor:
        return self.soft_splits[step](x)

    def _to_grid(self, tokens: Tensor, step: int) -> Tensor:
        side = self.grids[step]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attention1(self._split(x, 0))
        x = self.attention2(self._split(self._to_grid(x, 0), 1))
        return self.project(self._split(self._to_grid(x, 1), 2))


def _patch_stem(stem: PatchStem, img_size: int, in_chans: int, embed_dim: int) -> nn.Module:
    return PatchEmbed(in_chans, embed_dim, stem.patch_size, stem.stride, stem.padding)


def _t2t_stem(stem: T2TStem, img_size: int, in_chans: int, embed_dim: int) -> nn.Module:
    return TokensToToken(stem, img_size, in_chans, embed_dim)


STEM_BUILDERS: dict[type, Callable[..., nn.Module]] = {PatchStem: _patch_stem, T2TStem: _t2t_stem}
"""Stem spec type -> ``builder(stem, img_size, in_chans, embed_dim)`` of its PyTorch module."""


def build_stem(stem: PatchStem | T2TStem, img_size: int, in_chans: int, embed_dim: int) -> nn.Module:
    """The PyTorch module of a stem spec: images ``[B, in_chans, H, W]`` -> tokens ``[B, grid^2, embed_dim]``."""
    builder = STEM_BUILDERS.get(type(stem))
    if builder is None:
        raise TypeError(f"the PyTorch reference has no module for a {type(stem).__name__} stem")
    return builder(stem, img_size, in_chans, embed_dim)


# --------------------------------------------------------------------------------------------------
# exits and cascade
# --------------------------------------------------------------------------------------------------

def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class DVTExit(nn.Module):
    """Exit ``index`` of ``spec``: a full vision transformer (stem, class token, blocks, norm, head).

    When its spec asks for reuse (never for the first exit), the exit also owns the feature-reuse MLP of
    every block and/or ``relation_reuse_conv``, sized from the previous exit (``upstream_grid`` is that
    exit's grid side).
    """

    def __init__(self, spec: CascadeSpec, index: int) -> None:
        super().__init__()
        e = spec.exits[index]
        self.index = index
        self.depth = e.depth
        self.num_heads = e.num_heads
        self.grid = e.grid(spec.img_size)
        num_tokens = self.grid * self.grid + 1
        upstream = spec.exits[index - 1] if index > 0 else None
        self.upstream_grid = upstream.grid(spec.img_size) if upstream is not None else None
        self.feature_reuse = bool(e.feature_reuse and upstream is not None)
        self.relation_reuse = bool(e.relation_reuse and upstream is not None)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, e.embed_dim))
        if e.pos_embed == "sinusoid":
            self.pos_embed = nn.Parameter(sinusoid_table(num_tokens, e.embed_dim), requires_grad=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, e.embed_dim))
        # named after the stem type (patch_embed, tokens_to_token), as in the official checkpoints
        self.stem_attribute = e.stem.attribute
        self.add_module(self.stem_attribute, build_stem(e.stem, spec.img_size, spec.in_chans, e.embed_dim))
        self.pos_drop = nn.Dropout(spec.drop_rate)

        rates = torch.linspace(0, spec.drop_path_rate, e.depth).tolist()
        reuse_dim = upstream.embed_dim if self.feature_reuse else None
        grids = (self.upstream_grid, self.grid) if self.feature_reuse else None
        self.blocks = nn.ModuleList(
            Block(e.embed_dim, e.num_heads, e.mlp_ratio, e.qkv_bias, e.norm_eps, drop=spec.drop_rate,
                  attn_drop=spec.attn_drop_rate, drop_path=rates[i], reuse_dim=reuse_dim,
                  reuse_hidden=spec.reuse_hidden, reuse_channels=spec.reuse_channels, reuse_grids=grids)
            for i in range(e.depth))
        self.norm = nn.LayerNorm(e.embed_dim, eps=e.norm_eps)
        if self.relation_reuse:
            own = e.depth * e.num_heads
            self.relation_reuse_conv = nn.Sequential(
                nn.Conv2d(upstream.depth * upstream.num_heads, spec.relation_expansion * own, kernel_size=1),
                nn.GELU(),
                nn.Conv2d(spec.relation_expansion * own, own, kernel_size=1),
            )
            self.relation_resize = GridResize(self.upstream_grid, self.grid)
        else:
            self.relation_reuse_conv = self.relation_resize = None
        self.head = nn.Linear(e.embed_dim, spec.num_classes)

        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if e.pos_embed == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    @property
    def stem(self) -> nn.Module:
        """The stem module (patch embedding or tokens-to-token)."""
        return self.get_submodule(self.stem_attribute)

    def reused_relations(self, relations: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Map the upstream per-block logits to one additive term per block of this exit.

        ``relations``: upstream logits, each ``[B, heads_up, 1 + g_up^2, 1 + g_up^2]``. They are
        concatenated over blocks, passed through ``relation_reuse_conv``, resized to this exit's grid
        (:meth:`GridResize.relations`) and split into ``depth`` chunks of ``num_heads`` channels.
        """
        if self.relation_reuse_conv is None:
            raise RuntimeError(f"exit {self.index + 1} was built without relation reuse")
        mapped = self.relation_reuse_conv(torch.cat(tuple(relations), dim=1))
        resized = self.relation_resize.relations(mapped)
        return resized.chunk(self.depth, dim=1)

    def forward(self, x: Tensor, features_to_be_reused: Tensor | Sequence[Tensor] | None = None,
                relations_to_be_reused: Sequence[Tensor] | None = None
                ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Run this exit on images ``x`` ``[B, C, H, W]``.

        Args:
            x: input images.
            features_to_be_reused: the previous exit's last block output ``[B, 1 + g_up^2, D_up]`` (before
                its final norm); a one-element list (the official calling convention) is accepted too.
            relations_to_be_reused: the previous exit's per-block attention logits.

        Returns:
            ``(logits [B, classes], last block tokens [B, 1 + g^2, D], per-block attention logits)``; the
            attention logits include what this exit reused, and are what the next exit reuses.
        """
        if isinstance(features_to_be_reused, (list, tuple)):
            features_to_be_reused = features_to_be_reused[-1]
        if (features_to_be_reused is not None) != self.feature_reuse:
            raise RuntimeError(f"exit {self.index + 1} was built "
                               f"{'with' if self.feature_reuse else 'without'} feature reuse: it "
                               f"{'needs' if self.feature_reuse else 'takes no'} features of the previous exit")
        tokens = self.stem(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = self.pos_drop(tokens + self.pos_embed)

        per_block: Sequence[Tensor | None] = [None] * self.depth
        if relations_to_be_reused is not None:
            per_block = self.reused_relations(relations_to_be_reused)

        logits_per_block = []
        for block, reused in zip(self.blocks, per_block, strict=True):
            tokens, attn_logits = block(tokens, features_to_be_reused, reused)
            logits_per_block.append(attn_logits)
        cls = self.norm(tokens)[:, 0]
        return self.head(cls), tokens, logits_per_block


class DVTCascade(nn.Module):
    """The whole cascade. Exits are attributes named ``spec.exit_names[k]``; exit ``k`` reuses the
    features and/or relations of exit ``k - 1`` as its spec says. ``forward`` returns one logits tensor
    per exit, in order (no early exit: every exit runs)."""

    def __init__(self, spec: CascadeSpec) -> None:
        super().__init__()
        self.spec = spec
        self.exit_names = tuple(spec.exit_names)
        for k, name in enumerate(self.exit_names):
            self.add_module(name, DVTExit(spec, k))

    @property
    def exits(self) -> list[DVTExit]:
        """The exits in cascade order."""
        return [getattr(self, name) for name in self.exit_names]

    def forward_exits(self, x: Tensor) -> list[tuple[Tensor, Tensor, list[Tensor]]]:
        """Run every exit; return each exit's ``(logits, last block tokens, attention logits)``."""
        outputs: list[tuple[Tensor, Tensor, list[Tensor]]] = []
        for exit_ in self.exits:
            features = relations = None
            if outputs:
                _, prev_tokens, prev_relations = outputs[-1]
                features = prev_tokens if exit_.feature_reuse else None
                relations = prev_relations if exit_.relation_reuse else None
            outputs.append(exit_(x, features, relations))
        return outputs

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Logits of every exit, ``[B, num_classes]`` each."""
        return tuple(out[0] for out in self.forward_exits(x))


def build_torch_dvt(spec: CascadeSpec) -> DVTCascade:
    """Build the PyTorch reference DVT cascade described by ``spec`` (weights initialised as the
    official code: truncated normal std 0.02 for linear layers, class token and learned position
    table; zero biases; LayerNorm 1/0; convolutions with torch defaults)."""
    return DVTCascade(spec)
