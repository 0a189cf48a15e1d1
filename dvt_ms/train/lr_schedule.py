"""Per-step learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

import numpy as np


def scaled_lr(lr: float, global_batch: int, base_batch: int | None) -> float:
    """``lr`` quoted for a global batch of ``base_batch``, scaled linearly to ``global_batch``
    (unchanged when ``base_batch`` is None)."""
    if base_batch is None:
        return float(lr)
    if base_batch <= 0:
        raise ValueError(f"lr_base_batch must be positive, got {base_batch}")
    return float(lr) * global_batch / base_batch


def cosine_schedule(lr: float, min_lr: float, total_steps: int, warmup_steps: int = 0,
                    warmup_lr: float = 0.0) -> np.ndarray:
    """Learning rate of every optimizer step (float32 array of length ``total_steps``).

    Step ``s < warmup_steps`` goes linearly from ``warmup_lr`` towards ``lr``
    (``warmup_lr + (lr - warmup_lr) * s / warmup_steps``); after that a half cosine goes from ``lr`` at
    the end of warm-up to ``min_lr`` at the last step, never below ``min_lr``.
    """
    if total_steps < 1:
        raise ValueError(f"the schedule needs at least one step, got total_steps={total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warm-up of {warmup_steps} steps does not fit in {total_steps} steps")
    if min_lr > lr:
        raise ValueError(f"min_lr {min_lr} is above lr {lr}")
    steps = np.arange(total_steps, dtype=np.float64)
    out = np.empty(total_steps, dtype=np.float64)
    warm = steps < warmup_steps
    if warmup_steps:
        out[warm] = warmup_lr + (lr - warmup_lr) * steps[warm] / warmup_steps
    decay_steps = total_steps - warmup_steps
    t = (steps[~warm] - warmup_steps) / max(decay_steps - 1, 1)
    out[~warm] = min_lr + 0.5 * (lr - min_lr) * (1.0 + np.cos(math.pi * t))
    return out.astype(np.float32)
