"""Training as a chain of factories: :func:`train` builds, line by line, what the next line needs.

    from dvt_ms.options import TrainSettings
    from dvt_ms.train import train
    result = train(TrainSettings(model="dvt_tiny_cpu", data_dir="data/digits", epoch_size=2))

The run directory (``ckpt_save_dir``) receives the resolved ``config.yaml``, ``latest.ckpt``,
``best.ckpt``, ``latest.state.ckpt``, ``results.json`` and ``logs/train_rank<N>.log``. The builders
(:func:`build_training_model`, :func:`build_train_step`, ...) are public so that benchmarks and the
graph audit compile exactly what training runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import mindspore as ms
from mindspore import nn

from ..amp import apply_precision
from ..config import ConfigError, dump_yaml
from ..data import DataError, build_eval_dataset, default_crop_pct
from ..data.train_pipeline import TrainData, open_train_reader
from ..flops import cumulative_gflops
from ..models import CascadeSpec
from ..models.layers import bind_masks
from ..options import TrainSettings
from .data_check import DataCheck, check_training_images
from .distributed import Runtime, grad_reducer, init_runtime
from .ema import EMA
from .logs import training_log
from .loss import NetWithLoss
from .loss_scale import LossScaling, resolve_loss_scale_type
from .lr_schedule import cosine_schedule, scaled_lr
from .optimizer import AdamW, param_groups
from .pretrained import load_pretrained
from .run_state import CheckpointManager, RunRecord, find_state, load_state
from .train_step import TrainStep
from .trainer import LoopSettings, Trainer
from .validate import Accuracy, exit_accuracy

__all__ = ["TrainResult", "build_train_data", "build_train_step", "build_training_model", "build_val_data",
           "settings_for_data", "train"]


@dataclass
class TrainResult:
    """How a :func:`train` run ended: epochs done, the best last-exit top-1 (None without validation)
    and its epoch, the step count and the run directory."""

    epochs: int
    global_step: int
    best_top1: float | None
    best_epoch: int | None
    run_dir: str


def settings_for_data(settings: TrainSettings, reader: Any, log: logging.Logger) -> TrainSettings:
    """``settings`` with ``num_classes`` set to the training split's class count when the config left it unset
    (a logged note); a :class:`~dvt_ms.config.ConfigError` when the config or a flag sets another count."""
    classes = getattr(reader, "classes", None)
    if not classes:
        return settings
    if settings.num_classes is None:
        log.info("num_classes %d: the class folders of %s (set --num_classes to say so)", len(classes),
                 getattr(reader, "root", settings.data_dir))
        return settings.replace(num_classes=len(classes))
    if settings.num_classes != len(classes):
        where = f" ({settings.config_file})" if getattr(settings, "config_file", None) else ""
        raise ConfigError(f"--num_classes {settings.num_classes}{where} but the training data "
                          f"{getattr(reader, 'root', settings.data_dir)} has {len(classes)} classes: pass "
                          f"--num_classes {len(classes)}")
    return settings


def build_train_data(settings: TrainSettings, reader: Any, spec: CascadeSpec, runtime: Runtime,
                     log: logging.Logger) -> tuple[TrainData, DataCheck]:
    """The training split ``reader``, checked (``--data_check``, ``--bad_images``), sharded for this rank, with
    the configured augmentation; and what the check found."""
    reader, check = check_training_images(reader, settings.data_check, settings.bad_images,
                                          settings.num_parallel_workers, runtime, settings.ckpt_save_dir, log)
    return TrainData(
        reader, settings.batch_size, spec.num_classes, spec.img_size, seed=settings.seed,
        num_shards=runtime.group_size, shard_id=runtime.rank, shuffle=settings.shuffle, crop_scale=settings.crop_scale,
        crop_ratio=settings.crop_ratio, random_crop=settings.random_crop, hflip=settings.hflip,
        auto_augment=settings.auto_augment, color_jitter=settings.color_jitter, reprob=settings.reprob,
        mixup=settings.mixup, cutmix=settings.cutmix, mixup_prob=settings.mixup_prob,
        mixup_switch_prob=settings.mixup_switch_prob, smoothing=settings.smoothing,
        num_parallel_workers=settings.num_parallel_workers, skip_unreadable=settings.bad_images == "skip"), check


def build_val_data(settings: TrainSettings, spec: CascadeSpec):
    """The validation split with the evaluation transform, or None when ``val_interval`` is 0."""
    if not settings.val_interval:
        return None
    return build_eval_dataset(settings.dataset, settings.data_dir, "val", spec.img_size, settings.crop_pct)


def build_training_model(settings: TrainSettings, runtime: Runtime, log: logging.Logger) -> nn.Cell:
    """The cascade of the config, with ``--pretrained`` weights and the ``--amp_level`` precision policy applied."""
    model = settings.build_model()
    if settings.pretrained:
        for note in load_pretrained(model, settings.pretrained):
            log.info(note)
    apply_precision(model, settings.amp_level, settings.amp_dtype)
    return model  # static shapes: the train step has a fixed batch and validation pads its last batch


def build_train_step(settings: TrainSettings, model: nn.Cell, steps_per_epoch: int, runtime: Runtime,
                     log: logging.Logger) -> tuple[TrainStep, EMA | None]:
    """The compiled train step (loss, AdamW, schedule, loss scale, clipping, EMA, gradient all-reduce); the
    model's dropout and drop-path masks are keyed by its step counter, so a resume replays them exactly."""
    global_batch = settings.batch_size * runtime.group_size
    peak = scaled_lr(settings.lr, global_batch, settings.lr_base_batch)
    total = settings.epoch_size * steps_per_epoch
    warmup = min(total, round(settings.warmup_epochs * steps_per_epoch))
    lr_table = cosine_schedule(peak, settings.min_lr, total, warmup, settings.warmup_lr)
    params, decays = param_groups(model, settings.weight_decay)
    optimizer = AdamW(params, decays, settings.betas, settings.opt_eps)
    ema = EMA(params, settings.ema_decay) if settings.ema else None
    scale_type = resolve_loss_scale_type(settings.loss_scale_type, settings.amp_level, runtime.device_target)
    scaler = LossScaling(settings.loss_scale, scale_type == "dynamic", settings.loss_scale_factor,
                         settings.loss_scale_window, params)
    masks = bind_masks(model, settings.seed, runtime.rank, runtime.group_size)
    step = TrainStep(NetWithLoss(model), optimizer, lr_table, scaler, model.num_exits, settings.clip_grad, ema,
                     grad_reducer(runtime, optimizer.params), masks)
    log.info("global batch %d (%d x %d devices), %d steps/epoch, peak lr %.3e, warm-up %d steps, %s loss scale %g, "
             "amp %s, %d trainable tensors (%d decayed)", global_batch, settings.batch_size, runtime.group_size,
             steps_per_epoch, peak, warmup, scale_type, settings.loss_scale, settings.amp_level, len(params),
             sum(1 for d in decays if d))
    return step, ema


