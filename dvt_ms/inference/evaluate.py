"""Evaluation of a DVT checkpoint in the three official modes, with real early exit.

* mode 0: print (and write) the evaluation metadata stored with a converted checkpoint;
* mode 1: run every exit on the validation set, evaluate the budgeted-batch curve of the thresholds
  stored with the checkpoint;
* mode 2: first compute the confidences of a random subset of ``--calib_size`` training images and
  find the thresholds of the 59 budget points there (:mod:`~dvt_ms.inference.thresholds`), then
  evaluate them on the validation set.

In modes 1 and 2 one operating point is then run for real with the early-exit engine over the whole
validation set (``--thresholds``, else the most accurate curve point within ``--budget`` GFLOPs, else
the most accurate curve point), its predictions and exits are checked against the simulation, and
the three ways of running the model are timed on the first ``--throughput_batches`` batches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..amp import apply_precision
from ..checkpoint import read_metadata
from ..data import DataError, build_eval_dataset, iterate_batches
from ..flops import cumulative_gflops, stage_macs
from ..options import EvalSettings
from .engine import EarlyExitEngine, default_buckets
from .exit_examples import EXAMPLES_NAME, write_exit_examples
from .operating_point import choose_operating_point, explicit_thresholds, stored_threshold_table
from .progress import progress_bar
from .report import write_outputs
from .thresholds import (
    NEVER,
    budget_shares,
    budgeted_batch_curve,
    calibrate,
    simulate_exits,
    softmax_confidence,
    topk_correct,
)
from .throughput import speed_report

__all__ = ["EvalError", "EvalResults", "ExitOutputs", "collect_exit_outputs", "evaluate", "run_early_exit", "summary"]

_LOG = logging.getLogger(__name__)
METADATA_FIELDS = ("flops", "anytime_classification", "budgeted_batch_classification", "dynamic_threshold")


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


@dataclass
class EvalResults:
    """What :func:`evaluate` found (``eval_results.json``). Mode 0 fills only what a checkpoint stores:
    the model, ``flops``, ``anytime_classification``, the curve and ``dynamic_threshold``."""

    model: str | None
    checkpoint: str
    eval_mode: int
    num_classes: int | None = None
    model_args: dict[str, Any] | None = None
    dataset: str | None = None
    data_dir: str | None = None
    num_val_images: int | None = None
    num_calibration_images: int | None = None
    flops: list[float] | None = None  # cumulative GFLOPs (multiply-accumulates) of each exit
    stage_gflops: list[float] | None = None
    anytime_classification: list[float] | None = None  # top-1 % of each exit on every image
    anytime_top5: list[float] | None = None
    budgeted_batch_classification: list[list[float]] = field(default_factory=lambda: [[], []])  # [GFLOPs], [top-1]
    budgeted_batch_exit_shares: list[list[float]] | None = None
    budget_target_shares: list[list[float]] | None = None
    dynamic_threshold: list[list[float]] | None = None
    operating_point: dict[str, Any] | None = None  # the point run for real: thresholds, accuracy, exits, ...
    exit_shares: list[float] | None = None
    throughput: dict[str, Any] | None = None
    outputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- set-up -------------------------------------------------------------------------------------

def _set_device(settings: EvalSettings) -> None:
    import mindspore as ms

    from ..device import DeviceError, device_id_from_env, prepare_device

    target = settings.device_target
    if ms.get_context("device_target") == target and target != "Ascend":
        return
    try:
        prepare_device(target, 0 if ms.get_context("mode") == ms.GRAPH_MODE else 1, device_id_from_env(None),
                       amp_level=settings.amp_level, amp_dtype=settings.amp_dtype)
    except DeviceError as err:
        raise EvalError(f"--device_target {target}: {err}") from None


def _check_labels(dataset: Any, num_classes: int, where: str) -> None:
    classes = getattr(dataset, "classes", None)
    count = len(classes) if classes is not None else (max(dataset.targets) + 1 if len(dataset) else 0)
    if count > num_classes:
        raise DataError(f"{where} has {count} classes but the model has {num_classes} outputs: evaluate a "
                        "checkpoint trained for this data set (or pass the matching --num_classes)")


# ---- passes over a data set -----------------------------------------------------------------------

class ExitOutputs:
    """What every exit said about every image of a pass: confidence, prediction, top-1/top-5 hits."""

    def __init__(self, num_exits: int, n: int) -> None:
        self.confidences = np.zeros((num_exits, n), dtype=np.float32)
        self.predictions = np.zeros((num_exits, n), dtype=np.int64)
        self.top5 = np.zeros((num_exits, n), dtype=bool)
        self.targets = np.zeros(n, dtype=np.int64)

    @property
    def top1_accuracy(self) -> list[float]:
        return [100.0 * float(np.mean(p == self.targets)) for p in self.predictions]

    @property
    def top5_accuracy(self) -> list[float]:
        return [100.0 * float(np.mean(t)) for t in self.top5]


def collect_exit_outputs(engine: EarlyExitEngine, dataset: Any, batch_size: int, indices: Sequence[int] | None = None,
                         workers: int = 4, desc: str = "all exits") -> ExitOutputs:
    """Run every exit on every image (no early exit) and keep confidences, predictions and top-5 hits."""
    order = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    out = ExitOutputs(engine.num_exits, order.size)
    position = 0
    with progress_bar(order.size, desc) as bar:
        for images, labels, _ in iterate_batches(dataset, batch_size, order, workers):
            rows = slice(position, position + len(labels))
            for k, logits in enumerate(engine.all_exit_logits(images)):
                out.confidences[k, rows], out.predictions[k, rows] = softmax_confidence(logits)
                out.top5[k, rows] = topk_correct(logits, labels, 5)
            out.targets[rows] = labels
            position += len(labels)
            bar.update(len(labels))
    return out


def run_early_exit(engine: EarlyExitEngine, dataset: Any, batch_size: int, workers: int = 4,
                   desc: str = "early exit") -> dict[str, np.ndarray]:
    """Real early exit over the whole data set: per image prediction, confidence, exit; and the targets."""
    n = len(dataset)
    result = {"predictions": np.zeros(n, np.int64), "confidences": np.zeros(n, np.float32),
              "exits": np.zeros(n, np.int64), "targets": np.zeros(n, np.int64)}
    position = 0
    with progress_bar(n, desc) as bar:
        for images, labels, _ in iterate_batches(dataset, batch_size, None, workers):
            out = engine(images)
            rows = slice(position, position + len(labels))
            result["predictions"][rows], result["confidences"][rows] = out.predictions, out.confidences
            result["exits"][rows], result["targets"][rows] = out.exits, labels
            position += len(labels)
            bar.update(len(labels))
    return result


def _first_batches(dataset: Any, batch_size: int, count: int, workers: int) -> list[np.ndarray]:
    batches = []
    for images, _, _ in iterate_batches(dataset, batch_size, None, workers):
        if len(batches) == count:
            break
        batches.append(images)
    return batches


# ---- the modes ------------------------------------------------------------------------------------

def _metadata_results(settings: EvalSettings, metadata: dict | None) -> EvalResults:
    if metadata is None or not any(k in metadata for k in METADATA_FIELDS):
        raise EvalError(f"{settings.ckpt} carries no evaluation metadata (flops, anytime_classification, "
                        "budgeted_batch_classification, dynamic_threshold): --eval_mode 0 only prints what a "
                        "converted official checkpoint stores; use --eval_mode 2 to compute it")
    curve = metadata.get("budgeted_batch_classification") or [[], []]
    return EvalResults(model=metadata.get("model"), num_classes=metadata.get("num_classes"), checkpoint=settings.ckpt,
                       eval_mode=0, flops=metadata.get("flops"),
                       anytime_classification=metadata.get("anytime_classification"),
                       budgeted_batch_classification=[list(curve[0]), list(curve[1])],
                       dynamic_threshold=metadata.get("dynamic_threshold"))


def _buckets(settings: EvalSettings, batch_size: int) -> list[int] | str | None:
    """The engine's ``buckets`` from --pad_to_buckets / --buckets: unset -> the device's fastest shapes."""
    pad = settings.pad_to_buckets
    if pad is None:
        return [int(b) for b in settings.buckets] if settings.buckets else "auto"
    if not pad:
        return None
    return [int(b) for b in (settings.buckets or default_buckets(batch_size))]


def _stored_rows(settings: EvalSettings, metadata: dict | None, num_exits: int,
                 explicit: np.ndarray | None) -> np.ndarray | None:
    """Mode 1: the threshold table stored with the checkpoint (None in mode 2 or when none is stored)."""
    rows = None if settings.eval_mode == 2 else stored_threshold_table(metadata, num_exits, settings.ckpt)
    if rows is None and explicit is None and settings.eval_mode == 1:
        raise EvalError(f"{settings.ckpt} stores no thresholds (dynamic_threshold): pass --thresholds, or use "
                        "--eval_mode 2 to calibrate them on training images")
    return rows


@dataclass
class EvalSetup:
    """What every step of a mode-1/2 evaluation works with."""

    model: Any
    name: str
    model_args: dict[str, Any]
    engine: EarlyExitEngine
    buckets: list[int] | str | None
    val: Any
    cumulative: list[float]
    crop_pct: float | None

    @property
    def spec(self):
        return self.model.spec


def _setup(settings: EvalSettings, metadata: dict | None) -> EvalSetup:
    """Device, model with the checkpoint's weights, validation set and the engine (no thresholds yet)."""
    _set_device(settings)
    loaded = settings.load_model(settings.ckpt)
    model, name, overrides = loaded.model, loaded.name, loaded.model_args
    apply_precision(model, settings.amp_level, settings.amp_dtype)
    spec = model.spec
    crop_pct = settings.crop_pct or (metadata or {}).get("crop_pct")  # else the data set's default
    val = build_eval_dataset(settings.dataset, settings.data_dir, "val", spec.img_size, crop_pct)
    _check_labels(val, spec.num_classes, f"validation set {getattr(val, 'root', settings.data_dir)}")
    buckets = _buckets(settings, settings.batch_size)  # checked with the settings
    engine = EarlyExitEngine(model, [NEVER] * (spec.num_exits - 1), buckets=buckets)
    return EvalSetup(model, name, overrides, engine, buckets, val, cumulative_gflops(spec), crop_pct)


