"""MindSpore checkpoint I/O for dvt_ms models: strict loading, atomic saving, embedded metadata.

Two file formats, chosen by the file name:

* ``.ckpt``: MindSpore's own format (``mindspore.save_checkpoint``). Metadata is a JSON string stored
  next to the tensors under :data:`METADATA_KEY`.
* ``.safetensors``: the safetensors format (readable by ``mindspore.load_checkpoint(...,
  format="safetensors")`` and by PyTorch users). Metadata is a JSON string in the file header under
  :data:`SAFETENSORS_METADATA_KEY`.

Metadata is a JSON-serialisable dict: for converted checkpoints the model name and arguments, the
number of classes, the source file and its sha256, and the official evaluation fields (``flops``,
``anytime_classification``, ``dynamic_threshold``, ``budgeted_batch_classification``).

Every writer goes through :func:`dvt_ms.files.atomic_output`: the file appears complete under its final
name or not at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .files import atomic_output, require_file

__all__ = [
    "METADATA_KEY",
    "SAFETENSORS_METADATA_KEY",
    "CheckpointError",
    "LoadResult",
    "StateMismatch",
    "checkpoint_format",
    "compare_shapes",
    "load_checkpoint",
    "read_checkpoint",
    "read_metadata",
    "save_checkpoint",
]

METADATA_KEY = "__dvt_ms_metadata__"
SAFETENSORS_METADATA_KEY = "dvt_ms"
FORMATS = {".ckpt": "ckpt", ".safetensors": "safetensors"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, written or loaded; the message names the file and the problem."""


# ---- comparing a state against a model ------------------------------------------------------------

def _name_list(names: Sequence[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class StateMismatch:
    """How a set of named tensors differs from what a model expects.

    ``mis_shaped`` holds ``(name, found shape, expected shape)``; ``bad_dtype`` holds ``(name, dtype)``
    for tensors that are not floating point where the model wants floats.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mis_shaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    bad_dtype: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mis_shaped or self.bad_dtype)

    def describe(self, found: str = "checkpoint", expected: str = "model", limit: int = 12) -> str:
        """One sentence listing every kind of difference (at most ``limit`` names of each kind)."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the {found} ({_name_list(self.missing, limit)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected in the {found}, not in the {expected} "
                         f"({_name_list(self.unexpected, limit)})")
        if self.mis_shaped:
            shown = [f"{n}: {found} {list(a)} vs {expected} {list(b)}" for n, a, b in self.mis_shaped[:limit]]
            more = f" and {len(self.mis_shaped) - limit} more" if len(self.mis_shaped) > limit else ""
            parts.append(f"{len(self.mis_shaped)} mis-shaped ({'; '.join(shown)}{more})")
        if self.bad_dtype:
            shown = [f"{n}: {d}" for n, d in self.bad_dtype[:limit]]
            parts.append(f"{len(self.bad_dtype)} not floating point ({', '.join(shown)})")
        return "; ".join(parts) if parts else "no difference"


def compare_shapes(found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]]) -> StateMismatch:
    """Compare name -> shape maps: missing names in ``expected`` order, unexpected in ``found`` order."""
    result = StateMismatch()
    for name, shape in expected.items():
        if name not in found:
            result.missing.append(name)
        elif tuple(found[name]) != tuple(shape):
            result.mis_shaped.append((name, tuple(int(s) for s in found[name]), tuple(int(s) for s in shape)))
    result.unexpected = [name for name in found if name not in expected]
    return result


# ---- files ----------------------------------------------------------------------------------------

def checkpoint_format(path: str | os.PathLike) -> str:
    """``"ckpt"`` or ``"safetensors"`` from the file name; any other suffix is an error."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FORMATS:
        raise CheckpointError(f"{os.fspath(path)}: a MindSpore checkpoint must end in .ckpt or .safetensors "
                              f"(got {suffix or 'no suffix'})")
    return FORMATS[suffix]


def _to_numpy(value: Any) -> np.ndarray:
    """A MindSpore Parameter/Tensor or array as a numpy array (bfloat16 widened to float32)."""
    if isinstance(value, np.ndarray):
        return value
    import mindspore as ms

    if value.dtype == ms.bfloat16:
        value = value.astype(ms.float32)
    return value.asnumpy()


def _parse_metadata(text: str, path: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the embedded dvt_ms metadata is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the embedded dvt_ms metadata must be a JSON object, got {type(data).__name__}")
    return data


def _load_ms_ckpt(path: str, choice_func=None) -> dict[str, Any]:
    import mindspore as ms

    try:
        return ms.load_checkpoint(path, choice_func=choice_func)
    except (ValueError, RuntimeError, TypeError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable MindSpore checkpoint (truncated or corrupt?): {err}") from None


def _open_safetensors(path: str):
    from safetensors import safe_open

    try:
        return safe_open(path, framework="np")
    except Exception as err:  # the safetensors error type differs between versions
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict | None]:
    """All tensors of a ``.ckpt`` / ``.safetensors`` file as numpy arrays (file order), and its metadata."""
    path = os.fspath(path)
    require_file(path, "checkpoint", CheckpointError)
    fmt = checkpoint_format(path)
    arrays: dict[str, np.ndarray] = {}
    metadata = None
    if fmt == "ckpt":
        for name, value in _load_ms_ckpt(path).items():
            if name == METADATA_KEY:
                metadata = _parse_metadata(value, path)
            elif hasattr(value, "asnumpy"):
                arrays[name] = _to_numpy(value)
        return arrays, metadata
    with _open_safetensors(path) as f:
        header = f.metadata() or {}
        try:
            for name in f.keys():
                arrays[name] = f.get_tensor(name)
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read tensor data (truncated or corrupt?): {err}") from None
    if SAFETENSORS_METADATA_KEY in header:
        metadata = _parse_metadata(header[SAFETENSORS_METADATA_KEY], path)
    return arrays, metadata


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The dvt_ms metadata embedded in a checkpoint, or ``None`` when it has none."""
    path = os.fspath(path)
    require_file(path, "checkpoint", CheckpointError)
    if checkpoint_format(path) == "safetensors":
        with _open_safetensors(path) as f:
            header = f.metadata() or {}
        text = header.get(SAFETENSORS_METADATA_KEY)
        return None if text is None else _parse_metadata(text, path)
    first: list[str] = []

    def choose(name: str) -> bool:
        # Besides the metadata keep one tensor, so that a file without metadata is not an "empty" load.
        if name == METADATA_KEY:
            return True
        if not first:
            first.append(name)
            return True
        return False

    loaded = _load_ms_ckpt(path, choice_func=choose)
    text = loaded.get(METADATA_KEY)
    return None if text is None else _parse_metadata(text, path)


