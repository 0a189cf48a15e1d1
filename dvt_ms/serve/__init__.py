"""Serving DVT: per-exit MindIR export (``dvt-export``) and prediction on a user's own images (``dvt-predict``).

* :mod:`~dvt_ms.serve.manifest`: ``manifest.json`` of an export folder, written and verified;
* :mod:`~dvt_ms.serve.graphs`: the cell exported per exit and :class:`ExportedStages`, the early-exit
  engine's stages loaded back from the MindIR files;
* :mod:`~dvt_ms.serve.export` / :mod:`~dvt_ms.serve.predict`: the two commands.
"""

from .graphs import ExportedStages
from .manifest import Manifest, ManifestError, read_manifest

__all__ = ["ExportedStages", "Manifest", "ManifestError", "read_manifest"]
