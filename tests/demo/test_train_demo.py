"""`bash scripts/train_demo.sh` reproduces the shipped demo checkpoint: the figures it stamps are the ones the
README and configs/README quote and the shipped checkpoint carries; it writes under outputs/ and leaves
demo/ alone unless asked (--install)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dvt_ms.checkpoint import read_metadata
from dvt_ms.inference.operating_point import choose_operating_point
from tests.helpers import REPO, requires_sklearn

SHIPPED = os.path.join(REPO, "demo", "dvt_digits_demo.ckpt")


def _readme_figures() -> tuple[list[float], float, float]:
    """Per-exit top-1 of the README's demo output, and its early-exit point (top-1, GFLOPs per image)."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    anytime = re.search(r"anytime top-1 per exit \(%\): ([0-9., ]+)\n", text).group(1)
    point = re.search(r"early exit \(--budget 0\.006\): top-1 ([0-9.]+) %, ([0-9.]+) GFLOPs/image", text)
    return [float(v) for v in anytime.split(",")], float(point.group(1)), float(point.group(2))


def _configs_readme_figures() -> list[float]:
    text = open(os.path.join(REPO, "configs", "README.md"), encoding="utf-8").read()
    row = re.search(r"\| `dvt_digits_demo.yaml` \|[^\n]*\| ([0-9.]+) / ([0-9.]+) / ([0-9.]+) \(digits\) \|", text)
    return [float(v) for v in row.groups()]


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.slow
@requires_sklearn
def test_train_demo_reproduces_the_shipped_checkpoint_and_its_figures(tmp_path):
    shipped_before = _sha256(SHIPPED)
    env = {**os.environ, "PYTHON": sys.executable, "DVT_DEMO_ROOT": str(tmp_path)}
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "train_demo.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _sha256(SHIPPED) == shipped_before  # without --install demo/ is left alone

    made = read_metadata(str(tmp_path / "outputs" / "demo_train" / "dvt_digits_demo.ckpt"))
    shipped = read_metadata(SHIPPED)
    anytime = [round(v, 2) for v in made["anytime_classification"]]
    readme_anytime, readme_top1, readme_gflops = _readme_figures()
    assert anytime == readme_anytime == _configs_readme_figures()
    assert anytime == [round(v, 2) for v in shipped["anytime_classification"]]
    np.testing.assert_allclose(made["dynamic_threshold"], shipped["dynamic_threshold"], rtol=1e-6)

    point = choose_operating_point(3, budget=0.006, metadata=made, source="the retrained checkpoint")
    flops, accuracy = (np.asarray(v) for v in made["budgeted_batch_classification"])
    index = point.curve_point - 1
    assert (round(float(accuracy[index]), 2), round(float(flops[index]), 4)) == (readme_top1, readme_gflops)


def test_train_demo_refuses_unknown_arguments():
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "train_demo.sh"), "--epochs", "3"],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2 and "unknown argument --epochs" in proc.stderr
