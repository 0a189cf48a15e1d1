"""``dvt-eval`` (``python -m dvt_ms eval``, ``scripts/run_eval.sh``): evaluate a DVT checkpoint.

    dvt-eval -c configs/dvt_t2t_vit_12.yaml --ckpt dvt_t2t_vit_12.ckpt --data_dir /data/imagenet --eval_mode 1
    dvt-eval --ckpt X.ckpt --data_dir /data/imagenet --eval_mode 2 --calib_size 50000 --budget 1.0
    dvt-eval --ckpt X.ckpt --eval_mode 0

Exit status: 0 on success, 1 when the evaluation cannot run (the message says why), 2 for bad
command-line usage or config files.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..checkpoint import CheckpointError
from ..command import run_command
from ..data import DataError
from ..options import EvalSettings, parse_command

PROG = "dvt-eval"
DESCRIPTION = ("Evaluate a Dynamic Vision Transformer with real early exit: anytime accuracy of every exit, "
               "the budgeted-batch curve (official modes 0/1/2), one operating point run for real, and its "
               "measured vs FLOPs-predicted speed-up.")


def _evaluate(settings: EvalSettings) -> str:
    from .evaluate import evaluate, summary

    return summary(evaluate(settings))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dvt-eval`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    from .evaluate import EvalError
    from .operating_point import ThresholdError

    return run_command(PROG, lambda: parse_command(EvalSettings, argv, DESCRIPTION, PROG), _evaluate,
                       (EvalError, ThresholdError, DataError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
