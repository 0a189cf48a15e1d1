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

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..checkpoint import load_checkpoint, read_metadata
from ..config import named_model
from ..data import DataError, build_eval_dataset, iterate_batches
from ..flops import cumulative_gflops, stage_macs
from .engine import EarlyExitEngine, default_buckets
from .progress import Progress
from .report import write_outputs
from .thresholds import (
    NEVER,
    budget_shares,
    budgeted_batch_curve,
    calibrate,
    normalize_thresholds,
    pick_budget_point,
    simulate_exits,
    softmax_confidence,
    topk_correct,
)
from .throughput import speed_report

__all__ = ["EvalError", "ExitOutputs", "collect_exit_outputs", "evaluate", "run_early_exit", "summary"]

METADATA_FIELDS = ("flops", "anytime_classification", "budgeted_batch_classification", "dynamic_threshold")


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- set-up -------------------------------------------------------------------------------------

def _check_flags(cfg: dict[str, Any]) -> None:
    if cfg["eval_mode"] not in (0, 1, 2):
        raise EvalError(f"--eval_mode must be 0, 1 or 2, got {cfg['eval_mode']}")
    for name in ("batch_size", "calib_size"):
        if cfg[name] is None or cfg[name] < 1:
            raise EvalError(f"--{name} must be a positive integer, got {cfg[name]}")
    for name in ("throughput_batches", "throughput_rounds", "num_parallel_workers"):
        if cfg[name] is None or cfg[name] < 0:
            raise EvalError(f"--{name} must be >= 0, got {cfg[name]}")
    if cfg.get("thresholds") is not None and cfg.get("budget") is not None:
        raise EvalError("give either --thresholds or --budget, not both")
    if not cfg.get("ckpt"):
        raise EvalError("no checkpoint: pass --ckpt PATH (a .ckpt or .safetensors file)")
    if cfg["eval_mode"] > 0 and not cfg.get("data_dir"):
        raise EvalError(f"--eval_mode {cfg['eval_mode']} needs --data_dir (the folder holding val/"
                        f"{' and train/' if cfg['eval_mode'] == 2 else ''}, or the CIFAR binary files)")


def _set_device(target: str) -> None:
    import mindspore as ms

    if ms.get_context("device_target") == target:
        return
    try:
        ms.set_device(target)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EvalError(f"--device_target {target} is not available in this MindSpore installation: {first}") from None


def build_eval_model(cfg: dict[str, Any], metadata: dict | None):
    """The model named by the config (``--config`` / ``--model`` and model flags), or else by the
    checkpoint's own record; returns ``(model, name, arguments)``."""
    from ..models import create_model

    chosen = named_model(cfg, metadata)
    if chosen is None:
        raise EvalError(f"no model given and {cfg['ckpt']} does not name one: pass --config configs/<model>.yaml "
                        "or --model NAME")
    name, overrides, _ = chosen
    try:
        model = create_model(name, **overrides)
    except (ValueError, TypeError) as err:
        raise EvalError(f"cannot build model {name!r}: {err}") from None
    return model, name, overrides


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
    with Progress(order.size, desc) as bar:
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
    with Progress(n, desc) as bar:
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

def _metadata_results(cfg: dict[str, Any], metadata: dict | None) -> dict[str, Any]:
    if metadata is None or not any(k in metadata for k in METADATA_FIELDS):
        raise EvalError(f"{cfg['ckpt']} carries no evaluation metadata (flops, anytime_classification, "
                        "budgeted_batch_classification, dynamic_threshold): --eval_mode 0 only prints what a "
                        "converted official checkpoint stores; use --eval_mode 2 to compute it")
    curve = metadata.get("budgeted_batch_classification") or [[], []]
    return {
        "model": metadata.get("model"),
        "num_classes": metadata.get("num_classes"),
        "checkpoint": cfg["ckpt"],
        "eval_mode": 0,
        "flops": metadata.get("flops"),
        "anytime_classification": metadata.get("anytime_classification"),
        "budgeted_batch_classification": [list(curve[0]), list(curve[1])],
        "dynamic_threshold": metadata.get("dynamic_threshold"),
        "exit_shares": None,
        "throughput": None,
    }


def _buckets(cfg: dict, batch_size: int) -> list[int] | str | None:
    """The engine's ``buckets`` from --pad_to_buckets / --buckets: unset -> the device's fastest shapes."""
    pad = cfg.get("pad_to_buckets")
    if pad is None:
        return [int(b) for b in cfg["buckets"]] if cfg.get("buckets") else "auto"
    if not pad:
        return None
    return [int(b) for b in (cfg.get("buckets") or default_buckets(batch_size))]


