"""Registered models: the published DVT cascades and generic ones built from any grids.

Each registered name is a spec function (see :mod:`~dvt_ms.models.registry`); every argument can be
overridden through :func:`create_model` / :func:`spec_for`. Scalars that
describe a transformer (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``) may also be given per
exit as lists.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..model_arguments import SHARED_ARGUMENTS
from .registry import register_variant
from .spec import CascadeSpec, ExitSpec, default_exit_names, patch_for_grid, per_exit, t2t_unfolds_for_grid
from .stems import PatchStem, T2TStem

PUBLISHED_GRIDS = (7, 10, 14)


def vit_cascade_spec(*, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                     exit_grids: Sequence[int] = PUBLISHED_GRIDS, patch_sizes: Sequence[int] | None = None,
                     patch_paddings: Sequence[int] | None = None, embed_dim=384, depth=12, num_heads=6,
                     mlp_ratio=4.0, qkv_bias: bool = True, norm_eps: float = 1e-6, drop_rate: float = 0.0,
                     attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, feature_reuse: bool = True,
                     relation_reuse: bool = True, exit_names: Sequence[str] | None = None) -> CascadeSpec:
    """Spec of a DeiT/ViT-style cascade (patch-embedding stems, learned position embeddings).

    Each exit's patch embedding follows from ``img_size`` and its grid (:func:`patch_for_grid`)
    unless ``patch_sizes`` / ``patch_paddings`` give it explicitly.
    """
    shared = {name: value for name, value in locals().items() if name in SHARED_ARGUMENTS}
    n = len(exit_grids)
    stems = []
    for k, grid in enumerate(exit_grids):
        if patch_sizes is not None:
            patch = per_exit(patch_sizes, n, "patch_sizes")[k]
            pad = per_exit(patch_paddings, n, "patch_paddings")[k] if patch_paddings is not None else 0
        else:
            patch, _, pad = patch_for_grid(img_size, grid)
        stems.append(PatchStem(patch_size=patch, stride=patch, padding=pad))
    return _assemble(stems, "learned", exit_grids, **shared)


def t2t_cascade_spec(*, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                     exit_grids: Sequence[int] = PUBLISHED_GRIDS, t2t_unfolds: Sequence | None = None,
                     t2t_variant: str = "performer", token_dim: int = 64, embed_dim=256, depth=12, num_heads=4,
                     mlp_ratio=2.0, qkv_bias: bool = False, norm_eps: float = 1e-5, drop_rate: float = 0.0,
                     attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, feature_reuse: bool = True,
                     relation_reuse: bool = True, exit_names: Sequence[str] | None = None) -> CascadeSpec:
    """Spec of a T2T-ViT cascade (tokens-to-token stems, fixed sinusoid position tables).

    ``t2t_unfolds`` gives per exit three (kernel, stride, padding) soft splits; by default they follow
    from ``img_size`` and the grid (:func:`t2t_unfolds_for_grid`, the official values at 224).
    """
    shared = {name: value for name, value in locals().items() if name in SHARED_ARGUMENTS}
    n = len(exit_grids)
    stems = []
    for k, grid in enumerate(exit_grids):
        if t2t_unfolds is not None:
            unfolds = per_exit(t2t_unfolds, n, "t2t_unfolds")[k]
        else:
            unfolds = t2t_unfolds_for_grid(img_size, grid)
        stems.append(T2TStem(unfolds=unfolds, variant=t2t_variant, token_dim=token_dim))
    return _assemble(stems, "sinusoid", exit_grids, **shared)


def _assemble(stems: list[PatchStem | T2TStem], pos_embed: str, exit_grids: Sequence[int], *, img_size: int,
              in_chans: int, num_classes: int, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: bool,
              norm_eps: float, drop_rate: float, attn_drop_rate: float, drop_path_rate: float, feature_reuse: bool,
              relation_reuse: bool, exit_names: Sequence[str] | None) -> CascadeSpec:
    """The cascade from each exit's stem, the family's position embedding and the settings every family
    shares; checks the grids."""
    n = len(stems)
    sizes = _transformer_sizes(n, embed_dim, depth, num_heads, mlp_ratio)
    exits = tuple(ExitSpec(stem=stem, pos_embed=pos_embed, **sizes[k], qkv_bias=qkv_bias, norm_eps=norm_eps,
                           feature_reuse=k > 0 and feature_reuse, relation_reuse=k > 0 and relation_reuse)
                  for k, stem in enumerate(stems))
    spec = CascadeSpec(img_size=img_size, in_chans=in_chans, num_classes=num_classes, exits=exits,
                       exit_names=tuple(exit_names or default_exit_names(n)), drop_rate=drop_rate,
                       attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
    _check_grids(spec, exit_grids)
    return spec


def _transformer_sizes(n: int, embed_dim, depth, num_heads, mlp_ratio) -> list[dict]:
    """Per-exit transformer sizes from scalars (shared by every exit) or one value per exit."""
    columns = {name: per_exit(value, n, name) for name, value in
               (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads), ("mlp_ratio", mlp_ratio))}
    return [{"embed_dim": int(columns["embed_dim"][k]), "depth": int(columns["depth"][k]),
             "num_heads": int(columns["num_heads"][k]), "mlp_ratio": float(columns["mlp_ratio"][k])} for k in range(n)]


def _check_grids(spec: CascadeSpec, exit_grids: Sequence[int]) -> None:
    got = spec.grids()
    if list(got) != [int(g) for g in exit_grids]:
        raise ValueError(f"the stems give token grids {got} for a {spec.img_size}px image, "
                         f"but exit_grids asks for {list(exit_grids)}")


# ---- registered models --------------------------------------------------------------------------

T2T_VIT_12 = {"embed_dim": 256, "depth": 12, "num_heads": 4, "mlp_ratio": 2.0}
T2T_VIT_14 = {"embed_dim": 384, "depth": 14, "num_heads": 6, "mlp_ratio": 3.0}
DEIT_SMALL = {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0}
VIT_BASE = {"embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0}

dvt_vit = register_variant("dvt_vit", vit_cascade_spec,
                           "A DeiT/ViT-style DVT cascade with any number of exits and grids.")
dvt_t2t_vit = register_variant("dvt_t2t_vit", t2t_cascade_spec,
                               "A T2T-ViT DVT cascade with any number of exits and grids.")
dvt_t2t_vit_12 = register_variant(
    "dvt_t2t_vit_12", t2t_cascade_spec,
    "DVT T2T-ViT-12: exits 7x7 / 10x10 / 14x14 at 224px, both reuses on (22,461,516 params).", **T2T_VIT_12)
dvt_t2t_vit_14 = register_variant(
    "dvt_t2t_vit_14", t2t_cascade_spec,
    "DVT T2T-ViT-14: exits 7x7 / 10x10 / 14x14 at 224px, both reuses on (67,881,836 params).", **T2T_VIT_14)
dvt_deit_small = register_variant(
    "dvt_deit_small", vit_cascade_spec,
    "DVT DeiT-small: patch 32 / 23 (pad 3) / 16 exits, 7x7 / 10x10 / 14x14 (70,442,232 params).", **DEIT_SMALL)
dvt_deit_small_2exit = register_variant(
    "dvt_deit_small_2exit", vit_cascade_spec,
    "Two-exit DVT DeiT-small of the official MindSpore repo: patch 32 (7x7), patch 16 (14x14).",
    **DEIT_SMALL, exit_grids=(7, 14))
dvt_vit_base_2exit = register_variant(
    "dvt_vit_base_2exit", vit_cascade_spec,
    "Two-exit DVT ViT-B/16 of the official MindSpore repo: patch 32 (7x7), patch 16 (14x14).",
    **VIT_BASE, exit_grids=(7, 14))
