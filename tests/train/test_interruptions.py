"""What ends a long run early ends it in order: a lost data worker (status 1, one line naming the worker and the
state to resume from) and Ctrl-C (status 130, the state saved inside the epoch, the resume exact)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from dvt_ms.data.workers import child_processes
from tests.helpers import (
    TINY_CONFIG,
    checkpoint_weights,
    make_image_folder,
    max_abs_diff,
    run_train,
    subprocess_env,
    train_command,
)

FLAGS = ["-c", TINY_CONFIG, "--depth", "1", "--batch_size", "8", "--warmup_epochs", "0", "--log_interval", "1",
         "--num_parallel_workers", "2", "--drop_path_rate", "0.1", "--auto_augment", "rand-m9-mstd0.5-inc1",
         "--mixup", "0.8", "--cutmix", "1.0", "--val_interval", "0"]


def _wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _log_has(run_dir: str, text: str) -> bool:
    path = os.path.join(run_dir, "logs", "train_rank0.log")
    return os.path.isfile(path) and text in open(path, encoding="utf-8", errors="replace").read()


def _same_command_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        command = f.read()
    found = []
    for child in child_processes(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if f.read() == command:
                    found.append(child)
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_a_killed_data_worker_ends_the_run_with_one_line_naming_the_resume_state(tmp_path):
    data = make_image_folder(str(tmp_path / "data"), train_per_class=8, val_per_class=1)
    run_dir = str(tmp_path / "run")
    job = subprocess.Popen(train_command(*FLAGS, "--data_dir", data, "--epoch_size", "50", "--ckpt_every_steps", "2",
                                         "--ckpt_save_dir", run_dir),
                           env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _log_has(run_dir, "epoch 1/50 step 3/10") or job.poll() is not None)
        assert job.poll() is None, job.communicate()
        workers = _same_command_children(job.pid)
        assert len(workers) >= 2, workers  # two workers (and MindSpore's clean-up process)
        os.kill(workers[0], signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "SIGCHLD" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    state = os.path.join(run_dir, "latest.state.ckpt")
    assert lines[0].startswith(f"dvt-train: error: data worker process {workers[0]} was killed by signal 9 (SIGKILL)")
    assert f"resume with --resume {state}, saved at " in lines[0] and "out-of-memory" in lines[0]
    assert os.path.isfile(state)
    _wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers), timeout=30)  # none left behind


@pytest.mark.slow
def test_ctrl_c_saves_the_state_inside_the_epoch_and_the_resume_is_exact(tmp_path):
    data = make_image_folder(str(tmp_path / "data"), train_per_class=8, val_per_class=1)
    common = [*FLAGS, "--data_dir", data, "--epoch_size", "3", "--ema", "True", "--ema_decay", "0.9"]
    straight = str(tmp_path / "straight")
    proc = run_train(*common, "--ckpt_save_dir", straight)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    work = tmp_path / "work"  # the working folder of the interrupted run: nothing may be left in it
    work.mkdir()
    stopped = str(tmp_path / "stopped")
    job = subprocess.Popen(train_command(*common, "--ckpt_save_dir", stopped), cwd=work, env=subprocess_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: _log_has(stopped, "epoch 2/3 step 2/10") or job.poll() is not None)
        os.killpg(job.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    state = os.path.join(stopped, "latest.state.ckpt")
    assert lines[0].startswith("dvt-train: interrupted: stopped at epoch 2 step "), lines[0]
    assert f"resume with --resume {state}" in lines[0]
    assert os.listdir(work) == []

    proc = run_train(*common, "--ckpt_save_dir", stopped, "--resume", state)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "steps into epoch 2)" in proc.stdout
    for name in ("latest.ckpt", "ema.ckpt", "latest.state.ckpt"):
        assert max_abs_diff(checkpoint_weights(os.path.join(straight, name)),
                            checkpoint_weights(os.path.join(stopped, name))) == 0.0, name