def _stored_thresholds(metadata: dict | None, num_exits: int, ckpt: str) -> np.ndarray | None:
    if not metadata or metadata.get("dynamic_threshold") is None:
        return None
    try:
        rows = np.asarray(metadata["dynamic_threshold"], dtype=np.float64)
    except (TypeError, ValueError):
        raise EvalError(f"{ckpt}: the stored dynamic_threshold is not a numeric table") from None
    if rows.ndim != 2 or rows.shape[1] != num_exits:
        raise EvalError(f"{ckpt}: the stored dynamic_threshold has shape {list(rows.shape)}, but the model has "
                        f"{num_exits} exits (expected [points, {num_exits}])")
    return rows


def _explicit_thresholds(cfg: dict[str, Any], num_exits: int) -> np.ndarray | None:
    """``--thresholds`` for every exit (the last one :data:`ALWAYS`), or None when not given."""
    if cfg.get("thresholds") is None:
        return None
    try:
        return normalize_thresholds(cfg["thresholds"], num_exits, "--thresholds")
    except ValueError as err:
        raise EvalError(str(err)) from None


def _operating_point(cfg: dict[str, Any], explicit: np.ndarray | None, curve, rows: np.ndarray | None):
    """(thresholds, how they were chosen, 1-based curve point or None)."""
    if explicit is not None:
        return explicit, "--thresholds", None
    if not curve:
        raise EvalError("there are no thresholds to run: the checkpoint stores none; pass --thresholds or use "
                        "--eval_mode 2")
    try:
        index = pick_budget_point(curve, cfg.get("budget"))
    except ValueError as err:
        raise EvalError(str(err)) from None
    how = f"--budget {cfg['budget']}" if cfg.get("budget") is not None else "most accurate curve point"
    return rows[index], how, index + 1


