"""Mapping an official PyTorch DVT state dict onto the parameters of a dvt_ms model, and back.

The MindSpore cells are named after the official PyTorch modules (LayerNorm parameters included, which
are ``weight`` / ``bias`` here, not ``gamma`` / ``beta``), so a parameter's name is its PyTorch key. The
mapping is therefore driven by the model's own parameter tree (:func:`expected_state_shapes`) and a
short declarative rule table:

* :data:`WRAPPER_PREFIXES`: prefixes that training wrappers put in front of every key, stripped when
  every key carries one (``module.`` from ``DataParallel`` / ``DistributedDataParallel``,
  ``_orig_mod.`` from ``torch.compile``);
* :data:`RENAMES`: PyTorch-name -> parameter-name rewrites of key segments. Empty, because the names
  are identical; it is kept so that a port with other names only changes this table;
* :data:`FLOAT_DTYPES`: floating tensors of any width become float32, the dtype of every parameter.

The stem of an exit is told by its parameters' prefix, which its spec type supplies
(:attr:`dvt_ms.models.stems.Stem.attribute`: ``patch_embed``, ``tokens_to_token``).

The mapping is strict: every parameter is filled exactly once and every source tensor is used, or
:class:`MappingError` lists the missing, unexpected, duplicated and mis-shaped names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..checkpoint import StateMismatch, compare_shapes
from .errors import ConvertError

__all__ = [
    "FLOAT_DTYPES",
    "GENERIC_MODELS",
    "RENAMES",
    "WRAPPER_PREFIXES",
    "Identified",
    "MappingError",
    "Rename",
    "describe_layout",
    "expected_state_shapes",
    "identify_model",
    "infer_num_classes",
    "map_state_dict",
    "strip_wrapper_prefixes",
    "to_torch_state_dict",
]


@dataclass(frozen=True)
class Rename:
    """Rewrite the key segment ``torch`` (a dot-separated run of names) into ``mindspore``."""

    torch: str
    mindspore: str


WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
RENAMES: tuple[Rename, ...] = ()  # parameter names equal the official PyTorch keys
FLOAT_DTYPES = (np.float16, np.float32, np.float64)  # all become float32
GENERIC_MODELS = ("dvt_vit", "dvt_t2t_vit")  # any-grid entrypoints: never chosen when a named model fits


class MappingError(ConvertError):
    """A state dict that does not fit the model; ``mismatch`` holds the names at fault."""

    def __init__(self, message: str, mismatch: StateMismatch) -> None:
        super().__init__(message)
        self.mismatch = mismatch


def strip_wrapper_prefixes(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Remove :data:`WRAPPER_PREFIXES` that every key carries (repeatedly, e.g. ``module._orig_mod.``).

    Returns the renamed state and the prefixes removed, in order.
    """
    out, removed = dict(state), []
    changed = True
    while changed and out:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                removed.append(prefix)
                changed = True
    return out, removed


def _rewrite(name: str, renames: Sequence[Rename], reverse: bool) -> str:
    for rule in renames:
        old, new = (rule.mindspore, rule.torch) if reverse else (rule.torch, rule.mindspore)
        name = re.sub(rf"(^|\.){re.escape(old)}(?=\.|$)", lambda m, new=new: m.group(1) + new, name)
    return name


def _renamed(state: Mapping[str, np.ndarray], renames: Sequence[Rename],
             mismatch: StateMismatch) -> dict[str, tuple[str, np.ndarray]]:
    """target name -> (source name, array); a target reached twice is reported as unexpected."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    for name, value in state.items():
        target = _rewrite(name, renames, reverse=False)
        if target in out:
            mismatch.unexpected.append(f"{name} (duplicate of {out[target][0]})")
            continue
        out[target] = (name, value)
    return out


def _check(state: Mapping[str, np.ndarray], expected: Mapping[str, Sequence[int]], renames: Sequence[Rename],
           what: str) -> dict[str, np.ndarray]:
    """Rename, compare with ``expected`` strictly, cast to float32; returns ``expected``'s keys in order."""
    duplicates = StateMismatch()
    renamed = _renamed(state, renames, duplicates)
    mismatch = compare_shapes({k: np.shape(v) for k, (_, v) in renamed.items()}, expected)
    mismatch.unexpected = [renamed[k][0] for k in mismatch.unexpected] + duplicates.unexpected
    for target in expected:
        if target in renamed and np.asarray(renamed[target][1]).dtype.type not in FLOAT_DTYPES:
            mismatch.bad_dtype.append((renamed[target][0], str(np.asarray(renamed[target][1]).dtype)))
    if not mismatch.ok:
        raise MappingError(f"{what}: {mismatch.describe()}", mismatch)
    return {target: np.asarray(renamed[target][1], dtype=np.float32) for target in expected}


def map_state_dict(state: Mapping[str, np.ndarray], expected: Mapping[str, Sequence[int]],
                   renames: Sequence[Rename] = RENAMES) -> dict[str, np.ndarray]:
    """PyTorch state dict -> parameter dict of a model whose parameter shapes are ``expected``.

    Wrapper prefixes are stripped, :data:`RENAMES` applied, floating tensors cast to float32. The
    result has exactly the keys of ``expected``, in its order; any difference raises
    :class:`MappingError`. Pure: the input is not modified and nothing is read or written.
    """
    stripped, _ = strip_wrapper_prefixes(state)
    return _check(stripped, expected, renames, what="the state dict does not fit the model")


