"""``dvt-export`` (``python -m dvt_ms export``): a checkpoint -> one graph per exit + ``manifest.json``.

    dvt-export --ckpt demo/dvt_digits_demo.ckpt -c configs/dvt_digits_demo.yaml --output_dir outputs/export
    dvt-export --ckpt X.ckpt --output_dir DIR --budget 1.5 --class_names classes.txt --format both

``--format mindir`` (default) writes MindIR for MindSpore and MindSpore Lite, ``onnx`` ONNX for ONNX Runtime
and other ONNX runtimes (:mod:`dvt_ms.serve.onnx_export`; needs ``pip install -e ".[onnx]"``), ``both``
both.
Each exit's graph takes the images and, where the exit reuses them, the previous exit's features and
relations, with a dynamic batch dimension; ``dvt-predict --exported DIR`` runs them with real early
exit. The folder is written atomically: it appears complete or not at all (an earlier export in
its place is replaced only when the new one is complete).
Exit status: 0 on success, 1 when the export cannot run (the message says why), 2 for bad usage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from ..checkpoint import CheckpointError
from ..command import run_command
from ..data import DataError
from ..data.transforms import EvalTransform
from ..device import DeviceError, select_device
from ..files import atomic_directory, usual_mode
from ..flops import cumulative_gflops
from ..inference.operating_point import OperatingPoint, ThresholdError
from ..options import ExportSettings, parse_command
from .checkpoint_model import ServedCheckpoint
from .errors import ServeError
from .graphs import export_graph
from .manifest import MANIFEST_NAME, ExportedExit, Manifest, sha256_of, write_manifest
from .onnx_export import OPSET, export_onnx_exits
from .onnx_runtime import require_onnx

__all__ = ["export", "export_model", "main"]

PROG = "dvt-export"


def export_model(model, output_dir: str, *, model_name: str, model_args: dict[str, Any], point: OperatingPoint,
                 transform: EvalTransform, class_names: Sequence[str] | None = None,
                 metadata: dict | None = None, formats: Sequence[str] = ("mindir",)) -> Manifest:
    """Export every exit of ``model`` (a :class:`~dvt_ms.models.DVTCascade` with its weights) to
    ``output_dir`` in ``formats`` (``mindir``, ``onnx`` or both) with a manifest; returns the manifest.
    ``metadata`` (the checkpoint's) contributes the calibrated table and curve the thresholds came from."""
    import mindspore as ms

    from .. import __version__

    formats = [f for f in ("mindir", "onnx") if f in formats]
    if not formats:
        raise ServeError("nothing to export: formats must name mindir and/or onnx")
    model.set_train(False)
    spec, cumulative = model.spec, cumulative_gflops(model.spec)
    stems = [f"exit_{k + 1}_{name}" for k, name in enumerate(spec.exit_names)]
    with atomic_directory(output_dir, MANIFEST_NAME) as staging:
        mindir = [_export_mindir(model, k, staging, stem) for k, stem in enumerate(stems)] \
            if "mindir" in formats else [None] * len(stems)
        onnx = export_onnx_exits(model, staging, stems) if "onnx" in formats else [None] * len(stems)
        exits = []
        for k, name in enumerate(spec.exit_names):
            features, relations = model.needs_state(k)
            outputs = ["logits", "tokens"] + (["relations"] if model.exit(k).emit_relations else [])
            exits.append(ExportedExit(
                name, spec.exits[k].grid(spec.img_size), mindir[k], _sha(staging, mindir[k]),
                [{"name": n, "shape": s} for n, s in model.stage_inputs(k)], outputs, features, relations,
                cumulative[k], onnx[k], _sha(staging, onnx[k])))
        metadata = metadata or {}
        manifest = Manifest(
            model=model_name, model_args=dict(model_args), num_classes=spec.num_classes, img_size=spec.img_size,
            in_chans=spec.in_chans, exits=exits, thresholds=[float(t) for t in point.thresholds],
            thresholds_chosen_by=point.chosen_by, preprocessing=transform.describe(),
            mindspore_version=ms.__version__, dvt_ms_version=__version__,
            class_names=list(class_names) if class_names is not None else None,
            dynamic_threshold=metadata.get("dynamic_threshold"),
            budgeted_batch_classification=metadata.get("budgeted_batch_classification"),
            formats=formats, onnx_opset=OPSET if "onnx" in formats else None)
        write_manifest(manifest, staging)
    manifest.directory = os.path.abspath(output_dir)
    return manifest


def _export_mindir(model, k: int, directory: str, stem: str) -> str:
    """Exit ``k`` as ``directory/stem.mindir`` (a dynamic batch); returns the file name."""
    import mindspore as ms

    from .. import interrupts, kernels

    interrupts.check()  # Ctrl-C: stop between exits (the export folder is only written whole)
    with kernels.kernels_restored(model.exit(k)):  # the model keeps its fused CPU kernels for later calls
        graph, placeholders = export_graph(model, k)
        ms.export(graph, *placeholders, file_name=os.path.join(directory, stem), file_format="MINDIR")
    file = f"{stem}.mindir"
    os.chmod(os.path.join(directory, file), usual_mode())  # MindSpore writes 0400
    return file


def _sha(directory: str, file: str | None) -> str | None:
    return sha256_of(os.path.join(directory, file)) if file else None


def export(settings: ExportSettings) -> Manifest:
    """Export the checkpoint ``settings.ckpt`` names: one graph per exit and the manifest, atomically."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    select_device(settings.device_target)
    formats = ("mindir", "onnx") if settings.format == "both" else (settings.format,)
    if "onnx" in formats:
        require_onnx()  # before the checkpoint is read
    loaded = ServedCheckpoint.load(settings)
    return export_model(loaded.model, settings.output_dir, model_name=loaded.name, model_args=loaded.model_args,
                        point=loaded.point, transform=loaded.transform, class_names=loaded.class_names,
                        metadata=loaded.metadata, formats=formats)


def _export(settings: ExportSettings) -> str:
    manifest = export(settings)
    return (f"{PROG}: {manifest.model}, {manifest.num_exits} exits ({' + '.join(manifest.formats)}) -> "
            f"{manifest.directory} (thresholds: "
            f"{manifest.thresholds_chosen_by}; cumulative GFLOPs "
            f"{', '.join(f'{g:.4f}' for g in manifest.cumulative_gflops)})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dvt-export``; returns the exit status (see :mod:`dvt_ms.command`)."""
    return run_command(PROG, lambda: parse_command(ExportSettings, argv, __doc__.split("\n\n")[0], PROG),
                       _export, (ServeError, ThresholdError, CheckpointError, DataError, DeviceError))


if __name__ == "__main__":
    sys.exit(main())
