"""dvt_ms: the Dynamic Vision Transformer (DVT, NeurIPS 2021) in MindSpore."""

from .models import CascadeSpec, DVTCascade, ReuseState, create_model, list_models, spec_for

__version__ = "0.1.0"

__all__ = ["CascadeSpec", "DVTCascade", "ReuseState", "__version__", "create_model", "list_models", "spec_for"]
