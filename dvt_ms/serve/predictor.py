"""The early-exit engine made ready to predict, from an export or a checkpoint, and the record of one image's
prediction: what ``dvt-predict`` writes per image and ``dvt-serve`` answers per image.

:func:`build_predictor` takes any settings object with the fields of
:class:`~dvt_ms.options.PredictorSettings` (the model from ``exported`` or ``ckpt``, the operating point, the
runtime); :func:`prediction_record` is the one place the per-image JSON object is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data.transforms import EvalTransform
from ..device import select_device
from ..flops import cumulative_gflops
from ..inference.engine import EarlyExitEngine
from ..inference.operating_point import choose_operating_point
from .checkpoint_model import ServedCheckpoint, override_class_names
from .errors import ManifestError, ServeError
from .manifest import read_manifest

__all__ = ["RUNTIMES", "Predictor", "build_predictor", "class_name", "exported_stages", "prediction_record"]

RUNTIMES = {"mindspore": "mindir", "onnxruntime": "onnx"}


@dataclass
class Predictor:
    """The early-exit engine with what the outputs need to describe its decisions."""

    engine: EarlyExitEngine
    transform: EvalTransform
    cumulative_gflops: list[float]
    grids: list[int]
    class_names: list[str] | None
    thresholds_chosen_by: str
    source: str
    model: str
    num_classes: int


def _from_export(settings: Any) -> Predictor:
    manifest = read_manifest(settings.exported)
    stored = {"dynamic_threshold": manifest.dynamic_threshold,
              "budgeted_batch_classification": manifest.budgeted_batch_classification}
    if settings.thresholds is None and settings.budget is None:
        thresholds, chosen_by = manifest.thresholds, f"stored in the export ({manifest.thresholds_chosen_by})"
    else:
        point = choose_operating_point(manifest.num_exits, thresholds=settings.thresholds,
                                       budget=settings.budget, metadata=stored, source=manifest.directory)
        thresholds, chosen_by = point.thresholds, point.chosen_by
    try:
        transform = EvalTransform.from_description(manifest.preprocessing)
    except (KeyError, ValueError) as err:
        raise ManifestError(f"{manifest.directory}: unusable preprocessing ({err})") from None
    names = override_class_names(settings.class_names, manifest.class_names, manifest.num_classes)
    engine = EarlyExitEngine(exported_stages(manifest, settings.runtime, settings.execution_provider), thresholds)
    return Predictor(engine, transform, manifest.cumulative_gflops, [e.grid for e in manifest.exits], names,
                     chosen_by, manifest.directory, manifest.model, manifest.num_classes)


def exported_stages(manifest, runtime: str | None = None, provider: str = "CPUExecutionProvider"):
    """The engine's stages of an export: ``runtime`` (``mindspore`` / ``onnxruntime``), else the one of the
    export's format (MindSpore where both were exported)."""
    formats = manifest.formats
    runtime = runtime or ("mindspore" if "mindir" in formats else "onnxruntime")
    if RUNTIMES[runtime] not in formats:
        raise ServeError(f"--runtime {runtime} runs {RUNTIMES[runtime]} graphs, but {manifest.directory} holds "
                         f"{' and '.join(formats)} only (export with --format {RUNTIMES[runtime]} or both)")
    if runtime == "onnxruntime":
        from .onnx_runtime import OnnxStages

        return OnnxStages(manifest, provider)
    from .graphs import ExportedStages

    return ExportedStages(manifest)


def _from_checkpoint(settings: Any) -> Predictor:
    loaded = ServedCheckpoint.load(settings)
    spec = loaded.model.spec
    return Predictor(EarlyExitEngine(loaded.model, loaded.point.thresholds), loaded.transform,
                     cumulative_gflops(spec), spec.grids(), loaded.class_names, loaded.point.chosen_by,
                     settings.ckpt, loaded.name, spec.num_classes)


def build_predictor(settings: Any) -> Predictor:
    """The engine from ``exported`` or ``ckpt``, with ``class_names`` applied (MindSpore in graph mode on
    ``device_target``)."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    select_device(settings.device_target)
    return _from_export(settings) if settings.exported else _from_checkpoint(settings)


def class_name(names: Sequence[str] | None, c: int) -> str:
    """The name of class ``c``, else its number as text."""
    return names[c] if names is not None and 0 <= c < len(names) else str(c)


def prediction_record(exit_index: int | None, classes: Sequence[int], probabilities: Sequence[float],
                      class_names: Sequence[str] | None, cumulative: Sequence[float],
                      error: str | None = None) -> dict[str, Any]:
    """One image's prediction as ``predictions.jsonl`` holds it, without its path: ``exit`` (1-based; None for an
    image that could not be read), ``gflops`` spent, ``top_k`` (class, name, probability; most probable first)
    and ``error``. ``exit_index`` is 0-based."""
    if exit_index is None:
        return {"exit": None, "gflops": None, "top_k": [], "error": error}
    top = [{"class": int(c), "name": class_name(class_names, int(c)), "probability": float(p)}
           for c, p in zip(classes, probabilities, strict=True)]
    return {"exit": int(exit_index) + 1, "gflops": float(cumulative[exit_index]), "top_k": top, "error": error}