def run_metadata(settings: TrainSettings, model: nn.Cell, data: TrainData, runtime: Runtime,
                 check: DataCheck) -> dict[str, Any]:
    """What every written checkpoint records about the run (and what a resume must find unchanged: the files
    left out change the sample order), with what serving needs: the class names (class folders, CIFAR's
    names) and the evaluation crop."""
    classes = list(getattr(data.reader, "classes", None) or [])
    crop_pct = settings.crop_pct if settings.crop_pct is not None else default_crop_pct(settings.dataset)
    return {**check.record(), "model": settings.model, "model_args": settings.model_args(),
            "num_classes": model.num_classes, "img_size": model.img_size, "flops": cumulative_gflops(model.spec),
            "epoch_size": settings.epoch_size, "global_batch": settings.batch_size * runtime.group_size,
            "steps_per_epoch": data.steps_per_epoch, "seed": settings.seed,
            "class_names": classes if len(classes) == model.num_classes else None, "crop_pct": crop_pct}


RESUME_KEYS = ("model", "model_args", "num_classes", "img_size", "epoch_size", "global_batch", "steps_per_epoch",
               "seed", "skipped_images")


def restore_progress(state_path: str | None, step: nn.Cell, metadata: dict[str, Any],
                     log: logging.Logger) -> RunRecord:
    """The progress of a resumed run (state loaded into ``step``), or a fresh one."""
    if state_path is None:
        return RunRecord()
    progress, notes = load_state(state_path, step, {k: metadata[k] for k in RESUME_KEYS})
    log.info("resumed from %s: %d epochs done, step %d%s", state_path, progress.epoch, progress.global_step,
             f" ({progress.step_in_epoch} steps into epoch {progress.epoch + 1})" if progress.step_in_epoch else "")
    for note in notes:
        log.info(note)
    return progress


