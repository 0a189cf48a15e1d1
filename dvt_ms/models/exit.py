"""One exit of the cascade: a complete vision transformer over its own token grid."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from .. import kernels
from .layers import (
    BlockConfig,
    Dropout,
    DropPathMasks,
    FusedBlockStack,
    LayerNorm,
    RelationReuse,
    block_class,
)
from .layers.init import frozen, sinusoid_table, trunc_normal
from .layers.mlp import dense
from .spec import CascadeSpec
from .top_level import TopLevelCell


class DVTExit(nn.Cell):
    """Exit ``k`` of a cascade spec (attributes mirror the official PyTorch sub-model).

    ``construct(x, features=None, relations=None)`` returns ``(logits, features_out, relations_out)``:
    ``features_out`` [B, N+1, D] are the last block's tokens (what the next exit's feature reuse reads) and
    ``relations_out`` [B, depth*heads, N+1, N+1] the concatenated attention logits of every block (what
    the next exit's relation reuse reads; ``None`` unless :attr:`emit_relations`). ``features`` and
    ``relations`` are the previous exit's ``features_out`` and ``relations_out`` for the same images.
    """

    def __init__(self, spec: CascadeSpec, k: int) -> None:
        super().__init__()
        e = spec.exits[k]
        self.spec, self.index = spec, k
        self.img_size, self.in_chans = spec.img_size, spec.in_chans
        self.embed_dim, self.depth, self.num_heads = e.embed_dim, e.depth, e.num_heads
        self.grid = e.grid(spec.img_size)
        self.num_tokens = self.grid * self.grid + 1
        self.feature_reuse, self.relation_reuse = e.feature_reuse, e.relation_reuse
        # the next exit's relation reuse reads this exit's attention logits
        self.emit_relations = k + 1 < spec.num_exits and spec.exits[k + 1].relation_reuse

        d = e.embed_dim
        self.cls_token = Parameter(trunc_normal((1, 1, d)), name="cls_token")
        if e.pos_embed == "sinusoid":
            self.pos_embed = frozen("pos_embed", sinusoid_table(self.num_tokens, d))
        else:
            self.pos_embed = Parameter(trunc_normal((1, self.num_tokens, d)), name="pos_embed")
        # named after the stem type (patch_embed, tokens_to_token), the prefix of its parameter names
        self.stem_attribute = e.stem.attribute
        setattr(self, self.stem_attribute, e.stem.build_cell(spec.img_size, spec.in_chans, d))
        self.pos_drop = Dropout(spec.drop_rate)

        up = spec.exits[k - 1] if k > 0 else None
        up_grid = up.grid(spec.img_size) if up is not None else 0
        dpr = np.linspace(0, spec.drop_path_rate, e.depth) if e.depth > 1 else [0.0]
        block = block_class()
        self.blocks = nn.CellList([
            block(BlockConfig(dim=d, num_heads=e.num_heads, mlp_hidden=e.mlp_hidden, num_tokens=self.num_tokens,
                              qkv_bias=e.qkv_bias, norm_eps=e.norm_eps, drop=spec.drop_rate,
                              attn_drop=spec.attn_drop_rate, drop_path=float(dpr[i]),
                              reuse_from=(up.embed_dim, up_grid) if e.feature_reuse else None,
                              reuse_channels=spec.reuse_channels, reuse_hidden=spec.reuse_hidden,
                              emit_relations=self.emit_relations))
            for i in range(e.depth)])
        # columns 2i, 2i+1: the attention and MLP branches of block i
        self.drop_path_masks = DropPathMasks([float(dpr[i]) for i in range(e.depth) for _ in range(2)])
        self.norm = LayerNorm(d, e.norm_eps)
        if e.relation_reuse:
            channels = e.depth * e.num_heads
            self.relation_reuse_conv = RelationReuse(up.depth * up.num_heads, channels,
                                                     spec.relation_expansion * channels, up_grid, self.grid,
                                                     e.depth)
        self.head = dense(d, spec.num_classes)
        # CPU, float32: the blocks through the fused kernel (None: the blocks themselves run); named ``fused`` as
        # every cell's kernel is, so that dvt_ms.kernels can switch it off for dynamic shapes
        self.fused = FusedBlockStack.for_blocks(list(self.blocks))

    def embed(self, x):
        """Image [B, C, H, W] -> tokens with class token and position embedding [B, N+1, D]."""
        t = getattr(self, self.stem_attribute)(x)
        cls = ops.broadcast_to(self.cls_token.astype(t.dtype), (t.shape[0], -1, -1))
        t = ops.cat((cls, t), 1) + self.pos_embed.astype(t.dtype)
        return self.pos_drop(t)

    def forward_features(self, x, features=None, relations=None):
        """Returns (normed class feature [B, D], the features the next exit reuses (the last tokens,
        [B, N+1, D]), the relations it reuses (attention logits [B, depth*heads, N+1, N+1]) or None)."""
        t = self.embed(x)
        masks = self.drop_path_masks(t)  # every block's drop-path masks in one draw; None in inference
        if self.fused is not None and t.dtype == ms.float32:
            t, out_rel = self.fused(t, features, self.relation_terms(relations, split=self.training), masks)
        else:
            t, out_rel = self.run_blocks(t, features, self.relation_terms(relations, split=True), masks)
        return self.norm(t)[:, 0], t, out_rel

    def relation_terms(self, relations, split: bool):
        """Relation reuse's additive terms for the blocks: one per block (``split``) or all in one tensor;
        ``None`` without relation reuse."""
        if not self.relation_reuse:
            return None
        return self.relation_reuse_conv(relations) if split else self.relation_reuse_conv.mixed(relations)

    def run_blocks(self, t, features, terms, masks):
        """The blocks one after the other: (last tokens, their attention logits concatenated or None)."""
        logits = ()
        for i, blk in enumerate(self.blocks):
            term = terms[i] if self.relation_reuse else None
            block_masks = masks[:, 2 * i:2 * i + 2] if masks is not None else None
            t, logit = blk(t, features, term, block_masks)
            if self.emit_relations:
                logits = (*logits, logit)
        return t, (ops.cat(logits, 1) if self.emit_relations else None)

    def forward_head(self, feature):
        return self.head(feature)

    def construct(self, x, features=None, relations=None):
        feature, features_out, relations_out = self.forward_features(x, features, relations)
        return self.forward_head(feature), features_out, relations_out


class ExitStage(kernels.StaticShapeKernels, TopLevelCell):
    """Exit ``k`` as a stand-alone compiled stage ``(x, features, relations) -> (logits, features[, relations])``
    (the outputs are what the next exit takes).

    The output tuple holds tensors only (``relations`` only when the exit emits them): a ``None`` among
    a compiled graph's outputs sends MindSpore down a run-time graph path that cannot run custom ops.
    Use :meth:`unpack` to get the ``(logits, tokens, relations-or-None)`` triple back.
    ``auto_prefix=False`` keeps the parameter names of the wrapped exit untouched.
    """

    def __init__(self, exit_cell: DVTExit) -> None:
        super().__init__(auto_prefix=False)
        self.exit_cell = exit_cell
        self.emit_relations = exit_cell.emit_relations

    def construct(self, x, features=None, relations=None):
        logits, features_out, relations_out = self.exit_cell(x, features, relations)
        if self.emit_relations:
            return logits, features_out, relations_out
        return logits, features_out

    @staticmethod
    def unpack(outputs) -> tuple:
        """``(logits, features, relations)`` from a stage's outputs, ``relations`` ``None`` when not emitted."""
        return outputs[0], outputs[1], (outputs[2] if len(outputs) > 2 else None)
