"""The training data path at volume: the recipe's transform per worker, the pipeline with worker processes, and
the up-front data check per 100k files.

    python benchmarks/bench_train_data.py                  # 500x375 photo-like JPEGs, 100k files for the check
    python benchmarks/bench_train_data.py --files 20000 --rounds 3

Figures (medians over ``--rounds``):

* the recipe's transform (decode, RandomResizedCrop 224, flip, RandAugment ``rand-m9-mstd0.5-inc1``, normalise,
  random erasing 0.25) in this process: img/s of one worker, and the share of each stage;
* ``TrainData.dataset`` (worker processes, batching, mixup 0.8 / cutmix 1.0, smoothing) with 1 and 2 workers:
  img/s, and img/s per worker;
* ``check_images`` over ``--files`` small JPEG files (header) with 1, 2 and 4 processes, and over the photos
  (full decode): seconds per 100k files. The files were just written, so they are read from the page cache:
  a cold network file system is slower per file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dvt_ms.data.augment import RandAugment, random_erasing, random_resized_crop
from dvt_ms.data.folder import list_image_files, load_image
from dvt_ms.data.health import check_images
from dvt_ms.data.train_pipeline import TrainData, open_train_reader
from dvt_ms.data.transforms import to_normalized_chw
from tests.helpers import photo_like

RECIPE = {"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0, "smoothing": 0.1}


def write_photos(root: str, count: int, classes: int = 8) -> list[str]:
    rng = np.random.default_rng(0)
    unique = [Image.fromarray(photo_like(500, 375, rng)) for _ in range(min(count, 32))]
    for i in range(count):
        folder = os.path.join(root, "train", f"c{i % classes}")
        os.makedirs(folder, exist_ok=True)
        unique[i % len(unique)].save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    return list_image_files(os.path.join(root, "train"))


def write_small_files(root: str, count: int) -> list[str]:
    rng = np.random.default_rng(1)
    os.makedirs(root)
    blob_path = os.path.join(root, "blob.jpg")
    Image.fromarray(photo_like(64, 48, rng)).save(blob_path, quality=85)
    blob = open(blob_path, "rb").read()
    for i in range(count):
        folder = os.path.join(root, f"d{i // 1000:03d}")
        if i % 1000 == 0:
            os.makedirs(folder)
        with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
            f.write(blob)
    return list_image_files(root)


def transform_stages(paths: list[str], rounds: int) -> dict[str, float]:
    """Median seconds per image of each stage of the recipe's transform, and their sum."""
    aug = RandAugment.from_string(RECIPE["auto_augment"])
    per_round = []
    for r in range(rounds):
        times = dict.fromkeys(("decode", "crop", "randaugment", "normalise+erase"), 0.0)
        for i, path in enumerate(paths):
            rng = np.random.default_rng((r, i))
            t0 = time.perf_counter()
            image = load_image(path)
            t1 = time.perf_counter()
            image = random_resized_crop(image, rng, 224)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            t2 = time.perf_counter()
            image = aug(image, rng)
            t3 = time.perf_counter()
            random_erasing(to_normalized_chw(image), rng, RECIPE["reprob"])
            t4 = time.perf_counter()
            for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[key] += seconds / len(paths)
        per_round.append(times)
    return {key: statistics.median(t[key] for t in per_round) for key in per_round[0]}


def pipeline_rate(root: str, workers: int, rounds: int, batch: int = 64) -> float:
    """Median img/s of ``TrainData.dataset`` over one epoch of the folder (worker start-up excluded)."""
    reader = open_train_reader("imagefolder", root)
    data = TrainData(reader, batch, 8, 224, seed=0, num_parallel_workers=workers, **RECIPE)
    rates = []
    for r in range(rounds):
        iterator = data.dataset(r, 1).create_tuple_iterator(num_epochs=1, output_numpy=True)
        next(iterator)  # workers up, first batch out
        start, images = time.perf_counter(), 0
        for x, _ in iterator:
            images += len(x)
        rates.append(images / (time.perf_counter() - start))
        iterator.stop()
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=640, help="500x375 JPEGs for the transform and the pipeline")
    parser.add_argument("--files", type=int, default=100_000, help="small JPEG files for the header check")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dvt_bench_data_") as tmp:
        photos = write_photos(os.path.join(tmp, "photos"), args.photos)
        stages = transform_stages(photos[:200], args.rounds)
        total = sum(stages.values())
        print(f"recipe transform in one process (500x375 JPEG -> 224, {RECIPE['auto_augment']}, erasing 0.25): "
              f"{1 / total:.1f} img/s per worker")
        print("| stage | ms/img | share |\n|---|---|---|")
        for key, seconds in stages.items():
            print(f"| {key} | {seconds * 1e3:.2f} | {seconds / total:.0%} |")
        print("\n| pipeline (TrainData.dataset, batch 64, mixup/cutmix) | img/s | img/s per worker |\n|---|---|---|")
        for workers in (1, 2):
            rate = pipeline_rate(os.path.join(tmp, "photos"), workers, args.rounds)
            print(f"| {workers} worker{'s' if workers > 1 else ''} | {rate:.1f} | {rate / workers:.1f} |")
        small = write_small_files(os.path.join(tmp, "small"), args.files)
        print("\n| data check | files | processes | s per 100k files | files/s |\n|---|---|---|---|---|")
        for processes in (1, 2, 4):
            seconds = statistics.median(check_images(small, "header", processes).seconds for _ in range(args.rounds))
            print(f"| header | {len(small)} | {processes} | {seconds / len(small) * 1e5:.1f} | "
                  f"{len(small) / seconds:,.0f} |")
        for processes in (1, 2):
            seconds = statistics.median(check_images(photos, "full", processes).seconds for _ in range(args.rounds))
            print(f"| full (500x375 JPEG) | {len(photos)} | {processes} | {seconds / len(photos) * 1e5:.0f} | "
                  f"{len(photos) / seconds:,.0f} |")


if __name__ == "__main__":
    main()