def evaluate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the evaluation a resolved ``dvt-eval`` config asks for, write the outputs, return the results."""
    _check_flags(cfg)
    output_dir = cfg["output_dir"]
    metadata = read_metadata(cfg["ckpt"])
    if cfg["eval_mode"] == 0:
        results = _metadata_results(cfg, metadata)
        results["outputs"] = write_outputs(output_dir, results)
        return results

    _set_device(cfg["device_target"])
    model, name, overrides = build_eval_model(cfg, metadata)
    load_checkpoint(model, cfg["ckpt"])
    spec = model.spec
    num_exits = spec.num_exits
    cumulative = cumulative_gflops(spec)
    workers, batch_size = cfg["num_parallel_workers"], cfg["batch_size"]

    val = build_eval_dataset(cfg["dataset"], cfg["data_dir"], "val", spec.img_size, cfg.get("crop_pct"))
    _check_labels(val, spec.num_classes, f"validation set {getattr(val, 'root', cfg['data_dir'])}")
    rows = None if cfg["eval_mode"] == 2 else _stored_thresholds(metadata, num_exits, cfg["ckpt"])
    explicit = _explicit_thresholds(cfg, num_exits)  # checked before any image is read
    if explicit is None and cfg["eval_mode"] == 1 and rows is None:
        raise EvalError(f"{cfg['ckpt']} stores no thresholds (dynamic_threshold): pass --thresholds, or use "
                        "--eval_mode 2 to calibrate them on training images")

    buckets = _buckets(cfg, batch_size)
    if isinstance(buckets, list) and (min(buckets) < 1 or max(buckets) < batch_size):
        raise EvalError(f"--buckets {buckets} must be positive sizes and include one of at least --batch_size "
                        f"{batch_size}")
    engine = EarlyExitEngine(model, [NEVER] * (num_exits - 1), buckets=buckets)

    calib_count = None
    if cfg["eval_mode"] == 2:
        train = build_eval_dataset(cfg["dataset"], cfg["data_dir"], "train", spec.img_size, cfg.get("crop_pct"))
        if getattr(train, "classes", None) != getattr(val, "classes", None):
            raise DataError(f"the training and validation sets of {cfg['data_dir']} have different classes "
                            f"({len(train.classes)} vs {len(val.classes)}); they must match for calibration")
        rng = np.random.default_rng(cfg["seed"])
        subset = np.sort(rng.permutation(len(train))[: cfg["calib_size"]])
        calib_count = int(subset.size)
        if subset.size < cfg["calib_size"]:
            _log(f"note: the training set has {len(train)} images, fewer than --calib_size {cfg['calib_size']}: "
                 "all of them calibrate the thresholds")
        calib = collect_exit_outputs(engine, train, batch_size, subset, workers, "calibration")
        rows = calibrate(calib.confidences)

    outputs = collect_exit_outputs(engine, val, batch_size, None, workers, "validation, all exits")
    curve = budgeted_batch_curve(outputs.confidences, outputs.predictions, outputs.targets, cumulative,
                                 rows) if rows is not None else []
    thresholds, chosen_by, point = _operating_point(cfg, explicit, curve, rows)

    engine.set_thresholds(thresholds)
    real = run_early_exit(engine, val, batch_size, workers, "validation, early exit")
    simulated = simulate_exits(outputs.confidences, thresholds)
    n = len(val)
    simulated_predictions = outputs.predictions[simulated, np.arange(n)]
    mismatches = int(np.sum((simulated != real["exits"]) | (simulated_predictions != real["predictions"])))
    if mismatches:
        _log(f"warning: the early-exit engine and the simulation disagree on {mismatches} of {n} images")
    counts = np.bincount(real["exits"], minlength=num_exits)
    accuracy = 100.0 * float(np.mean(real["predictions"] == real["targets"]))
    expected = float(np.dot(counts / n, cumulative))

    throughput = None
    if cfg["throughput_batches"] > 0:
        batches = _first_batches(val, batch_size, cfg["throughput_batches"], workers)
        _log(f"timing early exit / all exits / last exit alone on {sum(len(b) for b in batches)} images ...")
        throughput = speed_report(engine, batches, cfg["throughput_rounds"], buckets)
        throughput["device_target"] = cfg["device_target"]

    results = {
        "model": name,
        "model_args": overrides,
        "num_classes": spec.num_classes,
        "checkpoint": cfg["ckpt"],
        "eval_mode": cfg["eval_mode"],
        "dataset": cfg["dataset"],
        "data_dir": cfg["data_dir"],
        "num_val_images": n,
        "num_calibration_images": calib_count,
        "flops": cumulative,
        "stage_gflops": [m / 1e9 for m in stage_macs(spec)],
        "anytime_classification": outputs.top1_accuracy,
        "anytime_top5": outputs.top5_accuracy,
        "budgeted_batch_classification": [[p.expected_gflops for p in curve], [p.accuracy for p in curve]],
        "budgeted_batch_exit_shares": [p.exit_shares for p in curve],
        "budget_target_shares": [budget_shares(p, num_exits).tolist() for p in range(1, len(curve) + 1)],
        "dynamic_threshold": rows.tolist() if rows is not None else None,
        "operating_point": {
            "chosen_by": chosen_by,
            "curve_point": point,
            "thresholds": [float(t) for t in thresholds],
            "accuracy": accuracy,
            "expected_gflops": expected,
            "exit_counts": counts.tolist(),
            "engine_matches_simulation": mismatches == 0,
            "mismatches": mismatches,
        },
        "exit_shares": (counts / n).tolist(),
        "throughput": throughput,
    }
    results["outputs"] = write_outputs(output_dir, results)
    return results


def _fmt(values: Sequence[float] | None, digits: int = 2) -> str:
    if not values:
        return "-"
    return ", ".join(f"{v:.{digits}f}" for v in values)


def summary(results: dict[str, Any]) -> str:
    """A short human-readable report of :func:`evaluate`'s results."""
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
        lines.append(f"throughput on {speed['images']} images, batch {speed['batch_size']} "
                     f"({speed['device_target']}): early exit {speed['early_exit_img_per_s']:.1f} img/s, "
                     f"all exits {speed['all_exits_img_per_s']:.1f}, last exit alone "
                     f"{speed['last_exit_alone_img_per_s']:.1f}")
        lines.append(f"speed-up vs all exits: measured {speed['measured_speedup_vs_all_exits']:.2f}x, FLOPs "
                     f"predict {speed['predicted_speedup_vs_all_exits']:.2f}x; vs last exit alone: measured "
                     f"{speed['measured_speedup_vs_last_exit_alone']:.2f}x, FLOPs predict "
                     f"{speed['predicted_speedup_vs_last_exit_alone']:.2f}x")
    for path in results.get("outputs") or []:
        lines.append(f"wrote {path}")
    return "\n".join(lines)

