"""Data health: every kind of unreadable file is found up front, named, and reported all at once; every mode a
reader meets converts to RGB; ``python -m dvt_ms data-check`` reports as a command."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dvt_ms.data import DataError
from dvt_ms.data.folder import ImageFolder, load_image, to_rgb
from dvt_ms.data.health import check_image, check_images, format_bad_images, require_readable
from tests.helpers import make_image_folder, photo_like, write_mode_zoo


def _plant_bad_files(folder: str) -> dict[str, str]:
    """One file of each way an image file goes bad; returns path -> what the header check must say."""
    good = Image.fromarray(photo_like(40, 30, np.random.default_rng(1)))
    full = os.path.join(folder, "whole.png")
    good.save(full)
    data = open(full, "rb").read()
    bad = {}
    for name, content, reason in (("empty.jpg", b"", "cannot identify"),
                                  ("text.png", b"just some notes\n", "cannot identify"),
                                  ("cut_header.png", data[:20], "")):
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(content)
        bad[path] = reason
    os.remove(full)
    return bad


def test_every_mode_and_size_the_readers_meet_loads_as_rgb(tmp_path):
    for path in write_mode_zoo(str(tmp_path)):
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) >= 1, path
        assert check_image(path) is None and check_image(path, "full") is None, path


def test_sixteen_bit_images_keep_their_eight_high_bits():
    values = np.array([[0, 255, 256, 30000, 65535]], np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb.shape == (1, 5, 3)
    np.testing.assert_array_equal(rgb[..., 0], [[0, 0, 1, 117, 255]])  # PIL's own conversion: 0, 255, 255, ...
    assert to_rgb(Image.new("RGB", (2, 2))).mode == "RGB"


def test_the_header_check_finds_every_bad_file_in_order(tmp_path):
    bad = _plant_bad_files(str(tmp_path))
    zoo = write_mode_zoo(str(tmp_path / "zoo"))
    paths = sorted([*bad, *zoo])
    report = check_images(paths, "header", workers=3)
    assert report.checked == len(paths) and not report.ok
    assert [b.path for b in report.bad] == sorted(bad)
    for found in report.bad:
        assert bad[found.path] in found.reason and found.reason
    assert "3 unreadable" in report.summary()
    with pytest.raises(DataError, match=r"3 of \d+ training images cannot be read \(header check\).*--bad_images skip"):
        require_readable(report, "training images", "run/bad_images.txt")
    require_readable(check_images(zoo), "training images")  # nothing bad: no error


def test_the_full_check_also_finds_cut_off_pixel_data(tmp_path):
    path = str(tmp_path / "cut.png")
    Image.fromarray(photo_like(64, 64, np.random.default_rng(0))).save(path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    assert check_image(path, "header") is None  # the header is whole
    assert "truncated" in (check_image(path, "full") or "")
    with pytest.raises(DataError, match="cannot read image"):
        load_image(path)
    with pytest.raises(ValueError, match="unknown check level"):
        check_images([path], "deep")


def test_bad_files_are_listed_relative_to_the_root_with_a_limit(tmp_path):
    report = check_images([str(tmp_path / f"{i}.jpg") for i in range(7)])  # missing files are unreadable too
    text = format_bad_images(report.bad, str(tmp_path), limit=2)
    assert text.startswith("0.jpg (") and text.endswith("and 5 more")


def test_a_folder_without_its_bad_files_keeps_classes_and_labels(tmp_path):
    root = make_image_folder(str(tmp_path / "d"), 3, 0, classes=3, size=8)
    folder = ImageFolder(os.path.join(root, "train"))
    dropped = [folder.samples[1][0], folder.samples[4][0]]
    kept = folder.excluding(dropped)
    assert kept.classes == folder.classes and len(kept) == len(folder) - 2
    assert [s for s in folder.samples if s[0] not in dropped] == kept.samples
    assert kept.targets == [label for _, label in kept.samples]


def _data_check(*argv: str) -> int:
    from dvt_ms.data.cli import main

    return main(list(argv))


def test_data_check_command(tmp_path, capsys):
    root = make_image_folder(str(tmp_path / "d"), 3, 2, classes=2, size=8)
    assert _data_check("--data_dir", root) == 0
    out = capsys.readouterr().out
    assert "train (" in out and "val (" in out and "0 unreadable" in out

    bad = _plant_bad_files(os.path.join(root, "val", "class_01"))
    listing = tmp_path / "bad.txt"
    assert _data_check("--data_dir", root, "--data_check", "full", "--output", str(listing)) == 1
    captured = capsys.readouterr()
    assert sorted(line.split("\t")[0] for line in captured.out.splitlines()) == sorted(bad)
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("python -m dvt_ms data-check: error: 3 unreadable image files")
    assert sorted(line.split("\t")[0] for line in listing.read_text().splitlines()) == sorted(bad)
    assert _data_check("--data_dir", root, "--split", "train") == 0  # the bad files are all in val/
    assert _data_check("--data_dir", os.path.join(root, "train")) == 0  # a class folder tree on its own
    assert _data_check("--data_dir", str(tmp_path / "missing")) == 2  # a named input that does not exist
    assert _data_check("--data_dir", root, "--data_check", "off") == 2
    assert _data_check("--data_dir", root, "--dataset", "cifar10") == 2
    assert _data_check() == 2
    assert "missing: no such directory" in capsys.readouterr().err


def test_large_sets_are_checked_by_worker_processes_with_the_same_result(tmp_path):
    zoo = write_mode_zoo(str(tmp_path / "zoo"))
    bad = _plant_bad_files(str(tmp_path))
    paths = [*zoo * 200, *bad, str(tmp_path / "missing.jpg")]  # > 4096 files: the pooled path
    seen = []
    pooled = check_images(paths, "header", workers=2, progress=seen.append)
    alone = check_images(paths, "header", workers=1)
    assert pooled.bad == alone.bad and len(pooled.bad) == len(bad) + 1 and sum(seen) == len(paths)
