"""Checkpoints of a training run: weights for evaluation / fine-tuning and the full state for resuming.

Files in ``ckpt_save_dir`` (every one written atomically: a temporary file renamed into place, so a
kill at any moment leaves the previous version intact):

* ``latest.ckpt``: model weights after the last finished epoch;
* ``best.ckpt``: model weights of the epoch with the best last-exit top-1;
* ``ema.ckpt``: the averaged weights after the last finished epoch (with ``--ema True``);
* ``epoch_<N>.ckpt``: weights after epoch N, every ``ckpt_interval`` epochs, the newest
  ``keep_checkpoint_max`` kept;
* ``latest.state.ckpt``: everything needed to continue as if never stopped: weights, AdamW moments and
  step, global step (the learning-rate position and the counter the dropout / drop-path masks are keyed
  by), loss-scale state, EMA weights, random-generator states, completed epochs, best accuracy and the
  per-epoch results; written after every epoch and, inside an epoch, every ``ckpt_every_steps`` steps
  and when the run is interrupted (then also the steps done of the unfinished epoch and its running
  loss sums, so that the resumed epoch reports what an uninterrupted one would);
* ``step_<N>.state.ckpt``: the states saved inside epochs, after global step N, the newest
  ``keep_checkpoint_max`` kept;
* ``results.json``: ``{"epochs": [one entry per finished epoch], "data_check": ..., "checked_images": ...,
  "skipped_images": [...]}``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn

from ..checkpoint import read_checkpoint, save_checkpoint
from ..files import atomic_output

STATE_FORMAT = "dvt_ms.train_state"
STATE_VERSION = 1
LATEST, BEST, EMA_WEIGHTS, STATE = "latest.ckpt", "best.ckpt", "ema.ckpt", "latest.state.ckpt"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.ckpt$")
_STEP_FILE = re.compile(r"step_(\d+)\.state\.ckpt$")
#: what a state written before a key existed holds for it
_STATE_DEFAULTS: dict[str, Any] = {"skipped_images": []}


class ResumeError(ValueError):
    """A training state that cannot be resumed here; the message names the file and the problem."""


@dataclass
class RunRecord:
    """Host-side bookkeeping of a run: completed epochs, steps, best accuracy and per-epoch results; inside an
    epoch, the steps of it already done and its running tally (what :class:`~dvt_ms.train.trainer.Trainer`
    needs to finish it as if it had never stopped)."""

    epoch: int = 0
    global_step: int = 0
    best_top1: float | None = None
    best_epoch: int | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    step_in_epoch: int = 0
    rank_states: list[list[float]] = field(default_factory=list)  # per rank: its epoch tally and log counters

    def position(self) -> str:
        """``epoch 3 done`` / ``epoch 4 step 120``: where the run stands, for messages."""
        if self.step_in_epoch:
            return f"epoch {self.epoch + 1} step {self.step_in_epoch} (global step {self.global_step})"
        return f"{self.epoch} epochs done (global step {self.global_step})"


def rng_states() -> dict[str, Any]:
    """The host random-generator states (MindSpore's default generator, numpy's and Python's global ones)."""
    np_state = np.random.get_state()
    return {
        "mindspore": ms.get_rng_state().asnumpy().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": json.loads(json.dumps(random.getstate())),
    }


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    if "mindspore" in states:
        ms.set_rng_state(ms.Tensor(np.asarray(states["mindspore"], dtype=np.int64).astype(np.uint8)))
    if "numpy" in states:
        kind, keys, *rest = states["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))


class CheckpointManager:
    """Writes the files listed in the module doc (only where ``enabled``: rank 0 of a data-parallel run).

    Writes hold :attr:`lock`, so another thread can wait for a write to finish before it ends the process;
    :attr:`saved` is the progress the newest state on disk holds."""

    def __init__(self, directory: str, keep_max: int = 5, interval: int = 1, enabled: bool = True) -> None:
        if keep_max < 0 or interval < 0:
            raise ValueError(f"keep_checkpoint_max and ckpt_interval must be >= 0, got {keep_max}, {interval}")
        self.directory, self.keep_max, self.interval, self.enabled = directory, keep_max, interval, enabled
        self.lock = threading.Lock()
        self.saved: RunRecord | None = None
        self.saved_path: str | None = None
        if enabled:
            os.makedirs(directory, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _numbered(self, pattern: re.Pattern[str]) -> list[tuple[int, str]]:
        found = []
        for name in os.listdir(self.directory):
            match = pattern.fullmatch(name)
            if match:
                found.append((int(match.group(1)), self.path(name)))
        return sorted(found)

    def epoch_files(self) -> list[tuple[int, str]]:
        """``(epoch, path)`` of the kept ``epoch_<N>.ckpt`` files, oldest first."""
        return self._numbered(_EPOCH_FILE)

    def step_files(self) -> list[tuple[int, str]]:
        """``(global step, path)`` of the kept ``step_<N>.state.ckpt`` files, oldest first."""
        return self._numbered(_STEP_FILE)

    def _prune(self, files: list[tuple[int, str]]) -> None:
        if self.keep_max:
            for _, old in files[:-self.keep_max]:
                os.remove(old)

    def _write_state(self, train_cell: nn.Cell, progress: RunRecord, metadata: Mapping[str, Any]) -> None:
        state_meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": progress.epoch,
                      "global_step": progress.global_step, "best_top1": progress.best_top1,
                      "best_epoch": progress.best_epoch, "results": progress.results,
                      "step_in_epoch": progress.step_in_epoch, "rank_states": progress.rank_states,
                      "rng": rng_states(), **metadata}
        save_checkpoint(state_parameters(train_cell), self.path(STATE), metadata=state_meta)
        self.note_saved(self.path(STATE), progress)

    def note_saved(self, path: str, progress: RunRecord) -> None:
        """Remember ``path`` as the newest state, holding ``progress`` (e.g. the state a run resumed from)."""
        self.saved, self.saved_path = replace(progress, results=list(progress.results)), path

    def save(self, train_cell: nn.Cell, model: nn.Cell, progress: RunRecord, metadata: Mapping[str, Any],
             is_best: bool, ema_weights: Mapping[str, np.ndarray] | None = None) -> None:
        """Write the state of the epoch just finished (``progress.epoch``) and the weight files."""
        if not self.enabled:
            return
        with self.lock:
            self._write_state(train_cell, progress, metadata)
            weights_meta = {**metadata, "epoch": progress.epoch}
            save_checkpoint(model, self.path(LATEST), metadata=weights_meta)
            if ema_weights is not None:
                save_checkpoint(dict(ema_weights), self.path(EMA_WEIGHTS), metadata={**weights_meta, "ema": True})
            if is_best:
                self._copy(LATEST, BEST)
            if self.interval and progress.epoch % self.interval == 0:
                self._copy(LATEST, f"epoch_{progress.epoch:04d}.ckpt")
                self._prune(self.epoch_files())

    def save_step(self, train_cell: nn.Cell, progress: RunRecord, metadata: Mapping[str, Any]) -> None:
        """Write the state inside an epoch (``progress.step_in_epoch`` steps of epoch ``progress.epoch + 1``
        done): ``latest.state.ckpt`` and its copy ``step_<global step>.state.ckpt``."""
        if not self.enabled:
            return
        with self.lock:
            self._write_state(train_cell, progress, metadata)
            self._copy(STATE, f"step_{progress.global_step:08d}.state.ckpt")
            self._prune(self.step_files())

    def _copy(self, src: str, dst: str) -> None:
        with atomic_output(self.path(dst)) as tmp:
            shutil.copyfile(self.path(src), tmp)

    def write_results(self, results: list[dict[str, Any]], extra: Mapping[str, Any] | None = None) -> None:
        """``results.json``: ``{"epochs": results, **extra}`` (one entry per finished epoch)."""
        if not self.enabled:
            return
        with atomic_output(self.path("results.json")) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump({"epochs": results, **(extra or {})}, f, indent=1)

    def resume_hint(self) -> str:
        """How to continue from the newest state this run wrote or resumed from (or that there is none)."""
        path = self.saved_path or (self.path(STATE) if os.path.isfile(self.path(STATE)) else None)
        if path is None:
            return "no training state was saved yet (--ckpt_every_steps N saves one inside epochs)"
        held = f", saved at {self.saved.position()}" if self.saved is not None else ""
        return f"resume with --resume {path}{held}"


def find_state(resume: str | None, auto_resume: bool, ckpt_save_dir: str) -> str | None:
    """The state file to resume from: ``--resume`` (a state file, a directory holding one, or a weights
    file next to its ``.state.ckpt``), else with ``--auto_resume`` the run directory's latest state
    when present, else ``None``."""
    if resume:
        if os.path.isdir(resume):
            path = os.path.join(resume, STATE)
        elif resume.endswith(".state.ckpt"):
            path = resume
        else:
            path = os.path.join(os.path.dirname(resume), STATE)
        if not os.path.isfile(path):
            raise ResumeError(f"--resume {resume}: no training state found at {path} (resume needs the "
                              f"{STATE} file that dvt-train writes next to latest.ckpt)")
        return path
    if auto_resume:
        path = os.path.join(ckpt_save_dir, STATE)
        return path if os.path.isfile(path) else None
    return None


def state_parameters(train_cell: nn.Cell) -> dict[str, Any]:
    """The Parameters of ``train_cell`` that make up a training state: all but those it recomputes every
    step (its ``derived_state()``, e.g. the mask streams' words)."""
    derived = set(train_cell.derived_state()) if hasattr(train_cell, "derived_state") else set()
    return {name: p for name, p in train_cell.parameters_dict().items() if name not in derived}


def load_state(path: str, train_cell: nn.Cell, expect: Mapping[str, Any]) -> tuple[RunRecord, list[str]]:
    """Load a training state into ``train_cell`` (weights, optimizer, counters, loss scale, EMA).

    ``expect`` holds run properties that must not change across a resume (model, global batch, steps
    per epoch, ...). Returns the progress and notes for the log (e.g. EMA started from the weights
    because the state had none). Nothing is loaded unless every check passes.
    """
    arrays, meta = read_checkpoint(path)
    if not meta or meta.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a dvt_ms training state (use --pretrained to start from plain weights)")
    changed = [f"{k}: state {meta.get(k, _STATE_DEFAULTS.get(k))!r} vs now {v!r}" for k, v in expect.items()
               if meta.get(k, _STATE_DEFAULTS.get(k)) != v]
    if changed:
        raise ResumeError(f"{path} was written by a different run set-up ({'; '.join(changed)}); resuming would "
                          "not continue the same schedule. Start a new run with --pretrained instead")
    params = state_parameters(train_cell)
    notes, missing, mis_shaped = [], [], []
    for name, param in params.items():
        if name not in arrays:
            missing.append(name)
        elif tuple(arrays[name].shape) != tuple(param.shape):
            mis_shaped.append(f"{name}: state {list(arrays[name].shape)} vs run {list(param.shape)}")
    ema_missing = [n for n in missing if n.startswith("ema.")]
    missing = [n for n in missing if not n.startswith("ema.")]
    if missing or mis_shaped:
        detail = "; ".join(filter(None, [f"missing {', '.join(missing[:8])}" if missing else "",
                                          f"mis-shaped {'; '.join(mis_shaped[:8])}" if mis_shaped else ""]))
        raise ResumeError(f"{path} does not fit this run: {detail}. Nothing was loaded")
    for name, param in params.items():
        if name in arrays:
            param.set_data(ms.Tensor(np.asarray(arrays[name], order="C"), dtype=param.dtype))
    if ema_missing:
        for name in ema_missing:
            params[name].set_data(ms.Tensor(np.asarray(arrays[name[len("ema."):]], order="C"),
                                            dtype=params[name].dtype))
        notes.append("the state has no EMA weights: the EMA starts from the resumed weights")
    unused = [n for n in arrays if n not in params]
    if unused:
        notes.append(f"ignored {len(unused)} tensors of the state that this run does not use "
                     f"(e.g. {unused[0]})")
    set_rng_states(meta.get("rng", {}))
    if hasattr(train_cell, "sync_masks"):
        train_cell.sync_masks()  # the mask streams of the resumed step
    progress = RunRecord(int(meta["epoch"]), int(meta["global_step"]), meta.get("best_top1"), meta.get("best_epoch"),
                         list(meta.get("results", [])), int(meta.get("step_in_epoch", 0)),
                         [list(row) for row in meta.get("rank_states") or []])
    return progress, notes
