"""Building blocks of a DVT exit, one module each; parameter names mirror the PyTorch module tree."""

from ...rng import MaskStreams
from .attention import Attention, AttentionScores
from .block import Block, BlockConfig, CompileOnceBlock, block_class
from .dropout import Dropout, DropPath, DropPathMasks, bind_masks
from .fused_stack import FusedBlockStack
from .grid_resize import grid_resize_matrix, relation_resize_matrix
from .mlp import Mlp
from .norm import LayerNorm
from .patch_embed import PatchEmbed
from .relation_reuse import RelationReuse
from .t2t import TokenPerformer, TokensToToken, TokenTransformer

__all__ = [
    "Attention",
    "AttentionScores",
    "Block",
    "BlockConfig",
    "CompileOnceBlock",
    "DropPath",
    "DropPathMasks",
    "Dropout",
    "FusedBlockStack",
    "LayerNorm",
    "MaskStreams",
    "Mlp",
    "PatchEmbed",
    "RelationReuse",
    "TokenPerformer",
    "TokenTransformer",
    "TokensToToken",
    "bind_masks",
    "block_class",
    "grid_resize_matrix",
    "relation_resize_matrix",
]
