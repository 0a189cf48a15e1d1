"""A checkpoint made ready to serve: the model with its weights, the operating point, the preprocessing
and the class names, each from the settings or else from what the checkpoint records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data import default_crop_pct
from ..data.class_names import check_class_names, read_class_names
from ..data.transforms import EvalTransform
from ..inference.operating_point import OperatingPoint, choose_operating_point
from ..options import NO_CKPT, OperatingSettings
from .errors import ServeError

__all__ = ["ServedCheckpoint", "override_class_names"]


def override_class_names(path: str | None, stored: list[str] | None, num_classes: int) -> list[str] | None:
    """The names in ``path`` (``--class_names``) when given, else ``stored``; checked against ``num_classes``."""
    if path:
        return check_class_names(read_class_names(path), num_classes, path)
    return stored


@dataclass
class ServedCheckpoint:
    """What ``dvt-export`` and ``dvt-predict --ckpt`` build from a checkpoint."""

    model: Any  # DVTCascade with the checkpoint's weights
    name: str
    model_args: dict[str, Any]
    metadata: dict[str, Any]
    point: OperatingPoint
    transform: EvalTransform
    class_names: list[str] | None

    @classmethod
    def load(cls, settings: OperatingSettings) -> ServedCheckpoint:
        """From ``settings.ckpt`` and the model settings (else the checkpoint's record): the operating point
        (``thresholds`` / ``budget``, else the stored calibrated one), the crop (``crop_pct``, else the
        recorded one, else the data set's default) and the class names (a file, else the stored ones)."""
        if not settings.ckpt:
            raise ServeError(NO_CKPT)
        loaded = settings.load_model(settings.ckpt)
        spec, metadata = loaded.model.spec, loaded.metadata
        point = choose_operating_point(spec.num_exits, thresholds=settings.thresholds, budget=settings.budget,
                                       metadata=metadata, source=settings.ckpt)
        crop_pct = settings.crop_pct or metadata.get("crop_pct") or default_crop_pct(settings.dataset)
        stored = metadata.get("class_names") if not settings.class_names else None  # an override replaces them
        names = override_class_names(settings.class_names, check_class_names(
            stored, spec.num_classes, f"the class names stored in {settings.ckpt}"), spec.num_classes)
        return cls(loaded.model, loaded.name, loaded.model_args, metadata, point,
                   EvalTransform(spec.img_size, crop_pct), names)
