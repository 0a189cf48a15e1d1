"""``dvt-predict`` (``python -m dvt_ms predict``): classify your own images with real early exit.

    dvt-predict --exported outputs/export --images photos/ --output_dir outputs/predict
    dvt-predict --ckpt demo/dvt_digits_demo.ckpt -c configs/dvt_digits_demo.yaml --images a.png list.txt
    dvt-predict --exported DIR --images photos/ --budget 1.0 --top_k 3

``--images`` takes image files, folders (searched recursively) and list files (``.txt``/``.lst``: one
path per line, relative to the list's folder). Each image runs exit 1; only the ones whose confidence
stays below that exit's threshold go on to the next exit, and so on. Writes ``predictions.csv``,
``predictions.jsonl`` (path, top-k classes with names and probabilities, exit taken, GFLOPs spent),
``summary.json`` (images, exit shares, mean GFLOPs vs the last exit, images per second) and
``exit_examples.png`` into ``--output_dir``. An unreadable image is reported in the outputs with its
error and the run goes on (``--strict``: it stops the run instead).
Exit status: 0 on success, 1 when the run cannot go on (the message says why), 2 for bad usage.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..checkpoint import CheckpointError
from ..command import run_command
from ..data import DataError, iterate_batches
from ..data.folder import IMG_EXTENSIONS, is_image_file, list_image_files, load_image
from ..data.transforms import EvalTransform
from ..device import DeviceError
from ..files import atomic_output
from ..inference.exit_examples import EXAMPLES_NAME, write_exit_examples
from ..inference.operating_point import ThresholdError
from ..inference.progress import progress_bar
from ..options import PredictSettings, parse_command
from .errors import ManifestError, ServeError
from .predictor import Predictor, build_predictor, class_name, exported_stages, prediction_record

__all__ = ["PredictionSummary", "Predictor", "build_predictor", "collect_images", "exported_stages", "format_summary",
           "main", "predict"]

PROG = "dvt-predict"
LIST_SUFFIXES = (".txt", ".lst", ".list")
CSV_NAME, JSONL_NAME, SUMMARY_NAME = "predictions.csv", "predictions.jsonl", "summary.json"

# ---- inputs -------------------------------------------------------------------------------------------

def collect_images(entries: Sequence[str]) -> list[str]:
    """The image paths named by ``entries``: image files, folders (recursive, sorted) and list files
    (``.txt``: one image path per line, relative to the list's folder; blank lines and ``#`` comments skipped).
    Anything else is a :class:`DataError` naming the entry, or the list file and line."""
    paths: list[str] = []
    for entry in entries:
        if os.path.isdir(entry):
            found = list_image_files(entry)
            if not found:
                raise DataError(f"no image files in folder {entry} (accepted: {', '.join(IMG_EXTENSIONS)})")
            paths += found
        elif not os.path.exists(entry):
            raise DataError(f"--images: {entry} does not exist")
        elif entry.lower().endswith(LIST_SUFFIXES):
            paths += _read_list(entry)
        elif is_image_file(entry):
            paths.append(entry)
        else:
            raise DataError(f"--images: {entry} is not an image file (accepted: {', '.join(IMG_EXTENSIONS)}), a "
                            f"folder or a list file ({', '.join(LIST_SUFFIXES)})")
    if not paths:
        raise DataError("--images names no image")
    return paths


def _read_list(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"list file {path} is not UTF-8 text (a list file holds one image path per line)") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = line if os.path.isabs(line) else os.path.join(base, line)
        if not (os.path.isfile(entry) and is_image_file(entry)):
            what = "does not exist" if not os.path.exists(entry) else "is not an image file"
            raise DataError(f"{path}:{number}: {line!r} {what} (a list file holds one image path per line, "
                            "relative to its folder; # starts a comment)")
        entries.append(entry)
    if not entries:
        raise DataError(f"list file {path} names no image")
    return entries


class ImageFiles:
    """Random-access images for :func:`~dvt_ms.data.iterate_batches`: ``ds[i] -> (array, 0)``, or
    ``(zeros, -1)`` for an unreadable file, whose error is kept in :attr:`errors` (``strict``: raised)."""

    def __init__(self, paths: Sequence[str], transform: EvalTransform, strict: bool = False) -> None:
        self.paths, self.transform, self.strict = list(paths), transform, strict
        self.errors: dict[int, str] = {}
        self._blank = np.zeros((3, transform.img_size, transform.img_size), np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        try:
            return self.transform(load_image(self.paths[index])), 0
        except (DataError, ValueError) as err:
            if self.strict:
                raise DataError(f"{err} (--strict stops at the first unreadable image)") from None
            self.errors[index] = str(err)
            return self._blank, -1


# ---- running ------------------------------------------------------------------------------------------

def predict(settings: PredictSettings) -> PredictionSummary:
    """Predict every image ``settings.images`` names, write the outputs, return the summary."""
    paths = collect_images(settings.images)
    predictor = build_predictor(settings)
    images = ImageFiles(paths, predictor.transform, settings.strict)
    n, k = len(paths), min(settings.top_k, predictor.num_classes)  # no more classes than the model has
    exits = np.full(n, -1, np.int64)
    classes = np.zeros((n, k), np.int64)
    probabilities = np.zeros((n, k), np.float32)
    start = time.perf_counter()
    with progress_bar(n, "predicting") as bar:
        for batch, flags, rows in iterate_batches(images, settings.batch_size, None, settings.num_parallel_workers):
            ok = flags >= 0
            if ok.any():
                result = predictor.engine(batch[ok], top_k=k)
                done = rows[ok]
                exits[done] = result.exits
                width = result.top_classes.shape[1]
                classes[done, :width], probabilities[done, :width] = result.top_classes, result.top_probabilities
            bar.update(len(rows))
    seconds = time.perf_counter() - start
    return write_predictions(settings.output_dir, predictor, paths, exits, classes, probabilities, images.errors,
                             seconds, settings.examples_per_exit)


@dataclass
class PredictionSummary:
    """What a prediction run did (``summary.json``): images, exits taken, GFLOPs spent, speed, files."""

    model: str
    source: str
    thresholds: list[float]
    thresholds_chosen_by: str
    images: int
    predicted: int
    failed: int
    exit_counts: list[int]
    exit_shares: list[float]
    cumulative_gflops: list[float]
    mean_gflops: float
    last_exit_gflops: float
    gflops_vs_last_exit: float
    seconds: float
    img_per_s: float | None
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def write_predictions(output_dir: str, predictor: Predictor, paths: Sequence[str], exits: np.ndarray,
                      classes: np.ndarray, probabilities: np.ndarray, errors: dict[int, str], seconds: float,
                      examples_per_exit: int = 8) -> PredictionSummary:
    """Write the CSV, JSONL, summary and exit-examples figure (each atomically); returns the summary."""
    os.makedirs(output_dir, exist_ok=True)
    names, cumulative = predictor.class_names, predictor.cumulative_gflops
    k = classes.shape[1] if classes.ndim == 2 else 0
    ok = exits >= 0
    num_exits = len(cumulative)
    counts = np.bincount(exits[ok], minlength=num_exits)
    predicted = int(ok.sum())
    mean_gflops = float(np.dot(counts, cumulative) / max(predicted, 1))
    summary = PredictionSummary(
        model=predictor.model, source=predictor.source,
        thresholds=[float(t) for t in predictor.engine.thresholds],
        thresholds_chosen_by=predictor.thresholds_chosen_by, images=len(paths), predicted=predicted,
        failed=len(paths) - predicted, exit_counts=counts.tolist(), exit_shares=(counts / max(predicted, 1)).tolist(),
        cumulative_gflops=list(cumulative), mean_gflops=mean_gflops, last_exit_gflops=float(cumulative[-1]),
        gflops_vs_last_exit=mean_gflops / float(cumulative[-1]), seconds=seconds,
        img_per_s=len(paths) / seconds if seconds > 0 else None)
    records = [{"path": path, **prediction_record(int(exits[i]) if ok[i] else None, classes[i, :k],
                                                 probabilities[i, :k], names, cumulative, errors.get(i))}
               for i, path in enumerate(paths)]
    files = {}
    with atomic_output(os.path.join(output_dir, JSONL_NAME)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    files["jsonl"] = os.path.join(output_dir, JSONL_NAME)
    header = ["path", "exit", "gflops"] + [f"top{j + 1}_{field}" for j in range(k)
                                           for field in ("class", "name", "probability")] + ["error"]
    with atomic_output(os.path.join(output_dir, CSV_NAME)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in records:
            cells = [c for t in r["top_k"] for c in (t["class"], t["name"], f"{t['probability']:.6f}")]
            writer.writerow([r["path"], r["exit"] or "", r["gflops"] if r["gflops"] is not None else "",
                             *(cells or [""] * 3 * k), r["error"] or ""])
    files["csv"] = os.path.join(output_dir, CSV_NAME)
    if examples_per_exit and predicted:
        shown = np.flatnonzero(ok)
        captions = [f"{class_name(names, int(classes[i, 0]))} {probabilities[i, 0]:.2f}" for i in shown]
        files["examples"] = write_exit_examples(os.path.join(output_dir, EXAMPLES_NAME), [paths[i] for i in shown],
                                                exits[shown], captions, predictor.grids, examples_per_exit)
    summary.outputs = files
    with atomic_output(os.path.join(output_dir, SUMMARY_NAME)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary.to_dict(), f, indent=2)
    summary.outputs["summary"] = os.path.join(output_dir, SUMMARY_NAME)
    return summary


def format_summary(summary: PredictionSummary) -> str:
    """A few human-readable lines about a prediction run."""
    shares = ", ".join(f"{100 * s:.1f} %" for s in summary.exit_shares)
    lines = [f"{summary.predicted} of {summary.images} images predicted"
             + (f" ({summary.failed} unreadable, see the error column)" if summary.failed else ""),
             f"exit shares: {shares} (thresholds: {summary.thresholds_chosen_by})",
             f"mean {summary.mean_gflops:.4f} GFLOPs per image, {100 * summary.gflops_vs_last_exit:.1f} % of "
             f"the last exit's {summary.last_exit_gflops:.4f}; {summary.img_per_s:.1f} img/s"]
    lines += [f"wrote {path}" for path in summary.outputs.values()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dvt-predict``; returns the exit status (see :mod:`dvt_ms.command`)."""
    return run_command(PROG, lambda: parse_command(PredictSettings, argv, __doc__.split("\n\n")[0], PROG),
                       lambda settings: format_summary(predict(settings)),
                       (ServeError, ManifestError, ThresholdError, DataError, CheckpointError, DeviceError))


if __name__ == "__main__":
    sys.exit(main())