def build_validation(settings: TrainSettings, model: nn.Cell, val_data,
                     runtime: Runtime) -> Callable[[], Accuracy] | None:
    """A no-argument function giving the per-exit accuracy on the validation split (None: no validation)."""
    if val_data is None:
        return None
    forward = ms.jit(model) if runtime.mode == 1 else model

    def validate() -> Accuracy:
        return exit_accuracy(model, val_data, settings.batch_size, runtime, settings.num_parallel_workers, forward)

    return validate


@contextlib.contextmanager
def settings_errors() -> Iterator[None]:
    """The builders of the data pipeline and the train step check their settings (augmentation, loss
    scale, optimizer, schedule, EMA, clipping) with ``ValueError``: report those as config errors."""
    try:
        yield
    except (ConfigError, DataError):  # a DataError names a file of the data set, not a setting
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def train(settings: TrainSettings) -> TrainResult:
    """Train as ``settings`` say: set up the device and the run's log, then the chain of factories of
    :func:`_train`, each line building what the next ones need."""
    with settings_errors():
        runtime = init_runtime(settings.device_target, settings.mode, settings.distribute, settings.seed,
                               jit_level=settings.jit_level, precision_mode=settings.precision_mode,
                               amp_level=settings.amp_level, amp_dtype=settings.amp_dtype)
    run_dir = settings.ckpt_save_dir
    with training_log(os.path.join(run_dir, "logs"), runtime.rank) as log:
        return _train(settings, runtime, run_dir, log)


def _train(settings: TrainSettings, runtime: Runtime, run_dir: str, log: logging.Logger) -> TrainResult:
    """The chain of :func:`train` once the device and the log are set up."""
    log.info("%s on %s (mode %d), rank %d of %d (%s)", settings.model, runtime.device_target, runtime.mode,
             runtime.rank, runtime.group_size, runtime.launcher)
    if runtime.device is not None and runtime.device.soc:
        log.info("Ascend SoC %s: precision_mode %s, jit_level %s", runtime.device.soc, runtime.device.precision_mode,
                 runtime.device.jit_level or "MindSpore's default")
    reader = open_train_reader(settings.dataset, settings.data_dir)
    settings = settings_for_data(settings, reader, log)
    spec = settings.model_spec()
    state_path = find_state(settings.resume, settings.auto_resume, run_dir)
    with settings_errors():
        data, check = build_train_data(settings, reader, spec, runtime, log)
    val_data = build_val_data(settings, spec)
    model = build_training_model(settings, runtime, log)
    with settings_errors():
        step, ema = build_train_step(settings, model, data.steps_per_epoch, runtime, log)
    metadata = run_metadata(settings, model, data, runtime, check)
    progress = restore_progress(state_path, step, metadata, log)
    ckpt = CheckpointManager(run_dir, settings.keep_checkpoint_max, settings.ckpt_interval, enabled=runtime.is_main)
    if state_path is not None:
        ckpt.note_saved(state_path, progress)
    if runtime.is_main:
        dump_yaml(settings.to_dict(), os.path.join(run_dir, "config.yaml"))
    validate = build_validation(settings, model, val_data, runtime)
    loop = LoopSettings(settings.epoch_size, metadata["global_batch"], settings.log_interval, settings.val_interval,
                        settings.dataset_sink_mode, settings.max_bad_steps, settings.ckpt_every_steps)
    progress = Trainer(step, model, data, runtime, ckpt, loop, log, validate, ema, metadata,
                       check.record()).fit(progress)
    best = progress.best_top1 if progress.best_top1 is not None and math.isfinite(progress.best_top1) else None
    log.info("finished %d epochs; best last-exit top-1 %s; checkpoints in %s", progress.epoch,
             f"{best:.2f} (epoch {progress.best_epoch})" if best is not None else "n/a", run_dir)
    return TrainResult(progress.epoch, progress.global_step, best, progress.best_epoch if best is not None else None,
                       run_dir)
