"""The Ascend graph audit (``dvt-audit``): compile every graph dvt_ms runs, read MindSpore's IR dump, and check
each primitive against the AI Core allowlist (:mod:`.allowlist`), for float64, for fused CPU kernels outside
CPU inference and for dynamic shapes where training compiles."""

from .allowlist import ALLOWED, AllowedOp
from .ir import Graph, Node, capture, parse_graph, read_graphs
from .rules import Finding, GraphKind, check_graphs, format_table, primitive_table

__all__ = ["ALLOWED", "AllowedOp", "Finding", "Graph", "GraphKind", "Node", "capture", "check_graphs",
           "format_table", "parse_graph", "primitive_table", "read_graphs"]
