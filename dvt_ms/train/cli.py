"""``dvt-train``: train or fine-tune a DVT cascade (one device, or data parallel under msrun / a rank table).

Usage::

    dvt-train -c configs/dvt_t2t_vit_12.yaml --data_dir /data/imagenet [--any_flag value ...]
    python -m dvt_ms.train -c configs/dvt_tiny_cpu.yaml --data_dir ./data --device_target CPU

Every flag is a key of the flat YAML config (defaults < YAML < command line). The run directory
(``--ckpt_save_dir``) receives the resolved ``config.yaml``, ``latest.ckpt``, ``best.ckpt``,
``latest.state.ckpt``, ``results.json`` and ``logs/train_rank<N>.log``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import mindspore as ms
from mindspore import nn

from ..amp import apply_precision
from ..checkpoint import CheckpointError
from ..command import run_command
from ..config import (
    MODEL_OPTIONS,
    ConfigError,
    create_model_from_config,
    dump_yaml,
    model_overrides,
    resolve,
    spec_from_config,
)
from ..data import DataError, build_eval_dataset, default_crop_pct
from ..data.train_pipeline import TrainData, open_train_reader
from ..flops import cumulative_gflops
from ..inference.options import OPTIONS as EVAL_OPTIONS
from ..models import CascadeSpec
from ..models.layers import bind_masks
from .distributed import LaunchError, Runtime, grad_reducer, init_runtime
from .ema import EMA
from .logs import LOGGER_NAME, setup_logging
from .loss import NetWithLoss
from .loss_scale import LossScaling, resolve_loss_scale_type
from .lr_schedule import cosine_schedule, scaled_lr
from .optimizer import AdamW, param_groups
from .options import OPTIONS
from .pretrained import load_pretrained
from .run_state import CheckpointManager, ResumeError, RunRecord, find_state, load_state
from .train_step import TrainStep
from .trainer import LoopSettings, Trainer, TrainingDiverged
from .validate import Accuracy, exit_accuracy

PROG = "dvt-train"
FAILURES = (ConfigError, DataError, CheckpointError, ResumeError, LaunchError, TrainingDiverged)


def load_config(argv: Sequence[str] | None) -> dict[str, Any]:
    """Defaults < YAML < command line, plus the checks that need several keys at once."""
    cfg = resolve((*MODEL_OPTIONS, *OPTIONS), argv, description=__doc__.split("\n\n")[0], prog=PROG,
                  shared_with=EVAL_OPTIONS)
    if not cfg.get("model"):
        raise ConfigError("no model: pass -c configs/<model>.yaml or --model <name>")
    if cfg["mode"] not in (0, 1):
        raise ConfigError(f"--mode must be 0 (graph) or 1 (PyNative), got {cfg['mode']}")
    for key in ("batch_size", "epoch_size", "log_interval"):
        if cfg[key] < 1:
            raise ConfigError(f"--{key} must be >= 1, got {cfg[key]}")
    for key in ("val_interval", "ckpt_interval", "keep_checkpoint_max", "max_bad_steps"):
        if cfg[key] < 0:
            raise ConfigError(f"--{key} must be >= 0, got {cfg[key]}")
    if cfg["warmup_epochs"] < 0 or cfg["warmup_epochs"] > cfg["epoch_size"]:
        raise ConfigError(f"--warmup_epochs must lie in [0, epoch_size={cfg['epoch_size']}], "
                          f"got {cfg['warmup_epochs']}")
    if len(cfg["betas"]) != 2:
        raise ConfigError(f"--betas needs two values, got {cfg['betas']}")
    return cfg


def build_train_data(cfg: dict[str, Any], spec: CascadeSpec, runtime: Runtime) -> TrainData:
    """The training split, sharded for this rank, with the configured augmentation."""
    reader = open_train_reader(cfg["dataset"], cfg["data_dir"])
    return TrainData(
        reader, cfg["batch_size"], spec.num_classes, spec.img_size, seed=cfg["seed"],
        num_shards=runtime.group_size, shard_id=runtime.rank, shuffle=cfg["shuffle"], crop_scale=cfg["crop_scale"],
        crop_ratio=cfg["crop_ratio"], random_crop=cfg["random_crop"], hflip=cfg["hflip"],
        auto_augment=cfg["auto_augment"], color_jitter=cfg["color_jitter"], reprob=cfg["reprob"], mixup=cfg["mixup"],
        cutmix=cfg["cutmix"], mixup_prob=cfg["mixup_prob"], mixup_switch_prob=cfg["mixup_switch_prob"],
        smoothing=cfg["smoothing"], num_parallel_workers=cfg["num_parallel_workers"])


def build_val_data(cfg: dict[str, Any], spec: CascadeSpec):
    """The validation split with the evaluation transform, or None when ``val_interval`` is 0."""
    if not cfg["val_interval"]:
        return None
    return build_eval_dataset(cfg["dataset"], cfg["data_dir"], "val", spec.img_size, cfg["crop_pct"])


def build_training_model(cfg: dict[str, Any], runtime: Runtime, log: logging.Logger) -> nn.Cell:
    """The cascade of the config, with ``--pretrained`` weights and the ``--amp_level`` precision policy applied."""
    model = create_model_from_config(cfg)
    if cfg["pretrained"]:
        for note in load_pretrained(model, cfg["pretrained"]):
            log.info(note)
    apply_precision(model, cfg["amp_level"], cfg["amp_dtype"])
    return model  # static shapes: the train step has a fixed batch and validation pads its last batch


def build_train_step(cfg: dict[str, Any], model: nn.Cell, steps_per_epoch: int, runtime: Runtime,
                     log: logging.Logger) -> tuple[TrainStep, EMA | None]:
    """The compiled train step (loss, AdamW, schedule, loss scale, clipping, EMA, gradient all-reduce); the
    model's dropout and drop-path masks are keyed by its step counter, so a resume replays them exactly."""
    global_batch = cfg["batch_size"] * runtime.group_size
    peak = scaled_lr(cfg["lr"], global_batch, cfg["lr_base_batch"])
    total = cfg["epoch_size"] * steps_per_epoch
    warmup = min(total, round(cfg["warmup_epochs"] * steps_per_epoch))
    lr_table = cosine_schedule(peak, cfg["min_lr"], total, warmup, cfg["warmup_lr"])
    params, decays = param_groups(model, cfg["weight_decay"])
    optimizer = AdamW(params, decays, cfg["betas"], cfg["opt_eps"])
    ema = EMA(params, cfg["ema_decay"]) if cfg["ema"] else None
    scale_type = resolve_loss_scale_type(cfg["loss_scale_type"], cfg["amp_level"], runtime.device_target)
    scaler = LossScaling(cfg["loss_scale"], scale_type == "dynamic", cfg["loss_scale_factor"], cfg["loss_scale_window"],
                         params)
    masks = bind_masks(model, cfg["seed"], runtime.rank, runtime.group_size)
    step = TrainStep(NetWithLoss(model), optimizer, lr_table, scaler, model.num_exits, cfg["clip_grad"], ema,
                     grad_reducer(runtime, optimizer.params), masks)
    log.info("global batch %d (%d x %d devices), %d steps/epoch, peak lr %.3e, warm-up %d steps, %s loss scale %g, "
             "amp %s, %d trainable tensors (%d decayed)", global_batch, cfg["batch_size"], runtime.group_size,
             steps_per_epoch, peak, warmup, scale_type, cfg["loss_scale"], cfg["amp_level"], len(params),
             sum(1 for d in decays if d))
    return step, ema


