"""dvt-train through a whole epoch of the T2T-ViT-12 recipe's data settings at the top of RandAugment's scale
(``rand-m10-inc1``: posterize to 0 bits, solarize at 0, every op at full strength) on 2,000 generated
500x375 photo-like JPEGs. The model is shrunk (one block per exit, narrow) so that the epoch is about the data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, photo_like, run_train

RECIPE = os.path.join(REPO, "configs", "dvt_t2t_vit_12.yaml")


def _jpeg_folder(root: str, classes: int = 8, per_class: int = 250) -> str:
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(photo_like(500, 375, rng)) for _ in range(48)]
    for c in range(classes):
        folder = os.path.join(root, "train", f"n{c:08d}")
        os.makedirs(folder)
        for i in range(per_class):
            photos[(c * per_class + i) % len(photos)].save(os.path.join(folder, f"{i:04d}.JPEG"), quality=90)
    return root


@pytest.mark.slow
def test_an_epoch_of_the_recipe_at_magnitude_ten(tmp_path):
    data = _jpeg_folder(str(tmp_path / "data"))
    run_dir = str(tmp_path / "run")
    proc = run_train("-c", RECIPE, "--data_dir", data, "--auto_augment", "rand-m10-inc1", "--num_classes", "8",
                     "--embed_dim", "32", "--depth", "1", "--num_heads", "1", "--mlp_ratio", "1.0", "--token_dim", "16",
                     "--amp_level", "O0", "--batch_size", "64", "--epoch_size", "1", "--warmup_epochs", "0",
                     "--val_interval", "0", "--num_parallel_workers", "2", "--ema", "False", "--log_interval", "10",
                     "--ckpt_save_dir", run_dir, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
        record = json.load(f)
    assert record["checked_images"] == 2000 and record["skipped_images"] == []
    (entry,) = record["epochs"]
    assert entry["epoch"] == 1 and all(np.isfinite(entry["train_loss"]))
    assert "epoch 1/1 step 31/31" in proc.stdout  # 2,000 images / 64 per step
