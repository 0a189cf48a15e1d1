"""The epoch loop: feed batches to the compiled train step, log, validate, checkpoint, record results.

A run left for days meets interruptions; the loop turns each into something a user can act on:

* Ctrl-C (SIGINT) or SIGTERM on one device: the step under way finishes, the state is saved (inside an epoch
  too) and the run ends with :class:`~dvt_ms.command.Interrupted` (status 130) naming the state to
  ``--resume`` from; a second signal stops at once. The data workers ignore SIGINT, which a terminal sends to
  the whole process group.
* a lost data worker (killed, e.g. by the out-of-memory killer): the run ends at once with status 1 and one
  line naming the worker, the likely cause and the state to resume from, once any checkpoint being
  written is complete (:class:`~dvt_ms.data.workers.WorkerWatch`);
* ``ckpt_every_steps``: the state is also saved inside epochs, so little is lost to a crash.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn

from .. import interrupts
from ..command import Interrupted, abort
from ..data.errors import DataError
from ..data.train_pipeline import TrainData, data_error_from
from ..data.workers import LostWorker, WorkerWatch, workers_ignore_sigint
from .distributed import Runtime, gather_over_devices, sum_over_devices, weight_spread
from .ema import EMA
from .logs import PROG, format_duration
from .run_state import CheckpointManager, ResumeError, RunRecord
from .train_step import TrainStep
from .validate import Accuracy


class TrainingDiverged(RuntimeError):
    """Training cannot go on: the loss stayed NaN/inf too long, or every step of an epoch overflowed."""


@dataclass
class LoopSettings:
    """How the loop runs: total epochs, global batch, log/validation intervals, sink mode, step checkpoints."""

    epochs: int
    global_batch: int
    log_interval: int = 100
    val_interval: int = 1
    sink_mode: bool = False
    max_bad_steps: int = 100  # consecutive NaN/inf-loss steps tolerated (0: no limit)
    ckpt_every_steps: int = 0  # save the state every this many steps inside epochs (0: never)


@dataclass
class EpochTally:
    """The running figures of an epoch: the per-exit loss sums read from the step so far, their step count,
    and the loss scaler's overflow count when the epoch began. A state saved inside an epoch keeps every
    rank's (:meth:`vector`), so the resumed epoch reports what an uninterrupted one would."""

    loss_sums: np.ndarray
    loss_steps: int = 0
    overflows_at_start: int = 0

    @classmethod
    def start(cls, num_exits: int, overflows: int) -> EpochTally:
        return cls(np.zeros(num_exits, np.float32), 0, overflows)

    def add(self, sums: np.ndarray, steps: int) -> None:
        self.loss_sums = self.loss_sums + sums
        self.loss_steps += steps

    def mean_loss(self) -> np.ndarray:
        return (self.loss_sums / max(self.loss_steps, 1)).astype(np.float64)

    def vector(self) -> np.ndarray:
        """``[loss_steps, overflows_at_start, *loss_sums]`` as float32 (exact for counts below 2^24)."""
        return np.concatenate([np.asarray([self.loss_steps, self.overflows_at_start], np.float32), self.loss_sums])

    @classmethod
    def from_vector(cls, values) -> EpochTally:
        values = np.asarray(values, np.float32)
        return cls(values[2:].copy(), int(values[0]), int(values[1]))


def sink_size_for(steps_per_epoch: int, log_interval: int) -> int:
    """Steps per device-queue call: the largest divisor of ``steps_per_epoch`` not above ``log_interval``."""
    for size in range(max(1, min(log_interval, steps_per_epoch)), 0, -1):
        if steps_per_epoch % size == 0:
            return size
    return 1


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in ``(before, after]`` (never for ``every`` 0)."""
    return every > 0 and before // every != after // every


class _Feed:
    """Runs the train step on the pipeline's next batch (or ``per_call`` batches through the device queue)."""

    def __init__(self, run: Callable[[], Any], per_call: int, iterator: Any = None) -> None:
        self.run, self.per_call, self.iterator = run, per_call, iterator

    def step(self) -> Any:
        try:
            return self.run()
        except StopIteration:
            raise DataError("the training pipeline ended early (fewer batches than expected)") from None
        except RuntimeError as err:
            data_err = data_error_from(err)
            if data_err is not None:
                raise data_err from None
            raise

    def stop(self) -> None:
        if self.iterator is not None:
            self.iterator.stop()


