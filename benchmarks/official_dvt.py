"""Run the official PyTorch DVT (blackfeather-wang/Dynamic-Vision-Transformer) as a benchmark baseline.

The official code is not part of this project: pass the folder of a copy of that repository (for
example ``git clone`` it, or ``git archive HEAD | tar -x -C DIR``). It was written for torch 1.7, so
before importing it this module provides at run time what it expects and a current CPU-only torch
lacks: a stub ``torchvision`` (its bundled timm imports it; the DVT models use none of it),
``torch._six`` and ``Tensor.cuda`` as a no-op. Nothing in the official code is changed.
"""

from __future__ import annotations

import collections.abc
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from pathlib import Path

# dvt_ms model name -> (module of the official repository, its registered entrypoint)
OFFICIAL_MODELS = {
    "dvt_t2t_vit_12": ("models", "DVT_T2t_vit_12"),
    "dvt_t2t_vit_14": ("models", "DVT_T2t_vit_14"),
    "dvt_deit_small": ("models_deit", "DVT_Deit_small"),
}
# the official sub-model attributes, exit 1 first
EXIT_ATTRS = ("less_less_token", "less_token", "normal_token")


class _StubModule(types.ModuleType):
    """A module whose every attribute is a placeholder class: enough for imports and class bodies."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__ = []  # a package: submodules are served by _StubFinder

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {"__init__": lambda self, *args, **kwargs: None})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``package`` and all its submodules as :class:`_StubModule` instances."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.package or fullname.startswith(self.package + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module) -> None:
        pass


def _install_shims() -> None:
    import torch

    if "torch._six" not in sys.modules:
        six = types.ModuleType("torch._six")
        six.container_abcs = collections.abc
        six.string_classes = (str, bytes)
        six.int_classes = int
        sys.modules["torch._six"] = six
        torch._six = six
    if "torchvision" not in sys.modules:
        sys.meta_path.insert(0, _StubFinder("torchvision"))
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self


def load_official(official_dir: str | Path, name: str, **kwargs):
    """Build the official PyTorch model for the dvt_ms ``name`` (random weights, eval mode); ``kwargs`` go
    to the official ``create_model`` (e.g. ``drop_path_rate``)."""
    root = Path(official_dir).resolve()
    if name not in OFFICIAL_MODELS:
        raise SystemExit(f"no official counterpart for {name!r}; known: {', '.join(OFFICIAL_MODELS)}")
    if not (root / "models_deit.py").is_file() or not (root / "models" / "t2t_vit.py").is_file():
        raise SystemExit(f"{root} is not a copy of blackfeather-wang/Dynamic-Vision-Transformer "
                         "(models/t2t_vit.py and models_deit.py not found)")
    _install_shims()
    sys.path.insert(0, str(root))
    module_name, entry = OFFICIAL_MODELS[name]
    importlib.import_module(module_name)  # registers the DVT entrypoints with the bundled timm
    from timm.models import create_model  # the official repository's own timm copy

    return create_model(entry, **kwargs).eval()


def exit_cells(model) -> list:
    """The official sub-models, exit 1 first: each ``(x, features_to_be_reused_list=...,
    relations_to_be_reused_list=...) -> (logits, feature_list, relation_list)``."""
    return [getattr(model, attr) for attr in EXIT_ATTRS]
