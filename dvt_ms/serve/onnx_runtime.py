"""ONNX Runtime for serving: the check that the ``onnx`` extra is installed (:func:`require_onnx`), sessions
with this project's settings (:func:`session`) and the early-exit engine's stages from the ONNX files of an
export (:class:`OnnxStages`). The exporter (:mod:`~dvt_ms.serve.onnx_export`) uses the first two; this module
imports nothing of it.

:class:`OnnxStages` is a :class:`~dvt_ms.models.stages.StageSource` like
:class:`~dvt_ms.serve.graphs.ExportedStages`: one ONNX Runtime session per exit, called with the inputs its
manifest lists, so the engine, thresholds and outputs are the same whichever runtime runs the graphs.
Sessions are set up for CPU speed: every graph optimisation, one intra-op thread per core, sequential
execution; ``provider`` picks the execution provider (``CPUExecutionProvider``, ``CUDAExecutionProvider``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ..models.stages import StageSource
from .errors import OnnxUnavailable, ServeError
from .manifest import Manifest

__all__ = ["OnnxStages", "require_onnx", "session"]

PIP = 'pip install -e ".[onnx]"  (or: pip install onnx onnxruntime torch)'


def require_onnx(runtime_only: bool = False) -> None:
    """Raise :class:`~dvt_ms.serve.errors.OnnxUnavailable` with the pip command unless onnxruntime (and, for
    exporting, onnx and torch) can be imported."""
    import importlib.util

    needed = ("onnxruntime",) if runtime_only else ("onnx", "onnxruntime", "torch")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        what = "running ONNX exports" if runtime_only else "--format onnx"
        raise OnnxUnavailable(f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                              f"not installed: {PIP}")


def session(path: str, provider: str = "CPUExecutionProvider", threads: int | None = None):
    """An ONNX Runtime inference session over ``path``, tuned for latency on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    # each exit is its own session with its own thread pool: spinning pools would hold the cores the next exit's
    # session and the engine's host code between exits need (batch-1 early exit ran at half speed on 2 cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=options, providers=[provider])


class OnnxStages(StageSource):
    """Stages of a verified export folder (``read_manifest``) from its ONNX files: a
    :class:`~dvt_ms.models.stages.StageSource`, each exit one session fed the inputs its manifest lists."""

    dynamic_only = True

    def __init__(self, manifest: Manifest, provider: str = "CPUExecutionProvider") -> None:
        import mindspore as ms

        require_onnx(runtime_only=True)
        import onnxruntime as ort

        available = ort.get_available_providers()
        if provider not in available:
            raise ServeError(f"--execution_provider {provider} is not available in this onnxruntime "
                             f"(available: {', '.join(available)})")
        self._tensor = ms.Tensor.from_numpy
        self.manifest = manifest
        self.num_exits = manifest.num_exits
        self.image_shape = (manifest.in_chans, manifest.img_size, manifest.img_size)
        self._sessions = [session(os.path.join(manifest.directory, e.onnx_file), provider) for e in manifest.exits]

    def input_names(self, k: int) -> list[str]:
        return self.manifest.exits[k].input_names

    def build_stage(self, k: int, static: bool) -> Callable:
        run_session, names, pick = self._sessions[k].run, self.input_names(k), self.arguments(k)
        as_tensor = self._tensor

        def run(images, features=None, relations=None):
            feed = dict(zip(names, map(_host, pick(images, features, relations)), strict=True))
            return tuple(as_tensor(out) for out in run_session(None, feed))

        return run


def _host(value) -> np.ndarray:
    """A MindSpore tensor or an array as a C-contiguous float32 numpy array."""
    array = value.asnumpy() if hasattr(value, "asnumpy") else value
    return np.ascontiguousarray(array, dtype=np.float32)
