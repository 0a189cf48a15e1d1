"""One exit of the cascade: a complete vision transformer over its own token grid."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from .. import kernels
from .graph_cell import GraphCell
from .layers import Dropout, DropPathMasks, LayerNorm, PatchEmbed, RelationReuse, T2TStem, block_class
from .layers.init import frozen, sinusoid_table, trunc_normal
from .layers.mlp import dense
from .spec import CascadeSpec


class DVTExit(nn.Cell):
    """Exit ``k`` of a cascade spec (attributes mirror the official PyTorch sub-model).

    ``construct(x, features=None, relations=None)`` returns ``(logits, tokens, relations_out)``:
    ``tokens`` [B, N+1, D] are the last block's output (what the next exit's feature reuse reads) and
    ``relations_out`` [B, depth*heads, N+1, N+1] the concatenated attention logits of every block (what
    the next exit's relation reuse reads; ``None`` unless :attr:`emit_relations`). ``features`` and
    ``relations`` are the previous exit's ``tokens`` and ``relations_out`` for the same images.
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
        if e.stem == "t2t":
            self.tokens_to_token = T2TStem(spec.img_size, spec.in_chans, d, e.t2t_unfolds, e.token_dim,
                                           e.t2t_variant, e.kernel_ratio)
        else:
            self.patch_embed = PatchEmbed(spec.img_size, spec.in_chans, d, e.patch_size, e.patch_stride,
                                          e.patch_padding)
        self.stem = e.stem
        self.pos_drop = Dropout(spec.drop_rate)

        up = spec.exits[k - 1] if k > 0 else None
        up_grid = up.grid(spec.img_size) if up is not None else 0
        reuse_from = (up.embed_dim, up_grid) if e.feature_reuse else None
        dpr = np.linspace(0, spec.drop_path_rate, e.depth) if e.depth > 1 else [0.0]
        block = block_class()
        self.blocks = nn.CellList([
            block(d, e.num_heads, e.mlp_hidden, self.num_tokens, e.qkv_bias, e.norm_eps, spec.drop_rate,
                  spec.attn_drop_rate, float(dpr[i]), reuse_from, spec.reuse_channels, spec.reuse_hidden,
                  self.emit_relations, 2 * i)
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
        self.fused = None
        if all(blk.fused is not None for blk in self.blocks):
            self._bind_fused_stack()

    def _bind_fused_stack(self) -> None:
        """Inference on CPU in float32: every block in one fused kernel (:func:`dvt_ms.kernels.block_stack_op`),
        ``None`` where the blocks run one by one."""
        self.fused = kernels.block_stack_op(self.num_heads, False, self.emit_relations)
        if self.fused is None:
            return
        first = self.blocks[0]
        self.placeholder = first.placeholder
        self.stack_resize = first.resize if self.feature_reuse else first.placeholder
        self.stack_eps = first.eps_tensor
        self.stack_config = first.stack_config(self.relation_reuse, False, False, depth=self.depth)
        # not registered: the parameters belong to the blocks
        self.__dict__["stack_weights"] = tuple(w for blk in self.blocks for w in blk.fused_weights)

    def fused_features(self, t, features, relations):
        """:meth:`forward_features` after the embedding, in inference through the fused kernel."""
        rel = self.relation_reuse_conv.mixed(relations) if self.relation_reuse else self.placeholder
        up = features if self.feature_reuse else self.placeholder
        t, logits = self.fused(t, up, rel, self.stack_resize, self.placeholder, self.stack_config, self.stack_eps,
                               *self.stack_weights)
        return self.norm(t)[:, 0], t, (logits if self.emit_relations else None)

    def embed(self, x):
        """Image [B, C, H, W] -> tokens with class token and position embedding [B, N+1, D]."""
        t = self.tokens_to_token(x) if self.stem == "t2t" else self.patch_embed(x)
        cls = ops.broadcast_to(self.cls_token.astype(t.dtype), (t.shape[0], -1, -1))
        t = ops.cat((cls, t), 1) + self.pos_embed.astype(t.dtype)
        return self.pos_drop(t)

    def forward_features(self, x, features=None, relations=None):
        """Returns (normed class feature [B, D], last tokens [B, N+1, D], logits [B, depth*heads, N+1, N+1])."""
        t = self.embed(x)
        if self.fused is not None and not self.training and t.dtype == ms.float32:
            return self.fused_features(t, features, relations)
        biases = self.relation_reuse_conv(relations) if self.relation_reuse else None
        masks = self.drop_path_masks(t)  # every block's drop-path masks in one draw; None in inference
        logits = ()
        for i, blk in enumerate(self.blocks):
            bias = biases[i] if self.relation_reuse else None
            block_masks = None
            if masks is not None:  # the fused kernel reads its columns of the exit's masks itself
                block_masks = masks if blk.fused is not None else masks[:, 2 * i:2 * i + 2]
            t, logit = blk(t, features, bias, block_masks)
            if self.emit_relations:
                logits = (*logits, logit)
        out_rel = ops.cat(logits, 1) if self.emit_relations else None
        return self.norm(t)[:, 0], t, out_rel

    def forward_head(self, feature):
        return self.head(feature)

    def construct(self, x, features=None, relations=None):
        feature, tokens, out_rel = self.forward_features(x, features, relations)
        return self.forward_head(feature), tokens, out_rel


class ExitStage(kernels.StaticShapeKernels, GraphCell):
    """Exit ``k`` as a stand-alone compiled stage ``(x, features, relations) -> (logits, tokens[, relations])``.

    The output tuple holds tensors only (``relations`` only when the exit emits them): a ``None`` among
    a compiled graph's outputs sends MindSpore down a run-time graph path that cannot run custom ops.
    Use :meth:`unpack` to get the ``(logits, tokens, relations-or-None)`` triple back.
    ``auto_prefix=False`` keeps the parameter names of the wrapped exit untouched.
    """

    def __init__(self, exit_cell: DVTExit) -> None:
        super().__init__(auto_prefix=False)
        self.exit_cell = exit_cell
        self.emits_relations = exit_cell.emit_relations

    def construct(self, x, features=None, relations=None):
        logits, tokens, out_rel = self.exit_cell(x, features, relations)
        if self.emits_relations:
            return logits, tokens, out_rel
        return logits, tokens

    @staticmethod
    def unpack(outputs) -> tuple:
        """``(logits, tokens, relations)`` from a stage's outputs, ``relations`` ``None`` when not emitted."""
        return outputs[0], outputs[1], (outputs[2] if len(outputs) > 2 else None)
