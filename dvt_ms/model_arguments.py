"""The arguments of the model families' spec functions, declared once.

Each entry is an argument of :func:`~dvt_ms.models.vit_cascade_spec` and/or
:func:`~dvt_ms.models.t2t_cascade_spec` (and so of every registered model built on them): its flag kind (see
:class:`~dvt_ms.config.Option`) and help. The commands' model flags (:class:`~dvt_ms.options.ModelSettings`)
are made from this table, and the spec functions take :data:`SHARED_ARGUMENTS` from it; a test checks that
every argument of every registered spec function is here. Plain data: importing it loads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MODEL_ARGUMENTS", "SHARED_ARGUMENTS", "ModelArgument"]

_ANNOTATIONS: dict[str, Any] = {"int": int | None, "float": float | None, "bool": bool | None, "str": str | None,
                                "list": list[int] | None, "int_or_list": int | list[int] | None,
                                "float_or_list": float | list[float] | None, "any": Any}


@dataclass(frozen=True)
class ModelArgument:
    """One model argument: name, flag kind, help, allowed values, and whether every family takes it and hands
    it to the cascade unchanged (``shared``) rather than reading it for its stems."""

    name: str
    kind: str
    help: str
    choices: tuple[Any, ...] | None = None
    shared: bool = True

    @property
    def annotation(self) -> Any:
        """The type of the settings field (every model flag may be unset: None)."""
        return _ANNOTATIONS[self.kind]


MODEL_ARGUMENTS: tuple[ModelArgument, ...] = (
    ModelArgument("num_classes", "int", "classes of every exit head"),
    ModelArgument("img_size", "int", "input side in pixels"),
    ModelArgument("in_chans", "int", "input channels"),
    ModelArgument("exit_grids", "list", "token grid side of each exit, e.g. 7,10,14", shared=False),
    ModelArgument("embed_dim", "int_or_list", "embedding width (one value or one per exit)"),
    ModelArgument("depth", "int_or_list", "blocks per exit (one value or one per exit)"),
    ModelArgument("num_heads", "int_or_list", "attention heads (one value or one per exit)"),
    ModelArgument("mlp_ratio", "float_or_list", "MLP width ratio (one value or one per exit)"),
    ModelArgument("qkv_bias", "bool", "bias in the qkv projection"),
    ModelArgument("norm_eps", "float", "LayerNorm epsilon of the transformer blocks"),
    ModelArgument("patch_sizes", "list", "patch-embedding kernel per exit (patch stems)", shared=False),
    ModelArgument("patch_paddings", "list", "patch-embedding padding per exit (patch stems)", shared=False),
    ModelArgument("t2t_unfolds", "any", "per exit three [kernel, stride, padding] soft splits (T2T stems)",
                  shared=False),
    ModelArgument("t2t_variant", "str", "T2T token module", ("performer", "transformer"), shared=False),
    ModelArgument("token_dim", "int", "T2T token width", shared=False),
    ModelArgument("drop_rate", "float", "dropout"),
    ModelArgument("attn_drop_rate", "float", "attention dropout"),
    ModelArgument("drop_path_rate", "float", "stochastic depth rate of the last block"),
    ModelArgument("feature_reuse", "bool", "downstream exits reuse the previous exit's features"),
    ModelArgument("relation_reuse", "bool", "downstream exits reuse the previous exit's attention logits"),
    ModelArgument("exit_names", "any", "attribute names of the exits (parameter prefixes)"),
)

#: the arguments every family's spec function takes and hands to the cascade unchanged
SHARED_ARGUMENTS: tuple[str, ...] = tuple(a.name for a in MODEL_ARGUMENTS if a.shared)