def to_torch_state_dict(params: Mapping[str, np.ndarray], expected: Mapping[str, Sequence[int]],
                        renames: Sequence[Rename] = RENAMES) -> dict[str, np.ndarray]:
    """Parameter dict -> PyTorch state dict (official key names), checked as strictly as
    :func:`map_state_dict`. ``expected`` is the model's parameter shapes."""
    checked = _check(params, expected, (), what="the checkpoint does not fit the model")
    return {_rewrite(name, renames, reverse=True): value for name, value in checked.items()}


# ---- expected shapes and model identification ---------------------------------------------------

@functools.lru_cache(maxsize=4)
def expected_state_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the dvt_ms model built from ``spec`` (a ``CascadeSpec``), in order.

    The model is built once per spec (about a second for the published sizes) so that the list comes
    from the cells themselves.
    """
    from ..models import DVTCascade

    model = DVTCascade(spec)
    return {name: tuple(int(s) for s in p.shape) for name, p in model.parameters_dict().items()}


def infer_num_classes(shapes: Mapping[str, Sequence[int]], exit_name: str) -> int | None:
    """Classes of the head of exit ``exit_name`` (rows of ``<exit>.head.weight``), if present."""
    shape = shapes.get(f"{exit_name}.head.weight")
    return int(shape[0]) if shape is not None and len(shape) == 2 else None


def _plausible(spec, shapes: Mapping[str, Sequence[int]]) -> bool:
    """Cheap necessary conditions for ``spec`` to fit ``shapes`` (exit names, widths, depths, stems)."""
    prefixes = {k.split(".", 1)[0] for k in shapes}
    if prefixes != set(spec.exit_names):
        return False
    for name, e in zip(spec.exit_names, spec.exits, strict=True):
        if tuple(shapes.get(f"{name}.cls_token", ())) != (1, 1, e.embed_dim):
            return False
        blocks = {k.split(".")[2] for k in shapes if k.startswith(f"{name}.blocks.")}
        if len(blocks) != e.depth:
            return False
        if not any(k.startswith(f"{name}.{e.stem.attribute}.") for k in shapes):
            return False
    return True


@dataclass(frozen=True)
class Identified:
    """A registered model that fits a state dict: its name, the arguments that differ from the
    model's defaults (``num_classes`` only) and its spec."""

    name: str
    overrides: dict
    spec: object


def identify_model(shapes: Mapping[str, Sequence[int]]) -> Identified:
    """The registered model whose parameters are exactly ``shapes`` (name -> shape, prefixes stripped).

    Every registered model but the generic ones is tried with the number of classes read from the
    last exit's head. Raises :class:`ConvertError` when none or several fit.
    """
    from ..models import list_models, spec_for

    fits, near = [], []
    for name in list_models():
        if name in GENERIC_MODELS:
            continue
        spec = spec_for(name)
        classes = infer_num_classes(shapes, spec.exit_names[-1])
        overrides = {"num_classes": classes} if classes and classes != spec.num_classes else {}
        spec = spec_for(name, **overrides) if overrides else spec
        if not _plausible(spec, shapes):
            continue
        mismatch = compare_shapes(shapes, expected_state_shapes(spec))
        if mismatch.ok:
            fits.append(Identified(name, overrides, spec))
        else:
            near.append(f"{name}: {mismatch.describe(limit=4)}")
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise ConvertError(f"the checkpoint keys fit several models ({', '.join(f.name for f in fits)}): "
                           "choose one with --model")
    detail = f" Closest: {' | '.join(near)}." if near else ""
    raise ConvertError("cannot tell the model from the checkpoint keys: no registered model "
                       f"({', '.join(n for n in list_models() if n not in GENERIC_MODELS)}) has exactly these "
                       f"parameters (the checkpoint has {describe_layout(shapes)}).{detail} Pass --model NAME, "
                       "with -c CONFIG or model flags for non-default settings.")


def describe_layout(shapes: Mapping[str, Sequence[int]]) -> str:
    """A short description of a DVT-like state dict: per exit prefix, width, depth and stem."""
    from ..models.stems import STEM_TYPES

    parts = []
    for prefix in dict.fromkeys(k.split(".", 1)[0] for k in shapes):
        cls = shapes.get(f"{prefix}.cls_token")
        blocks = {k.split(".")[2] for k in shapes if k.startswith(f"{prefix}.blocks.")}
        stem = next((t.label for t in STEM_TYPES if any(k.startswith(f"{prefix}.{t.attribute}.") for k in shapes)),
                    "no stem")
        width = f"width {cls[-1]}" if cls is not None and len(cls) == 3 else "no cls_token"
        parts.append(f"{prefix}: {width}, {len(blocks)} blocks, {stem}")
    if len(parts) > 4:
        parts = [*parts[:4], f"and {len(parts) - 4} more prefixes"]
    return "; ".join(parts) or "no tensors"

