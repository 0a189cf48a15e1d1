"""Image-folder scanning and image loading: layout, order, and the errors that name the problem."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dvt_ms.data import DataError, ImageFolder, build_eval_dataset, load_image, scan_image_folder


def save_image(path, size=(20, 16), color=(10, 20, 30)) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def test_scan_lists_classes_sorted_and_images_sorted_recursively(tmp_path):
    save_image(tmp_path / "zebra" / "b.png")
    save_image(tmp_path / "zebra" / "a.JPG")
    save_image(tmp_path / "ant" / "nested" / "deep.jpeg")
    save_image(tmp_path / "ant" / "x.bmp")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    save_image(tmp_path / "ant" / ".hidden.png")
    save_image(tmp_path / ".cache" / "c.png")
    samples, classes = scan_image_folder(tmp_path)
    assert classes == ["ant", "zebra"]
    names = [(os.path.relpath(p, tmp_path), label) for p, label in samples]
    assert names == [("ant/nested/deep.jpeg", 0), ("ant/x.bmp", 0), ("zebra/a.JPG", 1), ("zebra/b.png", 1)]


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(DataError, match=f"data directory not found: {tmp_path / 'nope'}"):
        scan_image_folder(tmp_path / "nope")


def test_directory_without_classes(tmp_path):
    save_image(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class sub-directories"):
        scan_image_folder(tmp_path)


def test_empty_class_folder_is_named(tmp_path):
    save_image(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=f"class folder {tmp_path / 'dog'} contains no images"):
        scan_image_folder(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "cat" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        load_image(bad)
    dataset = ImageFolder(tmp_path)
    with pytest.raises(DataError, match=r"broken\.jpg"):
        dataset[0]


def test_truncated_png_is_named(tmp_path):
    path = save_image(tmp_path / "cat" / "t.png", size=(64, 64))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.png"):
        load_image(path)


def test_images_are_converted_to_rgb(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (5, 4), 77).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert np.asarray(image)[0, 0].tolist() == [77, 77, 77]


def test_image_folder_items_and_targets(tmp_path):
    save_image(tmp_path / "a" / "1.png", color=(255, 0, 0))
    save_image(tmp_path / "b" / "1.png", color=(0, 255, 0))
    dataset = ImageFolder(tmp_path, transform=lambda im: np.asarray(im)[0, 0])
    assert len(dataset) == 2 and dataset.targets == [0, 1] and dataset.classes == ["a", "b"]
    value, label = dataset[1]
    assert value.tolist() == [0, 255, 0] and label == 1


def test_build_eval_dataset_needs_the_split_folder(tmp_path):
    save_image(tmp_path / "val" / "a" / "1.png")
    dataset = build_eval_dataset("imagefolder", tmp_path, "val", 32)
    image, label = dataset[0]
    assert image.shape == (3, 32, 32) and image.dtype == np.float32 and label == 0
    with pytest.raises(DataError, match=f"{tmp_path} has no train/ directory"):
        build_eval_dataset("imagefolder", tmp_path, "train", 32)
    with pytest.raises(DataError, match="data directory not found"):
        build_eval_dataset("imagefolder", tmp_path / "missing", "val", 32)
    with pytest.raises(DataError, match="unknown dataset"):
        build_eval_dataset("mnist", tmp_path, "val", 32)
