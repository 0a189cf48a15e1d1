"""Building blocks of a DVT exit, one module each; parameter names mirror the PyTorch module tree."""

from .attention import Attention
from .block import Block
from .grid_resize import grid_resize_matrix, relation_resize_matrix
from .mlp import DropPath, Mlp
from .norm import LayerNorm
from .patch_embed import PatchEmbed
from .relation_reuse import RelationReuse
from .t2t import T2TStem, TokenPerformer, TokenTransformer

__all__ = [
    "Attention", "Block", "DropPath", "LayerNorm", "Mlp", "PatchEmbed", "RelationReuse", "T2TStem",
    "TokenPerformer", "TokenTransformer", "grid_resize_matrix", "relation_resize_matrix",
]