def run_metadata(cfg: dict[str, Any], model: nn.Cell, data: TrainData, runtime: Runtime) -> dict[str, Any]:
    """What every written checkpoint records about the run (and what a resume must find unchanged), with
    what serving needs: the class names (class folders, CIFAR's names) and the evaluation crop."""
    classes = list(getattr(data.reader, "classes", None) or [])
    return {"model": cfg["model"], "model_args": model_overrides(cfg), "num_classes": model.num_classes,
            "img_size": model.img_size, "flops": cumulative_gflops(model.spec), "epoch_size": cfg["epoch_size"],
            "global_batch": cfg["batch_size"] * runtime.group_size, "steps_per_epoch": data.steps_per_epoch,
            "seed": cfg["seed"], "class_names": classes if len(classes) == model.num_classes else None,
            "crop_pct": cfg["crop_pct"] if cfg.get("crop_pct") is not None else default_crop_pct(cfg["dataset"])}


RESUME_KEYS = ("model", "model_args", "num_classes", "img_size", "epoch_size", "global_batch", "steps_per_epoch",
               "seed")


def restore_progress(state_path: str | None, step: nn.Cell, metadata: dict[str, Any],
                     log: logging.Logger) -> RunRecord:
    """The progress of a resumed run (state loaded into ``step``), or a fresh one."""
    if state_path is None:
        return RunRecord()
    progress, notes = load_state(state_path, step, {k: metadata[k] for k in RESUME_KEYS})
    log.info("resumed from %s: %d epochs done, step %d", state_path, progress.epoch, progress.global_step)
    for note in notes:
        log.info(note)
    return progress


