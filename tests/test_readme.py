"""The README's "Use from Python" block runs as printed: evaluation, prediction (checkpoint and export),
export and training through the library functions, without the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import dvt_ms
from dvt_ms.checkpoint import read_metadata
from tests.helpers import REPO, requires_sklearn


def python_block(section: str) -> str:
    """The first ```python block after the heading ``section`` of README.md."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(f"\n## {section}\n")
    found = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert found, f"no python block under '## {section}'"
    return found.group(1)


def test_the_block_is_found_and_uses_the_library_not_the_cli():
    code = python_block("Use from Python")
    assert "evaluate(EvalSettings(" in code and "predict(PredictSettings(" in code and "train(TrainSettings(" in code
    assert "main(" not in code and "argv" not in code


@pytest.mark.slow
@requires_sklearn
def test_use_from_python_runs_as_printed(tmp_path):
    for name in ("demo", "configs"):  # what the block reads from the repository root; it writes beside them
        os.symlink(os.path.join(REPO, name), tmp_path / name)
    script = tmp_path / "use_from_python.py"
    script.write_text(python_block("Use from Python"), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    for produced in ("outputs/python/eval/eval_results.json", "outputs/python/predict/summary.json",
                     "outputs/python/export/manifest.json", "outputs/python/predict_exported/summary.json",
                     "outputs/python/train/latest.ckpt"):
        assert (tmp_path / produced).is_file(), produced
    recorded = read_metadata(os.path.join(REPO, "demo", "dvt_digits_demo.ckpt"))  # load_model built this one
    grids = dvt_ms.spec_for(recorded["model"], **recorded["model_args"]).grids()
    assert done.stdout.splitlines()[0] == f"{recorded['model']} {grids}"
