"""The epoch loop: feed batches to the compiled train step, log, validate, checkpoint, record results."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn

from ..data.errors import DataError
from ..data.train_pipeline import TrainData, data_error_from
from .distributed import Runtime, sum_over_devices, weight_spread
from .ema import EMA
from .logs import format_duration
from .run_state import CheckpointManager, RunRecord
from .train_step import TrainStep
from .validate import Accuracy


class TrainingDiverged(RuntimeError):
    """Training cannot go on: the loss stayed NaN/inf too long, or every step of an epoch overflowed."""


@dataclass
class LoopSettings:
    """How the loop runs: total epochs, global batch, log/validation intervals, sink mode."""

    epochs: int
    global_batch: int
    log_interval: int = 100
    val_interval: int = 1
    sink_mode: bool = False
    max_bad_steps: int = 100  # consecutive NaN/inf-loss steps tolerated (0: no limit)


def sink_size_for(steps_per_epoch: int, log_interval: int) -> int:
    """Steps per device-queue call: the largest divisor of ``steps_per_epoch`` not above ``log_interval``."""
    for size in range(max(1, min(log_interval, steps_per_epoch)), 0, -1):
        if steps_per_epoch % size == 0:
            return size
    return 1


class Trainer:
    """Runs epochs ``progress.epoch .. settings.epochs - 1`` of ``train_step`` on ``data``.

    After each epoch: the mean loss of every exit, validation (when due: every ``val_interval`` epochs
    and after the last), checkpoints through ``ckpt`` and one entry in ``results.json``.
    """

    def __init__(self, train_step: TrainStep, model: nn.Cell, data: TrainData, runtime: Runtime,
                 ckpt: CheckpointManager, settings: LoopSettings, logger: logging.Logger,
                 validate: Callable[[], Accuracy] | None = None, ema: EMA | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.step, self.model, self.data, self.runtime = train_step, model, data, runtime
        self.ckpt, self.settings, self.log = ckpt, settings, logger
        self.validate, self.ema, self.metadata = validate, ema, dict(metadata or {})
        self.steps_per_epoch = data.steps_per_epoch
        # PyNative mode: the train step is still one compiled graph; validation and the loop run eagerly.
        self.step_fn = ms.jit(train_step) if runtime.mode == 1 else train_step

    def _batches(self, start_epoch: int):
        dataset = self.data.dataset(start_epoch, self.settings.epochs - start_epoch)
        if self.settings.sink_mode and self.runtime.device_target in ("Ascend", "GPU"):
            size = sink_size_for(self.steps_per_epoch, self.settings.log_interval)
            return ms.data_sink(self.step_fn, dataset, sink_size=size), size
        if self.settings.sink_mode:
            self.log.info("dataset_sink_mode needs Ascend or GPU; feeding batches from the host on %s",
                          self.runtime.device_target)
        iterator = dataset.create_tuple_iterator(num_epochs=1)
        return (lambda: self.step_fn(*next(iterator))), 1

    def fit(self, progress: RunRecord) -> RunRecord:
        """Train until ``settings.epochs`` epochs are done; returns the final progress."""
        s = self.settings
        if progress.epoch >= s.epochs:
            self.log.info("all %d epochs are already done", s.epochs)
            return progress
        run_step, per_call = self._batches(progress.epoch)
        self.step.set_train(True)
        self.step.sync_masks()  # the masks of the step the run starts (or resumes) at
        self.step.take_loss_sums()
        timed_steps, timed_seconds = 0, 0.0
        first_call = True
        for epoch in range(progress.epoch, s.epochs):
            epoch_start = time.perf_counter()
            compile_seconds = 0.0
            overflows_before = int(self.step.loss_scaler.overflows.asnumpy())
            epoch_sums, epoch_count = None, 0
            window_start, window_steps = time.perf_counter(), 0
            done = 0
            while done < self.steps_per_epoch:
                t0 = time.perf_counter()
                try:
                    _, _, lr, _, _ = run_step()
                except StopIteration:
                    raise DataError("the training pipeline ended early (fewer batches than expected)") from None
                except RuntimeError as err:
                    data_err = data_error_from(err)
                    if data_err is not None:
                        raise data_err from None
                    raise
                if first_call:  # graph compilation: keep it out of speeds and ETAs
                    compile_seconds = time.perf_counter() - t0
                    window_start += compile_seconds
                    self.log.info("first step (graph compilation included): %.1f s", compile_seconds)
                    first_call = False
                done += per_call
                progress.global_step += per_call
                window_steps += per_call
                if window_steps >= s.log_interval or done >= self.steps_per_epoch:
                    self._check_bad_steps(epoch, done)
                    sums, count = self.step.take_loss_sums()  # reading the sums waits for the device
                    epoch_sums = sums if epoch_sums is None else epoch_sums + sums
                    epoch_count += count
                    window = max(time.perf_counter() - window_start, 1e-9)
                    timed_steps, timed_seconds = timed_steps + window_steps, timed_seconds + window
                    remaining = (s.epochs - epoch) * self.steps_per_epoch - done
                    self._log_step(epoch, done, sums / max(count, 1), float(lr.asnumpy()),
                                   window_steps * s.global_batch / window, timed_seconds / timed_steps * remaining)
                    window_start, window_steps = time.perf_counter(), 0
            train_loss = (epoch_sums / max(epoch_count, 1)).astype(np.float64)
            if self.runtime.distributed:  # each device saw its own shard: report the mean over all of them
                train_loss = sum_over_devices(self.runtime, train_loss) / self.runtime.group_size
            train_loss = [float(v) for v in train_loss]
            skipped = int(self.step.loss_scaler.overflows.asnumpy()) - overflows_before
            if skipped >= self.steps_per_epoch and not self.step.loss_scaler.dynamic:
                raise TrainingDiverged(f"epoch {epoch + 1}: the gradients of every step overflowed (inf/NaN) with the "
                                       f"fixed loss scale {float(self.step.loss_scaler.scale.asnumpy()):g}, so "
                                       "nothing was trained; lower --loss_scale or --lr, set --clip_grad, or use "
                                       "--amp_level O0")
            train_seconds = time.perf_counter() - epoch_start
            speed = self.steps_per_epoch * s.global_batch / max(train_seconds - compile_seconds, 1e-9)
            progress.epoch = epoch + 1
            self._end_epoch(progress, train_loss, float(lr.asnumpy()), speed, train_seconds)
        return progress

    def _check_bad_steps(self, epoch: int, step: int) -> None:
        worst, limit = self.step.take_worst_streak(), self.settings.max_bad_steps
        if limit and worst > limit:
            raise TrainingDiverged(
                f"epoch {epoch + 1} step {step}: the loss was NaN/inf for {worst} steps in a row (more than "
                f"--max_bad_steps {limit}); those steps changed no weight. Stopped; the checkpoints of the last "
                "finished epoch are kept. Lower --lr, set --clip_grad, or use --amp_level O0")

    def _log_step(self, epoch: int, step: int, losses: np.ndarray, lr: float, speed: float, eta: float) -> None:
        scaler = self.step.loss_scaler
        self.log.info(
            "epoch %d/%d step %d/%d loss %s (sum %.4f) lr %.3e %.1f img/s eta %s loss_scale %g overflow_skips %d",
            epoch + 1, self.settings.epochs, step, self.steps_per_epoch, "/".join(f"{v:.4f}" for v in losses),
            float(losses.sum()), lr, speed, format_duration(eta), float(scaler.scale.asnumpy()),
            int(scaler.overflows.asnumpy()))

    def _due_validation(self, epoch: int) -> bool:
        interval = self.settings.val_interval
        return self.validate is not None and interval > 0 and (epoch % interval == 0 or epoch == self.settings.epochs)

    def _end_epoch(self, progress: RunRecord, train_loss: list[float], lr: float, speed: float,
                   seconds: float) -> None:
        epoch = progress.epoch
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "val_top1": None, "val_top5": None,
                                 "lr": lr, "img_per_sec": speed, "epoch_seconds": seconds}
        is_best = False
        if self._due_validation(epoch):
            acc = self.validate()
            entry["val_top1"], entry["val_top5"] = acc.top1, acc.top5
            is_best = progress.best_top1 is None or acc.top1[-1] > progress.best_top1
            if is_best:
                progress.best_top1, progress.best_epoch = acc.top1[-1], epoch
            if self.ema is not None:
                params = self.model.trainable_params()
                saved = self.ema.swap_into(params)
                try:
                    ema_acc = self.validate()
                finally:
                    self.ema.restore(params, saved)
                entry["val_top1_ema"], entry["val_top5_ema"] = ema_acc.top1, ema_acc.top5
            self.log.info("epoch %d/%d val top-1 %s top-5 %s (%d images)%s", epoch, self.settings.epochs,
                          "/".join(f"{v:.2f}" for v in acc.top1), "/".join(f"{v:.2f}" for v in acc.top5), acc.count,
                          f" | EMA top-1 {'/'.join(f'{v:.2f}' for v in entry['val_top1_ema'])}"
                          if self.ema is not None else "")
        if self.runtime.distributed:
            entry["weight_spread_across_ranks"] = weight_spread(self.runtime, self.model.get_parameters())
            self.log.info("largest weight difference between devices: %g", entry["weight_spread_across_ranks"])
        progress.results.append(entry)
        ema_weights = self.ema.shadow_arrays() if self.ema is not None else None
        if ema_weights is not None:
            frozen = {p.name: p.asnumpy() for p in self.model.get_parameters() if not p.requires_grad}
            ema_weights = {**frozen, **ema_weights}
        self.ckpt.save(self.step, self.model, progress, self.metadata, is_best, ema_weights)
        self.ckpt.write_results(progress.results)
        self.log.info("epoch %d/%d done in %s: train loss %s, %.1f img/s%s", epoch, self.settings.epochs,
                      format_duration(seconds), "/".join(f"{v:.4f}" for v in train_loss), speed,
                      f", best last-exit top-1 {progress.best_top1:.2f} (epoch {progress.best_epoch})"
                      if progress.best_top1 is not None else "")
