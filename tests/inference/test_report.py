"""Outputs (JSON, CSV, PNG), the progress bar and the last-exit-alone baseline."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import dvt_ms
from dvt_ms.flops import stage_macs
from dvt_ms.inference.plot import ANYTIME, CHOSEN, CURVE
from dvt_ms.inference.progress import progress_bar
from dvt_ms.inference.report import CSV_NAME, JSON_NAME, PLOT_NAME, write_outputs
from dvt_ms.inference.throughput import last_exit_spec


def results_dict() -> dict:
    flops = [0.5 + 0.05 * i for i in range(59)]
    accuracy = [60 + 20 * (1 - np.exp(-i / 10)) for i in range(59)]
    return {
        "model": "dvt_t2t_vit_12",
        "flops": [0.4677, 1.4461, 3.4550],
        "anytime_classification": [69.0, 75.6, 80.0],
        "budgeted_batch_classification": [flops, accuracy],
        "budgeted_batch_exit_shares": [[0.5, 0.3, 0.2]] * 59,
        "dynamic_threshold": [[0.9, 0.8, -1e8]] * 59,
        "operating_point": {"expected_gflops": flops[30], "accuracy": accuracy[30]},
        "exit_shares": [0.5, 0.3, 0.2],
        "throughput": None,
    }


def test_write_outputs_writes_json_csv_and_plot(tmp_path):
    paths = write_outputs(str(tmp_path / "out"), results_dict())
    assert [os.path.basename(p) for p in paths] == [JSON_NAME, CSV_NAME, PLOT_NAME]
    with open(paths[0], encoding="utf-8") as f:
        assert json.load(f)["anytime_classification"] == [69.0, 75.6, 80.0]
    with open(paths[1], encoding="utf-8") as f:
        lines = f.read().strip().splitlines()
    assert lines[0] == ("point,q,expected_gflops,top1,threshold_1,threshold_2,threshold_3,share_exit_1,"
                        "share_exit_2,share_exit_3")
    assert len(lines) == 60 and lines[1].startswith("1,0.05,0.5,60.0,0.9,0.8,-100000000.0,0.5,0.3,0.2")
    with Image.open(paths[2]) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels[::3]}
    assert CURVE in colours and ANYTIME in colours and CHOSEN in colours
    assert not [n for n in os.listdir(tmp_path / "out") if "partial" in n]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    results = results_dict()
    results["throughput"] = object()  # not JSON-serialisable
    with pytest.raises(TypeError):
        write_outputs(str(tmp_path), results)
    assert os.listdir(tmp_path) == []


def test_metadata_without_a_curve_still_plots_the_exits(tmp_path):
    results = {"model": "m", "flops": [1.0, 2.0], "anytime_classification": [50.0, 60.0],
               "budgeted_batch_classification": [[], []]}
    paths = write_outputs(str(tmp_path), results)
    assert [os.path.basename(p) for p in paths] == [JSON_NAME, PLOT_NAME]


def test_progress_bar_writes_its_description_and_the_final_count_as_lines():
    stream = io.StringIO()  # not a terminal, as a log file or a pipe
    with progress_bar(100, "validation, early exit", stream=stream) as bar:
        for _ in range(20):
            bar.update(5)
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert all(line.startswith("validation, early exit:") for line in lines)
    assert "100/100" in lines[-1] and "img/s" in lines[-1]


def test_last_exit_alone_is_the_standalone_backbone():
    # reference table: T2T-ViT-12 at 14x14 counted the same way is 1.7626 GMACs
    spec = last_exit_spec(dvt_ms.spec_for("dvt_t2t_vit_12"))
    assert spec.num_exits == 1 and spec.exit_names == ("normal_token",)
    assert not spec.exits[0].feature_reuse and not spec.exits[0].relation_reuse
    assert stage_macs(spec)[0] / 1e9 == pytest.approx(1.7626, rel=1e-3)
