"""Store calibrated thresholds and the evaluation figures inside a checkpoint.

After a mode-2 evaluation, ``eval_results.json`` holds what the official checkpoints carry next to
their weights (``flops``, ``anytime_classification``, ``dynamic_threshold``,
``budgeted_batch_classification``). Stamping copies those fields into the checkpoint's metadata, so
that ``dvt-eval --eval_mode 0`` prints them and ``--eval_mode 1`` reuses the thresholds without
calibrating again. The results must have been computed for the model the checkpoint records (name, exits,
classes, GFLOPs per exit): anything else is refused before a byte is written. The weights are copied
unchanged; the output is written atomically.

    python -m dvt_ms stamp --ckpt X.ckpt --results outputs/eval/eval_results.json [--dst Y.ckpt]

Exit status: 0 stamped, 1 the files cannot be used (the message says why), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from ..checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from ..command import run_command
from ..flops import cumulative_gflops
from ..models import spec_for
from ..options import StampSettings, parse_command

PROG = "python -m dvt_ms stamp"

STAMPED_FIELDS = ("flops", "anytime_classification", "dynamic_threshold", "budgeted_batch_classification")


def _read_results(results_path: str) -> dict:
    try:
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"evaluation results not found: {results_path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{results_path}: not valid JSON ({err})") from None
    if not isinstance(results, dict):
        raise CheckpointError(f"{results_path}: not an eval_results.json (a JSON object written by dvt-eval)")
    missing = [k for k in STAMPED_FIELDS if results.get(k) is None]
    if missing:
        raise CheckpointError(f"{results_path}: no {', '.join(missing)} (write it with dvt-eval --eval_mode 2)")
    return results


def check_results_fit(results: dict, metadata: dict, ckpt: str, results_path: str) -> None:
    """A :class:`CheckpointError` unless ``results`` were computed for the model ``metadata`` records: the same
    model name, exit count, class count and per-exit GFLOPs (which catch any other width, depth or grid)."""
    model, args = metadata.get("model"), metadata.get("model_args") or {}
    if not model:
        raise CheckpointError(f"{ckpt} records no model (model, model_args), so the results cannot be checked "
                              "against it: stamp a checkpoint written by dvt-train or dvt-convert")
    try:
        spec = spec_for(model, **args)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{ckpt}: its recorded model {model!r} cannot be built ({err})") from None
    problems = []
    if results.get("model") not in (None, model):
        problems.append(f"the results are of model {results['model']!r}, the checkpoint is {model!r}")
    if results.get("num_classes") not in (None, spec.num_classes):
        problems.append(f"{results['num_classes']} classes vs {spec.num_classes}")
    exits = {len(results["flops"]), len(results["anytime_classification"])}
    exits |= {len(row) for row in results["dynamic_threshold"]}
    if exits != {spec.num_exits}:
        problems.append(f"{sorted(exits)} exits vs {spec.num_exits}")
    elif not np.allclose(results["flops"], cumulative_gflops(spec), rtol=1e-6, atol=0):
        problems.append(f"GFLOPs per exit {results['flops']} vs {cumulative_gflops(spec)} (another architecture)")
    if problems:
        raise CheckpointError(f"{results_path} was not computed for {ckpt}: {'; '.join(problems)}. Nothing was "
                              f"written; evaluate this checkpoint with dvt-eval --eval_mode 2 and stamp those results")


def stamp_checkpoint(ckpt: str, results_path: str, dst: str | None = None) -> dict:
    """Write ``dst`` (default: ``ckpt`` itself, replaced atomically) = the weights of ``ckpt`` + its metadata
    updated with :data:`STAMPED_FIELDS` from ``results_path``, once the results are checked against the model
    the checkpoint records (:func:`check_results_fit`). Returns the new metadata; on any error nothing is
    written."""
    results = _read_results(results_path)
    arrays, metadata = read_checkpoint(ckpt)
    metadata = dict(metadata or {})
    check_results_fit(results, metadata, ckpt, results_path)
    metadata.update({k: results[k] for k in STAMPED_FIELDS})
    save_checkpoint(arrays, dst or ckpt, metadata=metadata)
    return metadata


def _stamp(settings: StampSettings) -> str:
    meta = stamp_checkpoint(settings.ckpt, settings.results, settings.dst)
    points = len(meta["dynamic_threshold"])
    return (f"stamped {settings.dst or settings.ckpt}: {points} threshold sets, anytime top-1 "
            f"{', '.join(f'{a:.2f}' for a in meta['anytime_classification'])} ({os.path.basename(settings.results)})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stamp command; returns the exit status (see :mod:`dvt_ms.command`)."""
    return run_command(PROG, lambda: parse_command(StampSettings, argv, "Store calibrated thresholds and "
                                                   "evaluation figures in a checkpoint.", PROG),
                       _stamp, (CheckpointError,))


if __name__ == "__main__":
    sys.exit(main())
