"""CIFAR-10 / CIFAR-100 binary files: written here byte by byte from the format description."""

from __future__ import annotations

import numpy as np
import pytest

from dvt_ms.data import CifarDataset, DataError, build_eval_dataset, cifar_classes, read_cifar


def image_bytes(seed: int) -> tuple[np.ndarray, bytes]:
    """A random 32x32 RGB image and its 3072 record bytes (red plane, green plane, blue plane)."""
    image = np.random.RandomState(seed).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    return image, image.transpose(2, 0, 1).tobytes()


def write_cifar10(root, per_file: int = 2):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    expected = {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for f, name in enumerate(names):
        split = "test" if name.startswith("test") else "train"
        records = b""
        for j in range(per_file):
            image, data = image_bytes(100 * f + j)
            label = (3 * f + j) % 10
            records += bytes([label]) + data
            expected[split][0].append(image)
            expected[split][1].append(label)
        (folder / name).write_bytes(records)
    (folder / "batches.meta.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n\n")
    return folder, expected


def test_cifar10_round_trip(tmp_path):
    folder, expected = write_cifar10(tmp_path)
    for root in (tmp_path, folder):  # the parent of the archive directory, or the directory itself
        for split in ("train", "test"):
            images, labels = read_cifar(root, split, "cifar10")
            assert images.dtype == np.uint8 and images.shape == (len(expected[split][1]), 32, 32, 3)
            np.testing.assert_array_equal(images, np.stack(expected[split][0]))
            assert labels.tolist() == expected[split][1]
    assert len(read_cifar(tmp_path, "train")[1]) == 10
    assert cifar_classes(tmp_path, "cifar10") == [f"name{i}" for i in range(10)]


def test_cifar100_uses_the_fine_label(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    records, images = b"", []
    for j, (coarse, fine) in enumerate([(3, 77), (19, 5), (0, 99)]):
        image, data = image_bytes(j)
        images.append(image)
        records += bytes([coarse, fine]) + data
    (folder / "train.bin").write_bytes(records)
    (folder / "test.bin").write_bytes(records[: 2 + 3072])
    images_read, labels = read_cifar(tmp_path, "train", "cifar100")
    assert labels.tolist() == [77, 5, 99]
    np.testing.assert_array_equal(images_read, np.stack(images))
    assert cifar_classes(tmp_path, "cifar100")[:2] == ["class_0", "class_1"]  # no names file
    dataset = CifarDataset(tmp_path, "test", "cifar100", transform=lambda im: np.asarray(im))
    value, label = dataset[0]
    assert label == 77 and np.array_equal(value, images[0])


def test_truncated_and_missing_files_are_named(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    (folder / "data_batch_3.bin").write_bytes((folder / "data_batch_3.bin").read_bytes()[:-5])
    with pytest.raises(DataError, match=r"data_batch_3\.bin is not a cifar10 binary batch.*truncated"):
        read_cifar(tmp_path, "train", "cifar10")
    (folder / "data_batch_5.bin").unlink()
    with pytest.raises(DataError, match=r"CIFAR file missing: .*data_batch_5\.bin"):
        read_cifar(tmp_path, "train", "cifar10")
    with pytest.raises(DataError, match="does not hold the cifar100 binary files"):
        read_cifar(tmp_path, "test", "cifar100")


def test_cifar_eval_dataset_resizes_straight_to_the_model_size(tmp_path):
    write_cifar10(tmp_path)
    dataset = build_eval_dataset("cifar10", tmp_path, "val", 48)
    image, label = dataset[0]
    assert image.shape == (3, 48, 48) and label == 15 % 10
    assert len(dataset) == 2
