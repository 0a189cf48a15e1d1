"""``dvt-eval`` / ``scripts/run_eval.sh`` end to end on a tiny generated image folder, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from dvt_ms.checkpoint import save_checkpoint
from dvt_ms.flops import cumulative_gflops
from dvt_ms.inference.cli import main
from dvt_ms.inference.report import CSV_NAME, JSON_NAME, PLOT_NAME
from tests.helpers import REPO, TINY_CONFIG, load_config, model_from_config

SCRIPT = os.path.join(REPO, "scripts", "run_eval.sh")
CLASSES = ("apple", "boat", "cloud")
REQUIRED_KEYS = {"model", "flops", "anytime_classification", "budgeted_batch_classification", "dynamic_threshold",
                 "exit_shares", "throughput"}


def make_folder(root, per_class: dict[str, int]) -> None:
    rng = np.random.RandomState(0)
    for split, count in per_class.items():
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.randint(0, 256, (30 + 3 * i, 40 + c, 3)).astype(np.uint8)
                pixels[..., c] = 220  # a class-dependent colour cast
                Image.fromarray(pixels).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")


def tiny_eval_model(**overrides):
    cfg = {**load_config(TINY_CONFIG), **overrides}
    ms.set_seed(0)
    return model_from_config(cfg)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_folder(root / "images", {"train": 5, "val": 3})
    model = tiny_eval_model()
    save_checkpoint(model, str(root / "tiny.ckpt"))
    cumulative = cumulative_gflops(model.spec)
    # two stored budget points: everything leaves at exit 1 / everything runs to exit 3
    metadata = {"model": "dvt_vit", "flops": cumulative, "anytime_classification": [10.0, 20.0, 30.0],
                "dynamic_threshold": [[0.0, 0.0, -1e8], [1e8, 1e8, -1e8]],
                "budgeted_batch_classification": [[cumulative[0], cumulative[2]], [10.0, 30.0]]}
    save_checkpoint(model, str(root / "with_meta.ckpt"), metadata=metadata)
    save_checkpoint(tiny_eval_model(exit_grids=[4, 8]), str(root / "two_exits.ckpt"))
    return root


def base_args(data, out, *extra) -> list[str]:
    return ["--config", TINY_CONFIG, "--ckpt", str(data / "tiny.ckpt"), "--data_dir", str(data / "images"),
            "--batch_size", "4", "--num_parallel_workers", "2", "--output_dir", str(out), "--throughput_batches",
            "1", "--throughput_rounds", "1", *extra]


def read_results(out) -> dict:
    with open(os.path.join(out, JSON_NAME), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_run_eval_sh_mode_2_writes_every_output(data, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", SCRIPT, *base_args(data, out, "--eval_mode", "2", "--calib_size", "10")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(out)
    assert REQUIRED_KEYS <= set(results)
    assert results["model"] == "dvt_vit" and results["num_calibration_images"] == 10
    assert results["num_val_images"] == 9
    flops, accuracy = results["budgeted_batch_classification"]
    assert len(flops) == len(accuracy) == 59
    assert np.asarray(results["dynamic_threshold"]).shape == (59, 3)
    assert len(results["anytime_classification"]) == len(results["anytime_top5"]) == 3
    assert sum(results["exit_shares"]) == pytest.approx(1.0)
    point = results["operating_point"]
    assert point["engine_matches_simulation"] is True
    # the point run for real is a curve point: its accuracy and cost are the curve's
    assert point["accuracy"] == pytest.approx(accuracy[point["curve_point"] - 1])
    assert point["expected_gflops"] == pytest.approx(flops[point["curve_point"] - 1])
    speed = results["throughput"]
    for key in ("early_exit_img_per_s", "all_exits_img_per_s", "last_exit_alone_img_per_s",
                "measured_speedup_vs_all_exits", "predicted_speedup_vs_all_exits"):
        assert speed[key] > 0
    with open(out / CSV_NAME, encoding="utf-8") as f:
        rows = f.read().strip().splitlines()
    assert rows[0].startswith("point,q,expected_gflops,top1,threshold_1") and len(rows) == 60
    with Image.open(out / PLOT_NAME) as plot:
        assert plot.format == "PNG" and plot.size[0] > 400
    assert "img/s" in proc.stderr
    assert "early-exit speed-up vs all exits" in proc.stdout


def test_mode_1_uses_the_stored_thresholds_and_budget(data, tmp_path, capsys):
    ckpt = str(data / "with_meta.ckpt")
    cumulative = cumulative_gflops(tiny_eval_model().spec)
    args = base_args(data, tmp_path, "--eval_mode", "1", "--ckpt", ckpt, "--budget", str(cumulative[0] + 1e-6))
    assert main(args) == 0
    results = read_results(tmp_path)
    assert results["exit_shares"] == [1.0, 0.0, 0.0]
    assert results["operating_point"]["curve_point"] == 1
    assert results["operating_point"]["accuracy"] == pytest.approx(results["anytime_classification"][0])
    assert results["budgeted_batch_classification"][0] == pytest.approx([cumulative[0], cumulative[2]])
    assert results["dynamic_threshold"] == [[0.0, 0.0, -1e8], [1e8, 1e8, -1e8]]
    assert "early exit (--budget" in capsys.readouterr().out


def test_explicit_thresholds_are_run(data, tmp_path):
    args = base_args(data, tmp_path, "--eval_mode", "1", "--ckpt", str(data / "with_meta.ckpt"),
                     "--thresholds", "1,0", "--throughput_batches", "0")
    assert main(args) == 0
    results = read_results(tmp_path)
    assert results["exit_shares"] == [0.0, 1.0, 0.0]
    assert results["operating_point"]["chosen_by"] == "--thresholds"
    assert results["operating_point"]["accuracy"] == pytest.approx(results["anytime_classification"][1])
    assert results["throughput"] is None


def test_mode_0_prints_and_writes_the_stored_metadata(data, tmp_path, capsys):
    assert main(["--ckpt", str(data / "with_meta.ckpt"), "--eval_mode", "0", "--output_dir", str(tmp_path)]) == 0
    results = read_results(tmp_path)
    assert results["anytime_classification"] == [10.0, 20.0, 30.0]
    assert results["budgeted_batch_classification"][1] == [10.0, 30.0]
    assert os.path.isfile(tmp_path / PLOT_NAME) and os.path.isfile(tmp_path / CSV_NAME)
    assert "anytime top-1 per exit (%): 10.00, 20.00, 30.00" in capsys.readouterr().out


def error_of(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_missing_data_dir(data, tmp_path, capsys):
    args = base_args(data, tmp_path, "--data_dir", str(tmp_path / "nowhere"))
    code, err = error_of(args, capsys)
    assert code == 2 and f"--data_dir {tmp_path / 'nowhere'}: no such directory" in err
    assert "Traceback" not in err


def test_empty_class_folder(data, tmp_path, capsys):
    make_folder(tmp_path / "d", {"val": 1})
    (tmp_path / "d" / "val" / "zzz_empty").mkdir()
    code, err = error_of(base_args(data, tmp_path, "--data_dir", str(tmp_path / "d")), capsys)
    assert code == 1 and f"class folder {tmp_path / 'd' / 'val' / 'zzz_empty'} contains no images" in err


def test_unreadable_image_is_named(data, tmp_path, capsys):
    make_folder(tmp_path / "d", {"val": 2})
    bad = tmp_path / "d" / "val" / "boat" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    code, err = error_of(base_args(data, tmp_path, "--data_dir", str(tmp_path / "d"), "--thresholds", "0.5,0.5"),
                         capsys)
    assert code == 1 and f"cannot read image {bad}" in err
    assert "Traceback" not in err


def test_thresholds_of_the_wrong_length(data, tmp_path, capsys):
    code, err = error_of(base_args(data, tmp_path, "--eval_mode", "1", "--thresholds", "0.1,0.2,0.3,0.4"), capsys)
    assert code == 2 and "--thresholds: got 4 value(s) for a model with 3 exits" in err


def test_checkpoint_that_does_not_fit_the_config(data, tmp_path, capsys):
    code, err = error_of(base_args(data, tmp_path, "--ckpt", str(data / "two_exits.ckpt")), capsys)
    assert code == 1 and "two_exits.ckpt does not fit" in err and "missing" in err


@pytest.mark.parametrize("extra, status, message", [
    (["--ckpt", ""], 2, "no checkpoint: pass --ckpt"),
    (["--ckpt", "{tmp_path}/no/such.ckpt"], 2, "--ckpt {tmp_path}/no/such.ckpt: no such file"),
    (["--eval_mode", "1"], 1, "stores no thresholds"),
    (["--eval_mode", "2", "--budget", "0.0001"], 2, "below every point of the curve"),
    (["--eval_mode", "1", "--budget", "1", "--thresholds", "0.5,0.5"], 2, "either --thresholds or --budget"),
    (["--eval_mode", "2", "--calib_size", "0"], 2, "--calib_size: calib_size must be >= 1, got 0"),
    (["--eval_mode", "2", "--pad_to_buckets", "True", "--buckets", "2"], 2, "include one of at least --batch_size 4"),
])
def test_other_usage_errors(data, tmp_path, capsys, extra, status, message):
    """Settings that cannot work together, inputs that are not there and values out of range for the model exit 2;
    what only the files reveal exits 1."""
    extra = [arg.format(tmp_path=tmp_path) for arg in extra]  # no test names a path outside its own folders
    code, err = error_of(base_args(data, tmp_path, *extra), capsys)
    assert code == status and message.format(tmp_path=tmp_path) in err


def test_mode_2_needs_a_train_folder(data, tmp_path, capsys):
    make_folder(tmp_path / "d", {"val": 1})
    code, err = error_of(base_args(data, tmp_path, "--data_dir", str(tmp_path / "d"), "--eval_mode", "2"), capsys)
    assert code == 1 and "has no train/ directory" in err


def test_bad_flag_values_are_usage_errors(data, tmp_path, capsys):
    code, err = error_of(base_args(data, tmp_path, "--eval_mode", "three"), capsys)
    assert code == 2 and "eval_mode must be an integer, got 'three'" in err
