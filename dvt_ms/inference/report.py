"""Writing the evaluation outputs atomically: ``eval_results.json``, the curve CSV, the plot."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

from ..files import atomic_output
from .plot import plot_accuracy_vs_gflops

__all__ = ["CSV_NAME", "JSON_NAME", "PLOT_NAME", "write_outputs"]

JSON_NAME = "eval_results.json"
CSV_NAME = "budgeted_batch.csv"
PLOT_NAME = "accuracy_vs_gflops.png"


def _write_csv(path: str, results: dict[str, Any]) -> None:
    flops, accuracy = results["budgeted_batch_classification"]
    rows = results.get("dynamic_threshold") or []
    shares = results.get("budgeted_batch_exit_shares") or []
    num_exits = len(results.get("flops") or []) or (len(rows[0]) if rows else 0)
    header = ["point", "q", "expected_gflops", "top1"]
    header += [f"threshold_{k + 1}" for k in range(num_exits)]
    if shares:
        header += [f"share_exit_{k + 1}" for k in range(num_exits)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, (g, a) in enumerate(zip(flops, accuracy, strict=True)):
            row = [i + 1, (i + 1) / 20, g, a]
            row += list(rows[i]) if i < len(rows) else [""] * num_exits
            if shares:
                row += list(shares[i])
            writer.writerow(row)


def _chosen(results: dict[str, Any]) -> tuple[float, float] | None:
    point = results.get("operating_point") or {}
    if point.get("expected_gflops") is None or point.get("accuracy") is None:
        return None
    return point["expected_gflops"], point["accuracy"]


def write_outputs(output_dir: str, results: dict[str, Any]) -> list[str]:
    """Write the JSON (always), the curve CSV (when there is a curve) and the plot (when there is
    anything to plot) into ``output_dir``; returns the paths written."""
    os.makedirs(output_dir, exist_ok=True)
    written = []
    path = os.path.join(output_dir, JSON_NAME)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    written.append(path)
    curve = results.get("budgeted_batch_classification") or [[], []]
    if curve[0]:
        path = os.path.join(output_dir, CSV_NAME)
        with atomic_output(path) as tmp:
            _write_csv(tmp, results)
        written.append(path)
    flops: Sequence[float] = results.get("flops") or []
    anytime: Sequence[float] = results.get("anytime_classification") or []
    if curve[0] or (flops and anytime):
        path = os.path.join(output_dir, PLOT_NAME)
        with atomic_output(path) as tmp:
            exit_points = (flops, anytime) if len(flops) == len(anytime) else ([], [])
            title = f"{results.get('model') or 'DVT'}: accuracy vs GFLOPs"
            plot_accuracy_vs_gflops(tmp, curve[0], curve[1], exit_points[0], exit_points[1], _chosen(results),
                                    title)
        written.append(path)
    return written
