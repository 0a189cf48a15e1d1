"""Data parallel under msrun with 2 CPU workers: equals one process with the same global batch; a killed
worker ends the whole job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    REPO,
    TINY_CONFIG,
    checkpoint_weights,
    free_port,
    make_image_folder,
    max_abs_diff,
    run_train,
    subprocess_env,
)

# Augmentation stays on: every image is augmented from (seed, epoch, index) wherever it is read. Mixup is
# off, as it pairs images inside each device's batch. Adam's eps is raised because the key bias and the
# relation-reuse biases have an exactly zero true gradient (a constant added to a softmax row): with the
# default 1e-8 Adam turns their rounding noise, which differs between one batch of 8 and two of 4, into
# lr-sized steps.
FLAGS = ["--depth", "2", "--epoch_size", "2", "--drop_path_rate", "0.1", "--warmup_epochs", "0.5",
         "--log_interval", "5", "--num_parallel_workers", "1", "--auto_augment", "rand-m9-mstd0.5-inc1",
         "--reprob", "0.25", "--smoothing", "0.1", "--opt_eps", "0.001", "--clip_grad", "5.0"]


@pytest.mark.slow
def test_msrun_two_workers_equal_one_process(tmp_path):
    data = make_image_folder(str(tmp_path / "data"), train_per_class=4, val_per_class=1)
    common = ["-c", TINY_CONFIG, "--data_dir", data, *FLAGS]

    single = str(tmp_path / "single")
    proc = run_train(*common, "--batch_size", "8", "--ckpt_save_dir", single)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    multi = str(tmp_path / "multi")
    env = {**subprocess_env(), "PYTHON": sys.executable}
    script = os.path.join(REPO, "scripts", "run_distribute_train.sh")
    proc = subprocess.run(["bash", script, "-n", "2", "-p", str(free_port()), "-l", str(tmp_path / "msrun_logs"),
                           "--", *common, "--batch_size", "4", "--ckpt_save_dir", multi],
                          env=env, capture_output=True, text=True, timeout=900)
    logs = "".join(open(os.path.join(tmp_path, "msrun_logs", n), errors="replace").read()[-2000:]
                   for n in sorted(os.listdir(tmp_path / "msrun_logs")))
    assert proc.returncode == 0, proc.stderr[-2000:] + logs

    for rank in (0, 1):
        with open(os.path.join(multi, "logs", f"train_rank{rank}.log"), encoding="utf-8") as f:
            text = f.read()
        assert f"rank {rank} of 2 (msrun)" in text and "global batch 8 (4 x 2 devices), 5 steps/epoch" in text
    results = json.load(open(os.path.join(multi, "results.json")))["epochs"]
    assert [r["weight_spread_across_ranks"] for r in results] == [0.0, 0.0]  # both ranks hold identical weights
    diff = max_abs_diff(checkpoint_weights(os.path.join(single, "latest.ckpt")),
                        checkpoint_weights(os.path.join(multi, "latest.ckpt")))
    assert diff <= 1e-5, diff
    single_results = json.load(open(os.path.join(single, "results.json")))["epochs"]
    for a, b in zip(single_results, results, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_top1"] == pytest.approx(b["val_top1"])


def _job_processes(marker: str) -> dict[int, str]:
    """``pid -> msrun role`` (MS_WORKER, MS_SCHED) of the ``python -m dvt_ms.train`` processes whose
    arguments hold ``marker``."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = dict(v.split("=", 1) for v in f.read().decode(errors="replace").split("\0") if "=" in v)
        except OSError:
            continue
        if args[1:3] == ["-m", "dvt_ms.train"] and marker in args:
            found[int(entry)] = environ.get("MS_ROLE", "")
    return found


@pytest.mark.slow
def test_a_killed_msrun_worker_ends_the_job(tmp_path):
    data = make_image_folder(str(tmp_path / "data"), train_per_class=4, val_per_class=1)
    run_dir = str(tmp_path / "run")  # an argument of every process of this job
    env = {**subprocess_env(), "PYTHON": sys.executable}
    script = os.path.join(REPO, "scripts", "run_distribute_train.sh")
    job = subprocess.Popen(["bash", script, "-n", "2", "-p", str(free_port()), "-l", str(tmp_path / "msrun_logs"),
                            "--", "-c", TINY_CONFIG, "--data_dir", data, "--depth", "1", "--epoch_size", "200",
                            "--batch_size", "4", "--log_interval", "1", "--num_parallel_workers", "1",
                            "--ckpt_save_dir", run_dir], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        log = os.path.join(run_dir, "logs", "train_rank1.log")
        while time.time() < deadline and job.poll() is None:  # wait until rank 1 trains
            if os.path.isfile(log) and "step 1/" in open(log, errors="replace").read():
                break
            time.sleep(1)
        assert job.poll() is None, "the job ended before a worker could be killed"
        workers = [pid for pid, role in _job_processes(run_dir).items() if role == "MS_WORKER"]
        assert len(workers) == 2, _job_processes(run_dir)
        os.kill(workers[-1], signal.SIGKILL)
        code = job.wait(timeout=300)  # the launcher notices the lost worker and ends the job (no hang)
        assert code != 0, code
        deadline = time.time() + 300  # a guard against a hang, not a speed claim
        while _job_processes(run_dir) and time.time() < deadline:  # msrun reaps its children as it exits
            time.sleep(0.2)
        assert _job_processes(run_dir) == {}  # nothing left behind: workers, scheduler
    finally:
        if job.poll() is None:
            job.kill()
        for pid in _job_processes(run_dir):
            os.kill(pid, signal.SIGKILL)