def build_validation(cfg: dict[str, Any], model: nn.Cell, val_data, runtime: Runtime) -> Callable[[], Accuracy] | None:
    """A no-argument function giving the per-exit accuracy on the validation split (None: no validation)."""
    if val_data is None:
        return None
    forward = ms.jit(model) if runtime.mode == 1 else model

    def validate() -> Accuracy:
        return exit_accuracy(model, val_data, cfg["batch_size"], runtime, cfg["num_parallel_workers"], forward)

    return validate


@contextlib.contextmanager
def settings_errors() -> Iterator[None]:
    """The builders of the data pipeline and the train step check their settings (augmentation, loss
    scale, optimizer, schedule, EMA, clipping) with ``ValueError``: report those as config errors."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def run(cfg: dict[str, Any]) -> None:
    """Train as ``cfg`` says: each line below builds what the next ones need."""
    with settings_errors():
        runtime = init_runtime(cfg["device_target"], cfg["mode"], cfg["distribute"], cfg["seed"],
                               jit_level=cfg["jit_level"], precision_mode=cfg["precision_mode"],
                               amp_level=cfg["amp_level"], amp_dtype=cfg["amp_dtype"])
    run_dir = cfg["ckpt_save_dir"]
    log = setup_logging(os.path.join(run_dir, "logs"), runtime.rank)
    log.info("%s on %s (mode %d), rank %d of %d (%s)", cfg["model"], runtime.device_target, runtime.mode,
             runtime.rank, runtime.group_size, runtime.launcher)
    if runtime.device is not None and runtime.device.soc:
        log.info("Ascend SoC %s: precision_mode %s, jit_level %s", runtime.device.soc, runtime.device.precision_mode,
                 runtime.device.jit_level or "MindSpore's default")
    spec = spec_from_config(cfg)
    with settings_errors():
        data = build_train_data(cfg, spec, runtime)
    val_data = build_val_data(cfg, spec)
    state_path = find_state(cfg["resume"], cfg["auto_resume"], run_dir)
    model = build_training_model(cfg, runtime, log)
    with settings_errors():
        step, ema = build_train_step(cfg, model, data.steps_per_epoch, runtime, log)
    metadata = run_metadata(cfg, model, data, runtime)
    progress = restore_progress(state_path, step, metadata, log)
    ckpt = CheckpointManager(run_dir, cfg["keep_checkpoint_max"], cfg["ckpt_interval"], enabled=runtime.is_main)
    if runtime.is_main:
        dump_yaml(cfg, os.path.join(run_dir, "config.yaml"))
    validate = build_validation(cfg, model, val_data, runtime)
    settings = LoopSettings(cfg["epoch_size"], metadata["global_batch"], cfg["log_interval"], cfg["val_interval"],
                            cfg["dataset_sink_mode"], cfg["max_bad_steps"])
    progress = Trainer(step, model, data, runtime, ckpt, settings, log, validate, ema, metadata).fit(progress)
    best = progress.best_top1
    log.info("finished %d epochs; best last-exit top-1 %s; checkpoints in %s", progress.epoch,
             f"{best:.2f} (epoch {progress.best_epoch})" if best is not None and math.isfinite(best) else "n/a",
             run_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dvt-train``; returns the exit status (see :mod:`dvt_ms.command`)."""
    return run_command(PROG, lambda: load_config(argv), run, FAILURES, LOGGER_NAME)


if __name__ == "__main__":
    sys.exit(main())