class Trainer:
    """Runs epochs ``progress.epoch .. settings.epochs - 1`` of ``train_step`` on ``data``, from step
    ``progress.step_in_epoch`` of the first.

    After each epoch: the mean loss of every exit, validation (when due: every ``val_interval`` epochs
    and after the last), checkpoints through ``ckpt`` and one entry in ``results.json``.
    """

    def __init__(self, train_step: TrainStep, model: nn.Cell, data: TrainData, runtime: Runtime,
                 ckpt: CheckpointManager, settings: LoopSettings, logger: logging.Logger,
                 validate: Callable[[], Accuracy] | None = None, ema: EMA | None = None,
                 metadata: dict[str, Any] | None = None, results_extra: dict[str, Any] | None = None) -> None:
        self.step, self.model, self.data, self.runtime = train_step, model, data, runtime
        self.ckpt, self.settings, self.log = ckpt, settings, logger
        self.validate, self.ema, self.metadata = validate, ema, dict(metadata or {})
        self.results_extra = dict(results_extra or {})
        self.steps_per_epoch = data.steps_per_epoch
        # PyNative mode: the train step is still one compiled graph; validation and the loop run eagerly.
        self.step_fn = ms.jit(train_step) if runtime.mode == 1 else train_step
        self.progress = RunRecord()

    # ---- the pipeline, interrupts and lost workers ------------------------------------------------------

    def _feed(self, start_epoch: int, start_step: int) -> _Feed:
        dataset = self.data.dataset(start_epoch, self.settings.epochs - start_epoch, start_step)
        if self.settings.sink_mode and self.runtime.device_target in ("Ascend", "GPU"):
            size = sink_size_for(self.steps_per_epoch, self.settings.log_interval)
            return _Feed(ms.data_sink(self.step_fn, dataset, sink_size=size), size)
        if self.settings.sink_mode:
            self.log.info("dataset_sink_mode needs Ascend or GPU; feeding batches from the host on %s",
                          self.runtime.device_target)
        with workers_ignore_sigint():  # the workers start with the iterator
            iterator = dataset.create_tuple_iterator(num_epochs=1)
        return _Feed(lambda: self.step_fn(*next(iterator)), 1, iterator)

    def _interruptible(self) -> contextlib.AbstractContextManager:
        """On one device, an interrupt (:mod:`dvt_ms.interrupts`: Ctrl-C or SIGTERM inside a command) is acted
        on after the step under way; a data-parallel run keeps the default handlers: its ranks could not agree
        on a step to stop at once one of them is gone, and msrun ends the whole job."""
        return interrupts.immediate() if self.runtime.distributed else contextlib.nullcontext()

    def _lost_worker(self, lost: LostWorker) -> None:
        """Called by the worker watch: report, then end the process once no checkpoint is being written."""
        with self.ckpt.lock:
            message = f"{lost.describe()} at {self.progress.position()}; {self.ckpt.resume_hint()}"
            self.log.error(message)
            abort(PROG, message)

    # ---- the loop ---------------------------------------------------------------------------------------

    def fit(self, progress: RunRecord) -> RunRecord:
        """Train until ``settings.epochs`` epochs are done; returns the final progress. Raises
        :class:`~dvt_ms.command.Interrupted` after saving the state when interrupted."""
        s = self.settings
        self.progress = progress
        if progress.epoch >= s.epochs:
            self.log.info("all %d epochs are already done", s.epochs)
            return progress
        self.step.set_train(True)
        self.step.sync_masks()  # the masks of the step the run starts (or resumes) at
        self._clock = _Clock()
        with self._interruptible(), WorkerWatch(self._lost_worker) as watch:
            feed = self._feed(progress.epoch, progress.step_in_epoch)
            try:
                for epoch in range(progress.epoch, s.epochs):
                    self._train_epoch(epoch, feed)
                    if epoch + 1 < s.epochs and interrupts.requested():
                        self._interrupt()
            except DataError as err:  # an image the run cannot read: say where to continue once it is fixed
                raise DataError(f"{err}; {self.ckpt.resume_hint()}") from None
            finally:
                watch.stop()  # before the pipeline's workers end with it
                feed.stop()
        return progress

    def _interrupt(self) -> None:
        raise Interrupted(f"stopped at {self.progress.position()}; {self.ckpt.resume_hint()}")

    def _rank_states(self, tally: EpochTally) -> list[list[float]]:
        """Every rank's tally and log counters (gathered over the devices: rank 0 alone writes the state)."""
        own = np.concatenate([tally.vector(), self.step.log_counters()])
        return gather_over_devices(self.runtime, own).tolist()

    def _resumed_tally(self, epoch: int) -> EpochTally:
        """This rank's tally and log counters as the state holds them (a fresh tally for a fresh epoch)."""
        progress, exits = self.progress, self.model.num_exits
        rows = progress.rank_states
        if len(rows) != self.runtime.group_size:
            if progress.step_in_epoch:
                raise ResumeError(f"the state was saved inside epoch {epoch + 1} by {len(rows)} processes: resume "
                                  f"it on as many (this run has {self.runtime.group_size}), or from the state of "
                                  "an epoch's end")
            rows = []
        if rows:
            row = rows[self.runtime.rank]
            self.step.set_log_counters(row[exits + 2:])
            if progress.step_in_epoch:
                return EpochTally.from_vector(row[:exits + 2])
        return EpochTally.start(exits, int(self.step.loss_scaler.overflows.asnumpy()))

    def _train_epoch(self, epoch: int, feed: _Feed) -> None:
        s, progress = self.settings, self.progress
        if progress.step_in_epoch:
            self.log.info("continuing epoch %d from step %d", epoch + 1, progress.step_in_epoch)
        tally = self._resumed_tally(epoch) if progress.rank_states else EpochTally.start(
            self.model.num_exits, int(self.step.loss_scaler.overflows.asnumpy()))
        progress.rank_states = []
        clock = self._clock
        clock.start_epoch()
        lr = None
        while progress.step_in_epoch < self.steps_per_epoch:
            clock.start_step()
            _, _, lr, _, _ = feed.step()
            clock.end_step(feed.per_call, self.log)
            before = progress.step_in_epoch
            progress.step_in_epoch += feed.per_call
            progress.global_step += feed.per_call
            done = progress.step_in_epoch
            at_log = crossed(before, done, s.log_interval) or done >= self.steps_per_epoch
            if at_log:
                self._check_bad_steps(epoch, done)
                sums, count = self.step.take_loss_sums()  # reading the sums waits for the device
                tally.add(sums, count)
                remaining = (s.epochs - epoch) * self.steps_per_epoch - done
                self._log_step(epoch, done, sums / max(count, 1), float(lr.asnumpy()), clock.window_speed(
                    s.global_batch), clock.seconds_per_step() * remaining)
            if done >= self.steps_per_epoch:
                break
            stop = interrupts.requested()
            if stop or crossed(progress.global_step - feed.per_call, progress.global_step, s.ckpt_every_steps):
                progress.rank_states = self._rank_states(tally)
                self.ckpt.save_step(self.step, progress, self.metadata)
                progress.rank_states = []
                if stop:
                    self._interrupt()
        self._finish_epoch(epoch, tally, float(lr.asnumpy()) if lr is not None else float("nan"))

    def _finish_epoch(self, epoch: int, tally: EpochTally, lr: float) -> None:
        progress = self.progress
        train_loss = tally.mean_loss()
        if self.runtime.distributed:  # each device saw its own shard: report the mean over all of them
            train_loss = sum_over_devices(self.runtime, train_loss) / self.runtime.group_size
        skipped = int(self.step.loss_scaler.overflows.asnumpy()) - tally.overflows_at_start
        if skipped >= self.steps_per_epoch and not self.step.loss_scaler.dynamic:
            raise TrainingDiverged(f"epoch {epoch + 1}: the gradients of every step overflowed (inf/NaN) with the "
                                   f"fixed loss scale {float(self.step.loss_scaler.scale.asnumpy()):g}, so "
                                   "nothing was trained; lower --loss_scale or --lr, set --clip_grad, or use "
                                   "--amp_level O0")
        seconds, speed = self._clock.end_epoch(self.settings.global_batch)
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        self._end_epoch(progress, [float(v) for v in train_loss], lr, speed, seconds)

    def _check_bad_steps(self, epoch: int, step: int) -> None:
        worst, limit = self.step.take_worst_streak(), self.settings.max_bad_steps
        if limit and worst > limit:
            raise TrainingDiverged(
                f"epoch {epoch + 1} step {step}: the loss was NaN/inf for {worst} steps in a row (more than "
                f"--max_bad_steps {limit}); those steps changed no weight. Stopped; {self.ckpt.resume_hint()}. "
                "Lower --lr, set --clip_grad, or use --amp_level O0")

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
            with interrupts.held():  # an interrupt is acted on once the epoch is validated and saved
                acc = self.validate()
            entry["val_top1"], entry["val_top5"] = acc.top1, acc.top5
            is_best = progress.best_top1 is None or acc.top1[-1] > progress.best_top1
            if is_best:
                progress.best_top1, progress.best_epoch = acc.top1[-1], epoch
            if self.ema is not None:
                params = self.model.trainable_params()
                saved = self.ema.swap_into(params)
                try:
                    with interrupts.held():
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
        progress.rank_states = self._rank_states(EpochTally.start(self.model.num_exits, 0))
        self.ckpt.save(self.step, self.model, progress, self.metadata, is_best, ema_weights)
        progress.rank_states = []
        self.ckpt.write_results(progress.results, self.results_extra)
        self.log.info("epoch %d/%d done in %s: train loss %s, %.1f img/s%s", epoch, self.settings.epochs,
                      format_duration(seconds), "/".join(f"{v:.4f}" for v in train_loss), speed,
                      f", best last-exit top-1 {progress.best_top1:.2f} (epoch {progress.best_epoch})"
                      if progress.best_top1 is not None else "")