def _calibrated_thresholds(settings: EvalSettings, run: EvalSetup) -> tuple[np.ndarray, int]:
    """Mode 2: the threshold table of the budget points, calibrated on a random training subset."""
    train = build_eval_dataset(settings.dataset, settings.data_dir, "train", run.spec.img_size, run.crop_pct)
    if getattr(train, "classes", None) != getattr(run.val, "classes", None):
        raise DataError(f"the training and validation sets of {settings.data_dir} have different classes "
                        f"({len(train.classes)} vs {len(run.val.classes)}); they must match for calibration")
    subset = np.sort(np.random.default_rng(settings.seed).permutation(len(train))[: settings.calib_size])
    if subset.size < settings.calib_size:
        _LOG.warning("note: the training set has %d images, fewer than --calib_size %d: all of them calibrate "
                     "the thresholds", len(train), settings.calib_size)
    calib = collect_exit_outputs(run.engine, train, settings.batch_size, subset, settings.num_parallel_workers,
                                 "calibration")
    return calibrate(calib.confidences), int(subset.size)


def _run_operating_point(settings: EvalSettings, run: EvalSetup, outputs: ExitOutputs,
                         thresholds: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Real early exit over the validation set at ``thresholds``, checked against the simulation: the
    per-image results and the operating point's figures."""
    run.engine.set_thresholds(thresholds)
    real = run_early_exit(run.engine, run.val, settings.batch_size, settings.num_parallel_workers,
                          "validation, early exit")
    simulated = simulate_exits(outputs.confidences, thresholds)
    n = len(real["exits"])
    simulated_predictions = outputs.predictions[simulated, np.arange(n)]
    mismatches = int(np.sum((simulated != real["exits"]) | (simulated_predictions != real["predictions"])))
    counts = np.bincount(real["exits"], minlength=run.spec.num_exits)
    return real, {
        "thresholds": [float(t) for t in thresholds],
        "accuracy": 100.0 * float(np.mean(real["predictions"] == real["targets"])),
        "expected_gflops": float(np.dot(counts / n, run.cumulative)),
        "exit_counts": counts.tolist(),
        "engine_matches_simulation": mismatches == 0,
        "mismatches": mismatches,
    }


def _write_exit_examples(settings: EvalSettings, run: EvalSetup, real: dict[str, np.ndarray]) -> str | None:
    """``exit_examples.png`` for an image folder (CIFAR has no image files to show); returns its path."""
    samples = getattr(run.val, "samples", None)
    if not samples or settings.examples_per_exit == 0:
        return None
    names = getattr(run.val, "classes", None) or []
    captions = [f"{names[p] if p < len(names) else p} {c:.2f}" for p, c in zip(real["predictions"],
                                                                             real["confidences"], strict=True)]
    os.makedirs(settings.output_dir, exist_ok=True)
    return write_exit_examples(os.path.join(settings.output_dir, EXAMPLES_NAME), [p for p, _ in samples],
                               real["exits"], captions, run.spec.grids(), settings.examples_per_exit)


def _throughput(settings: EvalSettings, run: EvalSetup) -> dict[str, Any] | None:
    """Early exit vs every exit vs the last exit alone, timed on the first ``--throughput_batches``."""
    if settings.throughput_batches == 0:
        return None
    batches = _first_batches(run.val, settings.batch_size, settings.throughput_batches, settings.num_parallel_workers)
    _LOG.info("timing early exit / all exits / last exit alone on %d images ...", sum(len(b) for b in batches))
    report = speed_report(run.engine, batches, settings.throughput_rounds, run.buckets)
    report["device_target"] = settings.device_target
    return report


def _results(settings: EvalSettings, run: EvalSetup, outputs: ExitOutputs, curve, rows: np.ndarray | None,
             calib_count: int | None, point: dict[str, Any], throughput: dict[str, Any] | None) -> EvalResults:
    spec, n = run.spec, len(outputs.targets)
    return EvalResults(
        model=run.name, model_args=run.model_args, num_classes=spec.num_classes, checkpoint=settings.ckpt,
        eval_mode=settings.eval_mode, dataset=settings.dataset, data_dir=settings.data_dir, num_val_images=n,
        num_calibration_images=calib_count, flops=run.cumulative, stage_gflops=[m / 1e9 for m in stage_macs(spec)],
        anytime_classification=outputs.top1_accuracy, anytime_top5=outputs.top5_accuracy,
        budgeted_batch_classification=[[p.expected_gflops for p in curve], [p.accuracy for p in curve]],
        budgeted_batch_exit_shares=[p.exit_shares for p in curve],
        budget_target_shares=[budget_shares(p, spec.num_exits).tolist() for p in range(1, len(curve) + 1)],
        dynamic_threshold=rows.tolist() if rows is not None else None, operating_point=point,
        exit_shares=(np.asarray(point["exit_counts"]) / n).tolist(), throughput=throughput)


def evaluate(settings: EvalSettings) -> EvalResults:
    """Run the evaluation ``settings`` ask for, write the outputs into ``settings.output_dir``, return the
    results."""
    metadata = read_metadata(settings.ckpt)
    examples = None
    if settings.eval_mode == 0:
        results = _metadata_results(settings, metadata)
    else:
        run = _setup(settings, metadata)
        num_exits = run.spec.num_exits
        explicit = explicit_thresholds(settings.thresholds, num_exits)  # checked before any image is read
        rows, calib_count = _stored_rows(settings, metadata, num_exits, explicit), None
        if settings.eval_mode == 2:
            rows, calib_count = _calibrated_thresholds(settings, run)
        outputs = collect_exit_outputs(run.engine, run.val, settings.batch_size, None, settings.num_parallel_workers,
                                       "validation, all exits")
        curve = [] if rows is None else budgeted_batch_curve(outputs.confidences, outputs.predictions,
                                                             outputs.targets, run.cumulative, rows)
        chosen = choose_operating_point(num_exits, thresholds=settings.thresholds, budget=settings.budget,
                                        rows=rows, curve=curve)
        real, measured = _run_operating_point(settings, run, outputs, chosen.thresholds)
        point = {"chosen_by": chosen.chosen_by, "curve_point": chosen.curve_point, **measured}
        examples = _write_exit_examples(settings, run, real)
        results = _results(settings, run, outputs, curve, rows, calib_count, point, _throughput(settings, run))
    results.outputs = write_outputs(settings.output_dir, {k: v for k, v in results.to_dict().items() if k != "outputs"})
    if examples:
        results.outputs.append(examples)
    mismatches = (results.operating_point or {}).get("mismatches")
    if mismatches:
        raise EvalError(f"the early-exit engine and the simulation from the full logits disagree on {mismatches} "
                        f"of {results.num_val_images} images (a bug: the results are in "
                        f"{settings.output_dir} for inspection)")
    return results


def _fmt(values: Sequence[float] | None, digits: int = 2) -> str:
    if not values:
        return "-"
    return ", ".join(f"{v:.{digits}f}" for v in values)


def summary(results: EvalResults | dict[str, Any]) -> str:
    """A short human-readable report of :func:`evaluate`'s results."""
    if isinstance(results, EvalResults):
        results = results.to_dict()
    lines = [f"model: {results.get('model')}   checkpoint: {results.get('checkpoint')}"]
    lines.append(f"cumulative GFLOPs per exit: {_fmt(results.get('flops'), 4)}")
    lines.append(f"anytime top-1 per exit (%): {_fmt(results.get('anytime_classification'))}")
    if results.get("anytime_top5"):
        lines.append(f"anytime top-5 per exit (%): {_fmt(results['anytime_top5'])}")
    flops, accuracy = results.get("budgeted_batch_classification") or [[], []]
    if flops:
        lines.append(f"budgeted batch: {len(flops)} points, {min(flops):.4f}-{max(flops):.4f} GFLOPs, "
                     f"top-1 {min(accuracy):.2f}-{max(accuracy):.2f} %")
    point = results.get("operating_point")
    if point:
        lines.append(f"early exit ({point['chosen_by']}): top-1 {point['accuracy']:.2f} %, "
                     f"{point['expected_gflops']:.4f} GFLOPs/image, thresholds {_fmt(point['thresholds'][:-1], 4)}, "
                     f"exit shares {_fmt(results.get('exit_shares'), 3)}, matches simulation: "
                     f"{point['engine_matches_simulation']}")
    speed = results.get("throughput")
    if speed:
        runs = (("early_exit", "early exit"), ("all_exits", "all exits"), ("last_exit_alone", "last exit alone"))
        rates = ", ".join(f"{label} {speed[f'{key}_img_per_s']:.1f} img/s" for key, label in runs)
        lines.append(f"throughput on {speed['images']} images, batch {speed['batch_size']} "
                     f"({speed['device_target']}): {rates}")
        gains = "; ".join(f"vs {label}: measured {speed[f'measured_speedup_vs_{key}']:.2f}x, FLOPs predict "
                          f"{speed[f'predicted_speedup_vs_{key}']:.2f}x" for key, label in runs[1:])
        lines.append(f"early-exit speed-up {gains}")
    for path in results.get("outputs") or []:
        lines.append(f"wrote {path}")
    return "\n".join(lines)

