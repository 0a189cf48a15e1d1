"""DVT models: spec, building blocks, exits, the cascade and the registered entrypoints."""

from .cascade import DVTCascade, ReuseState
from .dvt import t2t_cascade_spec, vit_cascade_spec
from .exit import DVTExit
from .loading import LoadedModel, load_model
from .registry import create_model, list_models, model_arguments, register_model, register_variant, spec_for
from .spec import CascadeSpec, ExitSpec

__all__ = [
    "CascadeSpec", "DVTCascade", "DVTExit", "ExitSpec", "LoadedModel", "ReuseState", "create_model", "list_models",
    "load_model", "model_arguments", "register_model", "register_variant", "spec_for", "t2t_cascade_spec",
    "vit_cascade_spec",
]
