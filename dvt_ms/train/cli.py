"""``dvt-train`` (``python -m dvt_ms train``): train or fine-tune a DVT cascade (one device, or data
parallel under msrun / a rank table).

Usage::

    dvt-train -c configs/dvt_t2t_vit_12.yaml --data_dir /data/imagenet [--any_flag value ...]
    python -m dvt_ms train -c configs/dvt_tiny_cpu.yaml --data_dir ./data --device_target CPU

Every flag is a key of the flat YAML config (defaults < YAML < command line). The run directory
(``--ckpt_save_dir``) receives the resolved ``config.yaml``, ``latest.ckpt``, ``best.ckpt``,
``latest.state.ckpt``, ``results.json`` and ``logs/train_rank<N>.log``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..checkpoint import CheckpointError
from ..command import run_command
from ..data import DataError
from ..options import TrainSettings, parse_command
from .logs import LOGGER_NAME, PROG


def load_settings(argv: Sequence[str] | None) -> TrainSettings:
    """Defaults < YAML < command line, checked (:class:`~dvt_ms.options.TrainSettings`)."""
    return parse_command(TrainSettings, argv, __doc__.split("\n\n")[0], PROG)


def _train(settings: TrainSettings) -> None:
    from .run import train

    train(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dvt-train``; returns the exit status (see :mod:`dvt_ms.command`)."""
    from .distributed import LaunchError
    from .run_state import ResumeError
    from .trainer import TrainingDiverged

    return run_command(PROG, lambda: load_settings(argv), _train,
                       (DataError, CheckpointError, ResumeError, LaunchError, TrainingDiverged), LOGGER_NAME)


if __name__ == "__main__":
    sys.exit(main())
