"""Reading and writing PyTorch checkpoints without trusting them.

``.pth`` / ``.pth.tar`` / ``.pt`` files are opened with ``torch.load(..., weights_only=True)``: the
unpickler only builds tensors, plain containers and numbers (numpy scalars and arrays of numbers are
allowed too, as older training scripts stored metrics that way); anything else, such as a
``__reduce__`` that would call a function, is refused before it runs. ``.safetensors`` files hold
tensors only and are read with the ``safetensors`` package.

The state dict is found in ``model_state_dict`` (the official DVT files), ``state_dict``, ``model``,
``state_dict_ema`` (T2T-ViT releases) or is the file itself. The official evaluation fields
(:data:`METADATA_FIELDS`) are kept as JSON values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checkpoint import SAFETENSORS_METADATA_KEY
from ..files import FileError, atomic_output, require_file
from .errors import ConvertError

__all__ = [
    "CONTAINER_KEYS",
    "DVT_INFO_KEY",
    "METADATA_FIELDS",
    "SourceCheckpoint",
    "find_state_dict",
    "json_value",
    "read_source",
    "read_torch_object",
    "sha256_file",
    "write_torch_checkpoint",
]

CONTAINER_KEYS = ("model_state_dict", "state_dict", "model", "state_dict_ema")
METADATA_FIELDS = ("flops", "anytime_classification", "dynamic_threshold", "budgeted_batch_classification")
DVT_INFO_KEY = "dvt_ms"  # model name and arguments, written by ``--to-torch`` so the file converts back alone


@dataclass
class SourceCheckpoint:
    """A source checkpoint read safely.

    ``state``: name -> numpy array, file order (bfloat16 widened to float32, other dtypes as stored).
    ``fields``: the official metadata fields found, as JSON values; ``tensor_fields`` the dtype of those
    that were tensors. ``info``: the ``dvt_ms`` entry (model name and arguments) if present.
    ``ignored``: other top-level keys, which are not converted.
    """

    path: str
    sha256: str
    container: str
    state: dict[str, np.ndarray]
    fields: dict[str, Any] = field(default_factory=dict)
    tensor_fields: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] | None = None
    ignored: list[str] = field(default_factory=list)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ConvertError("reading or writing PyTorch checkpoints needs PyTorch: pip install torch") from None
    return torch


def _numpy_globals() -> list:
    """numpy objects a weights-only unpickler may build: scalars and arrays of plain dtypes."""
    multiarray = np.core.multiarray
    allowed: list = [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype,
                     (multiarray.scalar, "numpy._core.multiarray.scalar"),
                     (multiarray._reconstruct, "numpy._core.multiarray._reconstruct")]
    for name in ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                 "float16", "float32", "float64"):
        allowed.append(type(np.dtype(name)))
    return allowed


def _check_file(path: str) -> None:
    require_file(path, "source checkpoint", ConvertError, allow_empty=False)


def read_torch_object(path: str | os.PathLike) -> Any:
    """Unpickle a PyTorch file with the weights-only unpickler; refuse anything that is not data."""
    path = os.fspath(path)
    _check_file(path)
    torch = _import_torch()
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; older ones refuse numpy values
    try:
        with warnings.catch_warnings(), (allow(_numpy_globals()) if allow else contextlib.nullcontext()):
            warnings.simplefilter("ignore", UserWarning)  # torch's note on the pickle protocol of the file
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "Unsupported" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.<>]+)", text)
            opcode = re.search(r"Unsupported operand (\d+)", text)
            what = (f" (it needs {found.group(1)})" if found
                    else f" (pickle opcode {opcode.group(1)}, not written by torch.save)" if opcode else "")
            raise ConvertError(
                f"refusing to load {path}: the weights-only unpickler met something other than tensors, numbers "
                f"and plain containers{what}. Unpickling it could run code from the file, so it was not loaded; "
                "re-save the weights alone from a trusted environment (torch.save(model.state_dict(), ...)).") from None
        raise ConvertError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {text}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, IndexError, KeyError) as err:
        reason = str(err).split(". ")[0] or type(err).__name__
        raise ConvertError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from None


def json_value(value: Any, where: str) -> Any:
    """A metadata value (tensor, numpy, list, dict, number, string) as a JSON value; ``where`` names it."""
    torch = _import_torch() if type(value).__module__.startswith("torch") else None
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).tolist()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConvertError(f"{where}: cannot keep a {type(value).__name__} as metadata")


def _tensor_to_numpy(name: str, value: Any, path: str) -> np.ndarray:
    torch = _import_torch()
    if not isinstance(value, torch.Tensor):
        raise ConvertError(f"{path}: state dict entry {name!r} is a {type(value).__name__}, not a tensor")
    if value.is_sparse or value.is_quantized or value.is_complex():
        raise ConvertError(f"{path}: state dict entry {name!r} is a {value.dtype} / {value.layout} tensor; "
                           "only dense real tensors can be converted")
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()  # numpy has no bfloat16; widening is exact
    return value.contiguous().numpy()


def find_state_dict(obj: Any, path: str) -> tuple[Mapping, str]:
    """The state dict inside an unpickled checkpoint and the name of its container (``"bare"`` if none)."""
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a dict: expected a state dict or a dict "
                           f"with one of {', '.join(CONTAINER_KEYS)}")
    for key in CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            return obj[key], key
    torch = _import_torch()
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, "bare"
    keys = ", ".join(repr(k) for k in list(obj)[:12]) or "none"
    raise ConvertError(f"{path}: no state dict found: expected a dict with one of {', '.join(CONTAINER_KEYS)} "
                       f"or a flat dict of name -> tensor; its top-level keys are {keys}")


def _read_safetensors(path: str) -> SourceCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            header = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # the safetensors error type differs between versions
        raise ConvertError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None
    source = SourceCheckpoint(path, sha256_file(path), "safetensors", state)
    if SAFETENSORS_METADATA_KEY in header:
        try:
            meta = json.loads(header[SAFETENSORS_METADATA_KEY])
        except json.JSONDecodeError as err:
            raise ConvertError(f"{path}: the dvt_ms header entry is not valid JSON ({err})") from None
        source.fields = {k: meta[k] for k in METADATA_FIELDS if k in meta}
        source.tensor_fields = dict(meta.get("tensor_fields", {}))
        if meta.get("model"):
            source.info = {"model": meta["model"], "model_args": meta.get("model_args", {})}
    return source


def read_source(path: str | os.PathLike) -> SourceCheckpoint:
    """Read a PyTorch (``.pth``, ``.pth.tar``, ``.pt``, ``.bin``) or ``.safetensors`` checkpoint safely."""
    path = os.fspath(path)
    _check_file(path)
    if path.lower().endswith(".safetensors"):
        return _read_safetensors(path)
    obj = read_torch_object(path)
    state, container = find_state_dict(obj, path)
    arrays = {str(name): _tensor_to_numpy(str(name), value, path) for name, value in state.items()}
    if not arrays:
        raise ConvertError(f"{path}: the state dict ({container}) is empty")
    source = SourceCheckpoint(path, sha256_file(path), container, arrays)
    if container == "bare":
        return source
    torch = _import_torch()
    for key, value in obj.items():
        if key == container:
            continue
        if key in METADATA_FIELDS:
            source.fields[key] = json_value(value, f"{path}: {key}")
            if isinstance(value, torch.Tensor):
                source.tensor_fields[key] = str(value.dtype).replace("torch.", "")
        elif key == DVT_INFO_KEY and isinstance(value, Mapping):
            source.info = json_value(value, f"{path}: {key}")
        else:
            source.ignored.append(str(key))
    return source


def _torch_payload(state: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The official layout: ``model_state_dict``, the metadata fields (tensors as tensors), ``dvt_ms``."""
    torch = _import_torch()
    tensors = OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in state.items())
    payload: dict[str, Any] = {"model_state_dict": tensors}
    dtypes = metadata.get("tensor_fields", {})
    for key in METADATA_FIELDS:
        if key in metadata:
            value = metadata[key]
            payload[key] = torch.tensor(value, dtype=getattr(torch, dtypes[key])) if key in dtypes else value
    if metadata.get("model"):
        payload[DVT_INFO_KEY] = {"model": metadata["model"], "model_args": metadata.get("model_args", {})}
    return payload


def write_torch_checkpoint(state: Mapping[str, np.ndarray], path: str | os.PathLike,
                           metadata: Mapping[str, Any] | None = None) -> str:
    """Write a state dict for PyTorch users, atomically.

    ``.safetensors``: the bare state dict, metadata as JSON in the header. Any other name: a
    ``torch.save`` file in the official DVT layout (``model_state_dict`` plus the metadata fields, with
    tensors restored as tensors) and a ``dvt_ms`` entry naming the model. Returns ``path``.
    """
    path = os.fspath(path)
    metadata = dict(metadata or {})
    try:
        with atomic_output(path) as tmp:
            if path.lower().endswith(".safetensors"):
                from safetensors.numpy import save_file

                header = {SAFETENSORS_METADATA_KEY: json.dumps(metadata)} if metadata else None
                save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp, metadata=header)
            else:
                _import_torch().save(_torch_payload(state, metadata), tmp)
    except FileError as err:
        raise ConvertError(str(err)) from None
    return path
