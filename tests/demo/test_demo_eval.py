"""The quick-start demo: `bash scripts/run_eval.sh` with no arguments on the shipped checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, requires_sklearn


@pytest.mark.slow
@requires_sklearn
def test_demo_evaluation_without_arguments(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DVT_DEMO_ROOT": str(tmp_path)}  # nothing written into the repo
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "run_eval.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = tmp_path / "outputs" / "demo"
    with open(outputs / "eval_results.json", encoding="utf-8") as f:
        results = json.load(f)
    anytime = results["anytime_classification"]
    cumulative = results["flops"]
    assert len(anytime) == len(cumulative) == 3
    assert anytime[-1] >= 90.0
    flops, accuracy = results["budgeted_batch_classification"]
    as_good = [f for f, a in zip(flops, accuracy, strict=True) if a >= anytime[-1]]
    assert as_good and min(as_good) < cumulative[-1]
    assert results["operating_point"]["engine_matches_simulation"] is True
    speed = results["throughput"]  # measured and reported; how fast is the benchmarks' business
    assert speed["images"] > 0 and speed["early_exit_img_per_s"] > 0 and "measured_speedup_vs_all_exits" in speed
    for name in ("budgeted_batch.csv", "accuracy_vs_gflops.png"):
        assert (outputs / name).is_file()
    assert (tmp_path / "data" / "digits" / "val").is_dir()
    assert "anytime top-1 per exit" in proc.stdout
