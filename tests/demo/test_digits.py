"""The digits demo folder: real images, stratified split, atomic and idempotent writing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dvt_ms.demo.digits import DemoError, build_digits_folder, main, split_indices
from tests.helpers import requires_sklearn


def test_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 20)
    train, val = split_indices(labels, 0.25, seed=0)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 200
    assert all((labels[val] == c).sum() == 5 for c in range(10))
    again, _ = split_indices(labels, 0.25, seed=0)
    np.testing.assert_array_equal(train, again)


@requires_sklearn
def test_build_folder(tmp_path):
    out = tmp_path / "digits"
    counts = build_digits_folder(str(out), img_size=16, val_fraction=0.25, seed=1)
    assert counts == {"train": 1347, "val": 450}
    assert sorted(os.listdir(out / "train")) == [str(c) for c in range(10)]
    files = sorted((out / "val" / "7").iterdir())
    img = Image.open(files[0])
    assert img.size == (16, 16) and img.mode == "RGB"
    assert np.asarray(img).std() > 10  # a real digit, not a blank image
    stamp = (out / "train" / "0").stat().st_mtime_ns
    assert build_digits_folder(str(out), img_size=16, val_fraction=0.25, seed=1) == counts
    assert (out / "train" / "0").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".digits-")]


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a digits folder"):
        build_digits_folder(str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@requires_sklearn
def test_the_command_reports_a_foreign_folder_with_status_1_and_bad_values_with_2(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["--out", str(tmp_path / "mine")]) == 1
    assert "not a digits folder" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "new"), "--val_fraction", "1.5"]) == 2
