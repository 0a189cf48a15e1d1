"""A checkpoint made ready to serve: the model with its weights, the operating point, the preprocessing
and the class names, each from the flags or else from what the checkpoint records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..checkpoint import load_checkpoint, read_metadata
from ..config import Option, build_named_model
from ..data import default_crop_pct
from ..data.class_names import check_class_names, read_class_names
from ..data.transforms import EvalTransform
from ..inference.operating_point import OperatingPoint, choose_operating_point

__all__ = ["OPERATING_OPTIONS", "CheckpointModel", "ServeError", "load_checkpoint_model", "override_class_names"]

# flags of dvt-export and dvt-predict that choose the operating point, the classes' names and the crop
OPERATING_OPTIONS: tuple[Option, ...] = (
    Option("thresholds", "list", None, "confidence thresholds, one per exit but the last (default: the stored "
                                       "calibrated point)"),
    Option("budget", "float", None, "the most accurate calibrated point costing <= this many GFLOPs per image"),
    Option("class_names", "str", None, "text file with one class name per line (default: the stored names)"),
    Option("crop_pct", "float", None, "with --ckpt: centre-crop fraction (default: the checkpoint's, else 224/256 "
                                      "for imagefolder, 1.0 for CIFAR; exports store theirs)"),
    Option("dataset", "str", "imagefolder", "with --ckpt: the training data set (sets the default crop_pct)",
           ("imagefolder", "cifar10", "cifar100")),
)


class ServeError(ValueError):
    """An export or prediction that cannot run as asked; the message says what to change."""


@dataclass
class CheckpointModel:
    """What ``dvt-export`` and ``dvt-predict --ckpt`` build from a checkpoint."""

    model: Any  # DVTCascade with the checkpoint's weights
    name: str
    model_args: dict[str, Any]
    metadata: dict[str, Any]
    point: OperatingPoint
    transform: EvalTransform
    class_names: list[str] | None


def override_class_names(path: str | None, stored: list[str] | None, num_classes: int) -> list[str] | None:
    """The names in ``path`` (``--class_names``) when given, else ``stored``; checked against ``num_classes``."""
    if path:
        return check_class_names(read_class_names(path), num_classes, path)
    return stored


def load_checkpoint_model(cfg: dict[str, Any]) -> CheckpointModel:
    """From a resolved config: ``ckpt``, the model keys (else the checkpoint's record), ``thresholds`` /
    ``budget`` (else the stored calibrated point), ``crop_pct`` (else the recorded one, else the data
    set's default) and ``class_names`` (a file, else the stored names)."""
    if not cfg.get("ckpt"):
        raise ServeError("no checkpoint: pass --ckpt PATH (a .ckpt or .safetensors file)")
    metadata = read_metadata(cfg["ckpt"]) or {}
    model, name, model_args = build_named_model(cfg, metadata, cfg["ckpt"])
    load_checkpoint(model, cfg["ckpt"])
    spec = model.spec
    point = choose_operating_point(spec.num_exits, thresholds=cfg.get("thresholds"), budget=cfg.get("budget"),
                                   metadata=metadata, source=cfg["ckpt"])
    crop_pct = cfg.get("crop_pct") or metadata.get("crop_pct") or default_crop_pct(cfg.get("dataset", "imagefolder"))
    stored = metadata.get("class_names") if not cfg.get("class_names") else None  # an override replaces them
    names = override_class_names(cfg.get("class_names"), check_class_names(
        stored, spec.num_classes, f"the class names stored in {cfg['ckpt']}"), spec.num_classes)
    return CheckpointModel(model, name, model_args, metadata, point, EvalTransform(spec.img_size, crop_pct), names)