class _Clock:
    """Times the loop: the first step (graph compilation) apart, log windows, the steps run this epoch."""

    def __init__(self) -> None:
        self.first = True
        self.timed_steps, self.timed_seconds = 0, 0.0

    def start_epoch(self) -> None:
        self.epoch_start = self.window_start = time.perf_counter()
        self.compile_seconds, self.window_steps, self.epoch_steps = 0.0, 0, 0

    def start_step(self) -> None:
        self.step_start = time.perf_counter()

    def end_step(self, steps: int, log: logging.Logger) -> None:
        if self.first:  # graph compilation: keep it out of speeds and ETAs
            self.compile_seconds = time.perf_counter() - self.step_start
            self.window_start += self.compile_seconds
            log.info("first step (graph compilation included): %.1f s", self.compile_seconds)
            self.first = False
        self.window_steps += steps
        self.epoch_steps += steps

    def window_speed(self, global_batch: int) -> float:
        """Images per second since the last call (or the epoch's start); starts the next window."""
        seconds = max(time.perf_counter() - self.window_start, 1e-9)
        speed = self.window_steps * global_batch / seconds
        self.timed_steps += self.window_steps
        self.timed_seconds += seconds
        self.window_start, self.window_steps = time.perf_counter(), 0
        return speed

    def seconds_per_step(self) -> float:
        return self.timed_seconds / max(self.timed_steps, 1)

    def end_epoch(self, global_batch: int) -> tuple[float, float]:
        """The epoch's seconds and its speed over the steps run in this process (compilation left out)."""
        seconds = time.perf_counter() - self.epoch_start
        return seconds, self.epoch_steps * global_batch / max(seconds - self.compile_seconds, 1e-9)