# ---- loading into a model -------------------------------------------------------------------------

@dataclass
class LoadResult:
    """What :func:`load_checkpoint` did: names left untouched / ignored (empty when strict) and metadata."""

    missing: list[str]
    unexpected: list[str]
    metadata: dict | None


def _model_label(model: Any) -> str:
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "exit_names"):
        return f"{type(model).__name__} (exits {', '.join(spec.exit_names)}, {spec.num_classes} classes)"
    return type(model).__name__


def load_checkpoint(model: Any, path: str | os.PathLike, strict: bool = True) -> LoadResult:
    """Load a ``.ckpt`` / ``.safetensors`` file into ``model`` (a MindSpore ``Cell``) by parameter name.

    With ``strict`` every model parameter must be in the file and every tensor of the file must be a
    model parameter; otherwise :class:`CheckpointError` lists the missing, unexpected and mis-shaped
    names. Without ``strict`` missing and unexpected names are returned instead. Shapes must always
    match. Nothing is loaded unless all checks pass.
    """
    import mindspore as ms

    path = os.fspath(path)
    arrays, metadata = read_checkpoint(path)
    params = model.parameters_dict()
    mismatch = compare_shapes({k: v.shape for k, v in arrays.items()}, {k: p.shape for k, p in params.items()})
    if mismatch.mis_shaped or (strict and not mismatch.ok):
        raise CheckpointError(f"{path} does not fit {_model_label(model)}: {mismatch.describe()}. "
                              "Nothing was loaded.")
    for name, param in params.items():
        if name in arrays:
            param.set_data(ms.Tensor(np.asarray(arrays[name], order="C"), dtype=param.dtype))
    return LoadResult(mismatch.missing, mismatch.unexpected, metadata)


# ---- saving ---------------------------------------------------------------------------------------

def _named_arrays(source: Any) -> dict[str, Any]:
    if hasattr(source, "parameters_dict"):
        return dict(source.parameters_dict())
    if isinstance(source, Mapping):
        return dict(source)
    raise CheckpointError("save_checkpoint needs a MindSpore Cell or a dict of name -> tensor, "
                          f"got {type(source).__name__}")


def save_checkpoint(model_or_params: Any, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> str:
    """Write a model's parameters (or a dict name -> Parameter/Tensor/ndarray) to ``path`` atomically.

    The format follows the suffix (``.ckpt`` or ``.safetensors``); ``metadata`` (JSON-serialisable)
    is embedded and comes back from :func:`read_metadata`. Returns ``path``.
    """
    import mindspore as ms

    path = os.fspath(path)
    fmt = checkpoint_format(path)
    named = _named_arrays(model_or_params)
    text = None
    if metadata is not None:
        try:
            text = json.dumps(dict(metadata))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"cannot write {path}: metadata is not JSON-serialisable ({err})") from None
    with atomic_output(path, CheckpointError) as tmp:
        if fmt == "ckpt":
            entries = [{"name": name, "data": value if isinstance(value, ms.Tensor) else ms.Tensor(np.asarray(value))}
                       for name, value in named.items()]
            try:
                ms.save_checkpoint(entries, tmp, append_dict={METADATA_KEY: text} if text is not None else None)
            except (ValueError, RuntimeError, TypeError, OSError) as err:
                raise CheckpointError(f"cannot write {path}: {err}") from None
        else:
            from safetensors.numpy import save_file

            arrays = {name: np.asarray(_to_numpy(value), order="C") for name, value in named.items()}
            header = {SAFETENSORS_METADATA_KEY: text} if text is not None else None
            try:
                save_file(arrays, tmp, metadata=header)
            except Exception as err:  # the safetensors error type differs between versions
                raise CheckpointError(f"cannot write {path}: {err}") from None
    return path
