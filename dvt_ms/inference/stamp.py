"""Store calibrated thresholds and the evaluation figures inside a checkpoint.

After a mode-2 evaluation, ``eval_results.json`` holds what the official checkpoints carry next to
their weights (``flops``, ``anytime_classification``, ``dynamic_threshold``,
``budgeted_batch_classification``). Stamping copies those fields into the checkpoint's metadata, so
that ``dvt-eval --eval_mode 0`` prints them and ``--eval_mode 1`` reuses the thresholds without
calibrating again. The weights are copied unchanged; the output is written atomically.

    python -m dvt_ms stamp --ckpt X.ckpt --results outputs/eval/eval_results.json [--dst Y.ckpt]

Exit status: 0 stamped, 1 the files cannot be used (the message says why), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from ..checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from ..command import run_command
from ..options import StampSettings, parse_command

PROG = "python -m dvt_ms stamp"

STAMPED_FIELDS = ("model", "flops", "anytime_classification", "dynamic_threshold", "budgeted_batch_classification")


def stamp_checkpoint(ckpt: str, results_path: str, dst: str | None = None) -> dict:
    """Write ``dst`` (default: ``ckpt`` itself) = the weights of ``ckpt`` + the metadata of ``ckpt``
    updated with :data:`STAMPED_FIELDS` from ``results_path``. Returns the new metadata."""
    try:
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"evaluation results not found: {results_path}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{results_path}: not valid JSON ({err})") from None
    missing = [k for k in STAMPED_FIELDS if k not in results]
    if missing:
        raise CheckpointError(f"{results_path}: no {', '.join(missing)} (write it with dvt-eval --eval_mode 2)")
    arrays, metadata = read_checkpoint(ckpt)
    metadata = {**(metadata or {}), **{k: results[k] for k in STAMPED_FIELDS}}
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
