"""Resume: 4 epochs straight equal 2 epochs, SIGKILL, and a resumed run for the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.train.helpers import (
    TINY_CONFIG,
    make_image_folder,
    max_abs_diff,
    run_train,
    subprocess_env,
    train_command,
    weights,
)

# Every piece of state is exercised: augmentation, mixup/cutmix, EMA, clipping, a dynamic loss scale
# that grows during the run, the warm-up and cosine position of the schedule.
FLAGS = ["--depth", "2", "--epoch_size", "4", "--warmup_epochs", "1", "--batch_size", "8", "--log_interval", "5",
         "--num_parallel_workers", "1", "--ema", "True", "--ema_decay", "0.9", "--loss_scale_type", "dynamic",
         "--loss_scale_window", "3", "--clip_grad", "5.0", "--auto_augment", "rand-m9-mstd0.5-inc1",
         "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0", "--smoothing", "0.1", "--ckpt_interval", "1",
         "--keep_checkpoint_max", "2"]


def _results(run_dir: str) -> list[dict]:
    try:
        with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


@pytest.mark.slow
def test_resume_after_sigkill_continues_as_if_never_stopped(tmp_path):
    data = make_image_folder(str(tmp_path / "data"), train_per_class=4, val_per_class=1)
    common = ["-c", TINY_CONFIG, "--data_dir", data, *FLAGS]

    straight = str(tmp_path / "straight")
    proc = run_train(*common, "--ckpt_save_dir", straight)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    stopped = str(tmp_path / "stopped")
    victim = subprocess.Popen(train_command(*common, "--ckpt_save_dir", stopped, "--auto_resume", "True"),
                              env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(_results(stopped)) < 2 and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    done_at_kill = len(_results(stopped))
    assert 2 <= done_at_kill < 4, done_at_kill

    proc = run_train(*common, "--ckpt_save_dir", stopped, "--auto_resume", "True")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resumed from {os.path.join(stopped, 'latest.state.ckpt')}: {done_at_kill} epochs done" in proc.stdout

    for name in ("latest.ckpt", "ema.ckpt"):
        diff = max_abs_diff(weights(os.path.join(straight, name)), weights(os.path.join(stopped, name)))
        assert diff <= 1e-6, (name, diff)
    a, b = _results(straight), _results(stopped)
    assert [e["epoch"] for e in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-6)
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5, abs=1e-6)
        assert x["val_top1"] == pytest.approx(y["val_top1"])
    assert sorted(n for n in os.listdir(stopped) if n.startswith("epoch_")) == ["epoch_0003.ckpt", "epoch_0004.ckpt"]
