"""Helpers for training tests: tiny generated image folders and running dvt-train in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image

from dvt_ms.checkpoint import read_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO, "configs", "dvt_tiny_cpu.yaml")


def make_image_folder(root: str, train_per_class: int, val_per_class: int, classes: int = 10, size: int = 32,
                      seed: int = 0) -> str:
    """``root/train/<class>/*.png`` and ``root/val/...``: noisy images whose colour depends on the class,
    so that a few steps of training visibly lower the loss."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f"class_{c:02d}")
            os.makedirs(folder, exist_ok=True)
            base = np.zeros((size, size, 3), np.float32)
            base[..., c % 3] = 60 + 190 * c / max(classes - 1, 1)
            base[: size // 2, :, (c + 1) % 3] = 120 * (c % 2)
            for i in range(count):
                image = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(os.path.join(folder, f"img_{i:03d}.png"))
    return root


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("GLOG_v", "3")  # MindSpore: errors only on stderr
    return env


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvt_ms.train", *args]


def run_train(*args: str, cwd: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m dvt_ms.train ARGS`` and return the finished process (stdout/stderr as text)."""
    return subprocess.run(train_command(*args), cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    """A TCP port that nothing listens on right now (for msrun's scheduler)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(path: str) -> dict[str, np.ndarray]:
    return read_checkpoint(path)[0]


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
