"""Store calibrated thresholds and the evaluation figures inside a checkpoint.

After a mode-2 evaluation, ``eval_results.json`` holds what the official checkpoints carry next to
their weights (``flops``, ``anytime_classification``, ``dynamic_threshold``,
``budgeted_batch_classification``). Stamping copies those fields into the checkpoint's metadata, so
that ``dvt-eval --eval_mode 0`` prints them and ``--eval_mode 1`` reuses the thresholds without
calibrating again. The weights are copied unchanged; the output is written atomically.

    python -m dvt_ms.inference.stamp --ckpt X.ckpt --results outputs/eval/eval_results.json [--dst Y.ckpt]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..checkpoint import CheckpointError, read_checkpoint, save_checkpoint

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Store calibrated thresholds and evaluation figures in a checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint whose weights are kept")
    parser.add_argument("--results", required=True, help="eval_results.json written by dvt-eval")
    parser.add_argument("--dst", default=None, help="output checkpoint (default: overwrite --ckpt)")
    args = parser.parse_args(argv)
    try:
        meta = stamp_checkpoint(args.ckpt, args.results, args.dst)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    points = len(meta["dynamic_threshold"])
    print(f"stamped {args.dst or args.ckpt}: {points} threshold sets, anytime top-1 "
          f"{', '.join(f'{a:.2f}' for a in meta['anytime_classification'])} ({os.path.basename(args.results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
