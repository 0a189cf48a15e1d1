"""dvt-train end to end on the tiny config: it learns, both execution modes run, bad input fails clearly."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

import dvt_ms
from dvt_ms.checkpoint import read_checkpoint, save_checkpoint
from tests.helpers import TINY_CONFIG, load_config, make_image_folder, run_train


def _summed_losses(log_path: str) -> list[float]:
    with open(log_path, encoding="utf-8") as f:
        return [float(m.group(1)) for m in re.finditer(r"\(sum ([0-9.]+)\)", f.read())]


def _assert_clean_failure(proc, *needles: str) -> None:
    assert proc.returncode not in (0, None), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dvt-train: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def data_240(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp("data240")), train_per_class=24, val_per_class=2)


@pytest.fixture(scope="module")
def data_40(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp("data40")), train_per_class=4, val_per_class=1)


@pytest.mark.slow
def test_tiny_config_thirty_steps_lower_the_loss(data_240, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = run_train("-c", TINY_CONFIG, "--data_dir", data_240, "--epoch_size", "1", "--warmup_epochs", "0.1",
                     "--log_interval", "5", "--ckpt_save_dir", run_dir, "--num_parallel_workers", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = _summed_losses(os.path.join(run_dir, "logs", "train_rank0.log"))
    assert len(losses) == 6  # 240 images / batch 8 = 30 steps, a line every 5
    assert losses[-1] < losses[0] - 1.0, losses  # three exits start near 3 ln(10) = 6.9
    record = json.load(open(os.path.join(run_dir, "results.json")))
    assert record["data_check"] == "header" and record["checked_images"] == 240 and record["skipped_images"] == []
    results = record["epochs"]
    assert len(results) == 1
    entry = results[0]
    assert entry["epoch"] == 1 and len(entry["train_loss"]) == 3 and len(entry["val_top1"]) == 3
    assert entry["img_per_sec"] > 0 and 0 < entry["lr"] < 1e-3
    for name in ("latest.ckpt", "best.ckpt", "latest.state.ckpt", "config.yaml"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert load_config(os.path.join(run_dir, "config.yaml"))["epoch_size"] == 1
    weights, meta = read_checkpoint(os.path.join(run_dir, "latest.ckpt"))
    assert meta["model"] == "dvt_vit" and meta["model_args"]["exit_grids"] == [4, 6, 8]
    assert "normal_token.head.weight" in weights
    assert "loss" in proc.stdout  # rank 0 logs to the console too
    assert "first step (graph compilation included): " in proc.stdout


@pytest.mark.slow
def test_pynative_mode_runs(data_40, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = run_train("-c", TINY_CONFIG, "--data_dir", data_40, "--mode", "1", "--depth", "1", "--epoch_size", "1",
                     "--warmup_epochs", "0", "--log_interval", "2", "--ckpt_save_dir", run_dir,
                     "--num_parallel_workers", "1", "--amp_level", "O3", "--ema", "True")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(mode 1)" in proc.stdout
    losses = _summed_losses(os.path.join(run_dir, "logs", "train_rank0.log"))
    assert len(losses) == 3 and all(0 < v < 20 for v in losses)
    entry = json.load(open(os.path.join(run_dir, "results.json")))["epochs"][0]
    assert entry["val_top1"] is not None and entry["val_top1_ema"] is not None
    assert os.path.isfile(os.path.join(run_dir, "ema.ckpt"))


def test_unknown_config_key_is_named(tmp_path, data_40):
    config = tmp_path / "bad.yaml"
    config.write_text(open(TINY_CONFIG).read() + "\nlerning_rate: 0.1\n")
    proc = run_train("-c", str(config), "--data_dir", data_40, "--ckpt_save_dir", str(tmp_path / "run"))
    _assert_clean_failure(proc, "unknown config key 'lerning_rate'", str(config))
    assert proc.returncode == 2


def test_missing_data_folder(tmp_path):
    missing = str(tmp_path / "no_such_data")
    proc = run_train("-c", TINY_CONFIG, "--data_dir", missing, "--ckpt_save_dir", str(tmp_path / "run"))
    _assert_clean_failure(proc, f"--data_dir {missing}: no such directory")
    assert proc.returncode == 2  # a named input that does not exist: fix the command line


def test_data_folder_without_val_split(tmp_path):
    root = make_image_folder(str(tmp_path / "d"), 8, 0, classes=2)
    shutil.rmtree(os.path.join(root, "val"))
    proc = run_train("-c", TINY_CONFIG, "--data_dir", root, "--num_classes", "2", "--ckpt_save_dir",
                     str(tmp_path / "run"))
    _assert_clean_failure(proc, "has no val/", root)


def test_pretrained_file_that_does_not_fit(tmp_path, data_40):
    other = dvt_ms.create_model("dvt_vit", img_size=32, exit_grids=[4, 6, 8], embed_dim=32, depth=1, num_heads=2,
                                num_classes=10)
    path = str(tmp_path / "other.ckpt")
    save_checkpoint(other, path)
    proc = run_train("-c", TINY_CONFIG, "--data_dir", data_40, "--pretrained", path,
                     "--ckpt_save_dir", str(tmp_path / "run"))
    _assert_clean_failure(proc, path, "does not fit")


def test_an_unreadable_image_is_named_before_the_first_step(tmp_path):
    root = make_image_folder(str(tmp_path / "d"), 2, 1, classes=2)
    bad = os.path.join(root, "train", "class_01", "img_000.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG truncated")
    run_dir = tmp_path / "run"
    proc = run_train("-c", TINY_CONFIG, "--data_dir", root, "--num_classes", "2", "--batch_size", "2", "--depth",
                     "1", "--epoch_size", "1", "--warmup_epochs", "0", "--num_parallel_workers", "2",
                     "--ckpt_save_dir", str(run_dir))
    _assert_clean_failure(proc, "1 of 4 training images", "cannot be read (header check)", bad, "--bad_images skip")
    assert proc.returncode == 1 and "first step" not in proc.stdout
    assert (run_dir / "bad_images.txt").read_text().startswith(bad + "\t")


def test_bad_flag_values(tmp_path, data_40):
    proc = run_train("-c", TINY_CONFIG, "--data_dir", data_40, "--amp_level", "O1")
    _assert_clean_failure(proc, "amp_level", "O0, O2, O3")
    proc = run_train("-c", TINY_CONFIG, "--data_dir", data_40, "--mode", "2")
    _assert_clean_failure(proc, "--mode")
    proc = run_train("-c", TINY_CONFIG, "--data_dir", data_40, "--distribute", "True")
    _assert_clean_failure(proc, "--distribute True needs a launcher")
