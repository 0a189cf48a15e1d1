"""Serving DVT: per-exit MindIR export (``dvt-export``), prediction on a user's own images (``dvt-predict``) and
an HTTP server (``dvt-serve``).

* :mod:`~dvt_ms.serve.errors`: :class:`ServeError`, :class:`ManifestError` and the other error types;
* :mod:`~dvt_ms.serve.manifest`: ``manifest.json`` of an export folder, written and verified;
* :mod:`~dvt_ms.serve.graphs`: the cell exported per exit and :class:`ExportedStages`, the early-exit
  engine's stages loaded back from the MindIR files;
* :mod:`~dvt_ms.serve.onnx_runtime`: ONNX Runtime (the extra's check, sessions, the stages of the ONNX files);
  :mod:`~dvt_ms.serve.onnx_export` writes those files from the PyTorch reference made ready for export
  (:mod:`~dvt_ms.serve.torch_export`);
* :mod:`~dvt_ms.serve.predictor`: the engine made ready to predict from an export or a checkpoint, and the
  per-image record both dvt-predict and dvt-serve give;
* :mod:`~dvt_ms.serve.batcher`: the serving worker thread, with exit-aware rebatching across requests;
  :mod:`~dvt_ms.serve.app` (the HTTP application) and :mod:`~dvt_ms.serve.metrics` need the ``serve`` extra;
* :mod:`~dvt_ms.serve.ray_app`: ``dvt-serve --backend ray``, each exit a Ray Serve deployment with replicas of its
  own, and ``build_app`` for ``serve run``; needs the ``ray`` extra;
* :mod:`~dvt_ms.serve.export` / :mod:`~dvt_ms.serve.predict` / :mod:`~dvt_ms.serve.server`: the three commands,
  and their library functions ``export(ExportSettings)``, ``predict(PredictSettings)`` and
  ``serve(ServeSettings)``.

Importing this package loads nothing else; the names below load their modules on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {"ExportedStages": "graphs", "Manifest": "manifest", "ManifestError": "errors", "ServeError": "errors",
         "read_manifest": "manifest"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
