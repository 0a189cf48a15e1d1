"""Resume: a run killed with SIGKILL and resumed ends bit for bit where the uninterrupted run ends, on one
process and under msrun with 2 workers (the whole job killed), from the state of an epoch's end and from one
saved inside an epoch (``--ckpt_every_steps``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from dvt_ms.checkpoint import read_checkpoint
from tests.helpers import (
    REPO,
    TINY_CONFIG,
    checkpoint_weights,
    free_port,
    make_image_folder,
    max_abs_diff,
    run_train,
    subprocess_env,
    train_command,
)

# Every piece of state is exercised: drop path (masks keyed by the step counter), augmentation, mixup/cutmix,
# EMA, clipping, a dynamic loss scale that grows during the run, the warm-up and cosine position of the schedule.
# The one-process test adds attention dropout (element-wise masks, same generator; each dropout layer adds
# ~10 s of graph compilation on CPU, so it stays off under msrun).
FLAGS = ["--depth", "2", "--epoch_size", "4", "--warmup_epochs", "1", "--log_interval", "5",
         "--num_parallel_workers", "1", "--drop_path_rate", "0.1", "--ema", "True",
         "--ema_decay", "0.9", "--loss_scale_type", "dynamic", "--loss_scale_window", "3", "--clip_grad", "5.0",
         "--auto_augment", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
         "--smoothing", "0.1", "--ckpt_interval", "1", "--keep_checkpoint_max", "2", "--ckpt_every_steps", "3"]
EPOCHS = 4
GLOBAL_BATCH = 8
STEPS_PER_EPOCH = 5  # 40 images; states inside epochs after global steps 3, 6, 9, 12 and 18


def _results(run_dir: str) -> list[dict]:
    try:
        with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
            return json.load(f)["epochs"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _step_states(run_dir: str) -> list[int]:
    """Global steps of the ``step_<N>.state.ckpt`` files in ``run_dir``."""
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    return [int(n[5:13]) for n in names if n.startswith("step_") and n.endswith(".state.ckpt")]


def _kill_when(job: subprocess.Popen, run_dir: str, kill: Callable[[], None], where: str) -> str:
    """Wait until ``run_dir`` holds 2 finished epochs (``where="epoch"``) or a state saved inside an epoch after
    the first one (``"inside"``), then ``kill()``; returns what the resumed run must log that it resumed from."""
    deadline = time.monotonic() + 300

    def reached() -> bool:
        if where == "epoch":
            return len(_results(run_dir)) >= 2
        return any(s > STEPS_PER_EPOCH for s in _step_states(run_dir))

    while not reached() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kill()
    job.wait(timeout=60)
    state = read_checkpoint(os.path.join(run_dir, "latest.state.ckpt"))[1]
    epochs, step, inside = state["epoch"], state["global_step"], state["step_in_epoch"]
    if where == "epoch":
        assert 2 <= epochs < EPOCHS and inside == 0, state
        return f"{epochs} epochs done, step {step}\n"
    assert 1 <= epochs < EPOCHS and 0 < inside < STEPS_PER_EPOCH, state
    return f"{epochs} epochs done, step {step} ({inside} steps into epoch {epochs + 1})"


def _assert_same_run(straight: str, resumed: str) -> None:
    """Bit-identical final state (weights, moments, EMA, counters, loss scale) and weight files, the same
    per-epoch log, the epoch files of the last epochs."""
    for name in ("latest.ckpt", "ema.ckpt", "latest.state.ckpt"):
        diff = max_abs_diff(checkpoint_weights(os.path.join(straight, name)),
                            checkpoint_weights(os.path.join(resumed, name)))
        assert diff == 0.0, (name, diff)
    a, b = _results(straight), _results(resumed)
    assert [e["epoch"] for e in b] == list(range(1, EPOCHS + 1))
    for x, y in zip(a, b, strict=True):
        assert (x["lr"], x["train_loss"], x["val_top1"], x["val_top1_ema"]) == \
            (y["lr"], y["train_loss"], y["val_top1"], y["val_top1_ema"])
    assert sorted(n for n in os.listdir(resumed) if n.startswith("epoch_")) == ["epoch_0003.ckpt", "epoch_0004.ckpt"]
    assert sorted(_step_states(resumed)) == sorted(_step_states(straight))  # the newest keep_checkpoint_max




def _plant_bad_images(data: str) -> None:
    """An unreadable file (found by the header check, left out) and one whose pixel data is cut off (passes the
    header check; replaced whenever it is read) in the training split."""
    with open(os.path.join(data, "train", "class_03", "zz_unreadable.jpg"), "wb") as f:
        f.write(b"not an image")
    whole = os.path.join(data, "train", "class_05", "img_000.png")
    content = open(whole, "rb").read()
    with open(whole, "wb") as f:
        f.write(content[: len(content) // 2])


@pytest.mark.slow
@pytest.mark.parametrize("where", ["inside", "epoch"])
def test_resume_after_sigkill_continues_as_if_never_stopped(tmp_path, where):
    data = make_image_folder(str(tmp_path / "data"), train_per_class=4, val_per_class=1)
    common = ["-c", TINY_CONFIG, "--data_dir", data, *FLAGS, "--attn_drop_rate", "0.1", "--batch_size",
              str(GLOBAL_BATCH)]
    if where == "inside":  # with bad images left out and replaced
        _plant_bad_images(data)
        common += ["--bad_images", "skip"]
    else:
        common += ["--ckpt_every_steps", "0"]

    straight = str(tmp_path / "straight")
    proc = run_train(*common, "--ckpt_save_dir", straight)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(_step_states(straight)) == ([] if where == "epoch" else [12, 18])
    with open(os.path.join(straight, "results.json"), encoding="utf-8") as f:
        skipped = json.load(f)["skipped_images"]
    assert skipped == ([] if where == "epoch" else [os.path.join("class_03", "zz_unreadable.jpg")])
    if where == "inside":
        assert "leaving out 1 unreadable training images" in proc.stdout
        assert "img_000.png: image file is truncated; image " in proc.stdout  # replaced when read

    stopped = str(tmp_path / "stopped")
    victim = subprocess.Popen(train_command(*common, "--ckpt_save_dir", stopped, "--auto_resume", "True"),
                              env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        resumed_from = _kill_when(victim, stopped, lambda: os.kill(victim.pid, signal.SIGKILL), where)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL

    proc = run_train(*common, "--ckpt_save_dir", stopped, "--auto_resume", "True")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resumed from {os.path.join(stopped, 'latest.state.ckpt')}: {resumed_from}" in proc.stdout
    _assert_same_run(straight, stopped)


def _job_processes(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``: msrun, its scheduler and workers, log tails."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if int(entry) != os.getpid() and any(marker in a for a in args):
            found.append(int(entry))
    return found


def _kill_job(marker: str) -> None:
    """SIGKILL every process of the job at once, as a node failure would."""
    for pid in _job_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_msrun_resume_after_the_whole_job_is_killed(tmp_path):
    data = make_image_folder(str(tmp_path / "data"), train_per_class=4, val_per_class=1)
    env = {**subprocess_env(), "PYTHON": sys.executable}
    script = os.path.join(REPO, "scripts", "run_distribute_train.sh")

    def command(run_dir: str, launch: str) -> list[str]:
        return ["bash", script, "-n", "2", "-p", str(free_port()), "-l", f"{run_dir}_{launch}_logs", "--",
                "-c", TINY_CONFIG, "--data_dir", data, *FLAGS, "--batch_size", str(GLOBAL_BATCH // 2),
                "--ckpt_save_dir", run_dir, "--auto_resume", "True"]

    def run_job(run_dir: str, launch: str) -> None:
        proc = subprocess.run(command(run_dir, launch), env=env, capture_output=True, text=True, timeout=600)
        logs = f"{run_dir}_{launch}_logs"
        tails = "".join(open(os.path.join(logs, n), errors="replace").read()[-2000:] for n in sorted(os.listdir(logs)))
        assert proc.returncode == 0, proc.stderr[-2000:] + tails

    straight = str(tmp_path / "straight")
    run_job(straight, "first")

    stopped = str(tmp_path / "stopped")
    job = subprocess.Popen(command(stopped, "first"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        resumed_from = _kill_when(job, stopped, lambda: _kill_job(stopped), "inside")
        deadline = time.monotonic() + 30
        while _job_processes(stopped) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _job_processes(stopped) == []
    finally:
        _kill_job(stopped)
    assert job.returncode == -signal.SIGKILL

    run_job(stopped, "resumed")
    for rank in (0, 1):
        with open(os.path.join(stopped, "logs", f"train_rank{rank}.log"), encoding="utf-8") as f:
            log = f.read()
        assert f"resumed from {os.path.join(stopped, 'latest.state.ckpt')}: {resumed_from}" in log
    assert [r["weight_spread_across_ranks"] for r in _results(stopped)] == [0.0] * EPOCHS
    _assert_same_run(straight, stopped)
