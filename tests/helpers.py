"""Helpers shared by the whole test suite.

* paths inside the repository (``REPO``, ``TINY_CONFIG``), derived from this file: no test reads outside it;
* optional dependencies: ``HAVE_TORCH`` and the ``requires_torch`` / ``requires_sklearn`` markers, so that a
  test that must skip says why, and a test that needs only numpy and MindSpore runs without them;
* ``mindspore_mode``: run a block in graph or PyNative mode and put the previous mode back (the
  ``graph_mode`` / ``pynative_mode`` fixtures of ``conftest.py`` use it);
* ``load_config``: a config file checked against every command's options, as the shipped configs are;
* tiny specs, the published model names and the official checkpoints' key/shape lists
  (``tests/official_checkpoint_keys``);
* the PyTorch reference: building it, copying its weights into a MindSpore cascade, logits of both,
  official-format ``.pth.tar`` files;
* running the CLIs (``dvt-convert`` in-process, ``dvt-train`` in a subprocess), tiny image folders.

Everything that needs torch imports it inside the function, so this module imports without torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

import dvt_ms
from dvt_ms.checkpoint import read_checkpoint
from dvt_ms.config import load_yaml
from dvt_ms.models.spec import CascadeSpec
from dvt_ms.options import ALL_OPTIONS, ModelSettings

if TYPE_CHECKING:
    import torch

# ---- paths -----------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository root (the folder holding ``tests/``)."""
TINY_CONFIG = os.path.join(REPO, "configs", "dvt_tiny_cpu.yaml")
"""DeiT-style, 32px, exits 4/6/8, depth 4, width 64, both reuses on, 10 classes."""
OFFICIAL_KEYS_DIR = Path(REPO) / "tests" / "official_checkpoint_keys"
"""One ``<model>.keys.txt`` per published model: ``key<TAB>[shape]`` per tensor, in state-dict order."""


# ---- optional dependencies -------------------------------------------------------------------------

def importable(name: str) -> bool:
    """Whether ``import name`` would find the module, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


HAVE_TORCH = importable("torch")
requires_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs PyTorch (pip install .[torch])")
"""Mark a test that compares against PyTorch or writes PyTorch files."""
requires_sklearn = pytest.mark.skipif(not importable("sklearn"), reason="needs scikit-learn (pip install .[demo])")
"""Mark a test that loads the digits data set of scikit-learn."""


# ---- MindSpore execution mode ----------------------------------------------------------------------

@contextlib.contextmanager
def mindspore_mode(mode: int) -> Iterator[None]:
    """Run the block in MindSpore ``mode`` (``ms.GRAPH_MODE`` or ``ms.PYNATIVE_MODE``), then put the previous
    mode back, also when the block raises."""
    previous = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


# ---- configs ---------------------------------------------------------------------------------------

def flat_digits(root: Path) -> Path:
    """The demo's 450 validation digits, built under ``root``, copied into one folder as a user's own images
    (``<label>_<name>.png``, no class folders); returns that folder. Skips without scikit-learn."""
    pytest.importorskip("sklearn", reason="the digits images need scikit-learn (pip install .[demo])")
    import shutil

    from dvt_ms.demo.digits import build_digits_folder

    build_digits_folder(str(root / "digits"))
    flat = root / "flat"
    flat.mkdir()
    for label in sorted(os.listdir(root / "digits" / "val")):
        for name in os.listdir(root / "digits" / "val" / label):
            shutil.copy(root / "digits" / "val" / label / name, flat / f"{label}_{name}")
    return flat


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A flat YAML config validated against the options of every command, so that any shipped or
    written config file loads."""
    return load_yaml(path, ALL_OPTIONS)


def model_from_config(cfg: dict[str, Any], **extra: Any):
    """The model a config's model keys name (``extra``: further ``create_model`` arguments), weights not loaded."""
    return ModelSettings.from_config(cfg).build_model(**extra)


# ---- specs and the published models ----------------------------------------------------------------

PUBLISHED = ("dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small")
"""The three cascades with official checkpoints."""


def tiny_spec() -> CascadeSpec:
    """``configs/dvt_tiny_cpu.yaml``: DeiT-style, 32px, exits 4/6/8, both reuses on, 10 classes."""
    return ModelSettings.from_config(load_config(TINY_CONFIG)).model_spec()


def tiny_t2t_spec(**overrides: Any) -> CascadeSpec:
    """A tiny T2T-ViT cascade: 32px, exits 4/6/8, width 64, depth 2, 2 heads, 10 classes; ``overrides`` are
    further ``spec_for`` arguments (``t2t_variant="transformer"``, ...)."""
    args = {"img_size": 32, "exit_grids": [4, 6, 8], "embed_dim": 64, "depth": 2, "num_heads": 2, "num_classes": 10}
    return dvt_ms.spec_for("dvt_t2t_vit", **{**args, **overrides})


def official_key_rows(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of the official checkpoint of ``name``, in state-dict order."""
    rows = []
    for line in (OFFICIAL_KEYS_DIR / f"{name}.keys.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, shape = line.split("\t")
            rows.append((key, tuple(int(v) for v in shape.strip("[] ").split(",") if v.strip())))
    return rows


def official_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor of the official checkpoint of ``name``."""
    return dict(official_key_rows(name))


# ---- the PyTorch reference and parity --------------------------------------------------------------

def torch_reference(spec: CascadeSpec, seed: int = 0) -> torch.nn.Module:
    """The PyTorch reference DVT of ``spec``, randomly initialised from ``seed``, in eval mode."""
    import torch

    from dvt_ms.reference.torch_dvt import build_torch_dvt

    torch.manual_seed(seed)
    return build_torch_dvt(spec).eval()


def set_parameters(ms_model: ms.nn.Cell, arrays: Mapping[str, np.ndarray]) -> None:
    """Set every parameter of ``ms_model`` from ``arrays`` (name -> array); the names must be exactly the
    model's."""
    params = {p.name: p for p in ms_model.get_parameters()}
    assert set(params) == set(arrays), sorted(set(params) ^ set(arrays))
    for name, value in arrays.items():
        params[name].set_data(ms.Tensor(np.asarray(value)))


def copy_torch_weights(torch_model: torch.nn.Module, ms_model: ms.nn.Cell) -> None:
    """Load a torch reference's state dict into a MindSpore cascade (the names are identical)."""
    set_parameters(ms_model, {k: v.detach().numpy() for k, v in torch_model.state_dict().items()})


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """Logits of every exit of the PyTorch ``model`` on the images ``x``."""
    import torch

    with torch.no_grad():
        return [o.numpy() for o in model(torch.from_numpy(x))]


def ms_logits(model: ms.nn.Cell, x: np.ndarray) -> list[np.ndarray]:
    """Logits of every exit of the MindSpore ``model`` (put in inference mode) on the images ``x``."""
    model.set_train(False)
    return [o.asnumpy() for o in model(ms.Tensor(x))]


def max_relative_error(expected: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    """Largest ``max |expected - got| / max |expected|`` over the exits; both must have as many exits."""
    return max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(expected, got, strict=True))


def official_fields(num_exits: int, seed: int = 0) -> dict[str, Any]:
    """The evaluation fields of an official checkpoint, with random values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {
        "flops": [0.47, 1.45, 3.46][:num_exits],
        "anytime_classification": [69.04, 75.65, 80.0][:num_exits],
        "dynamic_threshold": torch.rand(59, num_exits, generator=gen),
        "budgeted_batch_classification": [[0.5 + 0.05 * i for i in range(59)], [70.0 + 0.1 * i for i in range(59)]],
    }


def save_official(spec: CascadeSpec, path: str | os.PathLike, prefix: str = "", container: str = "model_state_dict",
                  seed: int = 0, fields: bool = True,
                  extra: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Save a random-init PyTorch reference of ``spec`` like the official files (``prefix`` before every key,
    ``container="bare"`` for a plain state dict). Returns (model, the evaluation fields written)."""
    import torch

    model = torch_reference(spec, seed)
    state = OrderedDict((prefix + k, v) for k, v in model.state_dict().items())
    meta = official_fields(spec.num_exits, seed) if fields else {}
    payload = state if container == "bare" else {container: state, **meta, **(extra or {})}
    torch.save(payload, path)
    return model, meta


# ---- command lines ---------------------------------------------------------------------------------

def run_cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """Run ``dvt-convert ARGV`` in-process; returns (exit status, stdout, stderr)."""
    from dvt_ms.convert.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def subprocess_env() -> dict[str, str]:
    """The environment for a Python subprocess: this repository first on ``PYTHONPATH``, MindSpore quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("GLOG_v", "3")  # MindSpore: errors only on stderr
    return env


def train_command(*args: str) -> list[str]:
    """The command line of ``python -m dvt_ms.train ARGS`` with this interpreter."""
    return [sys.executable, "-m", "dvt_ms.train", *args]


def run_train(*args: str, cwd: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dvt_ms.train ARGS`` and return the finished process (stdout/stderr as text)."""
    return subprocess.run(train_command(*args), cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    """A TCP port that nothing listens on right now (for msrun's scheduler)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- training data and weights ---------------------------------------------------------------------

def make_image_folder(root: str, train_per_class: int, val_per_class: int, classes: int = 10, size: int = 32,
                      seed: int = 0) -> str:
    """``root/train/<class>/*.png`` and ``root/val/...``: noisy images whose colour depends on the class,
    so that a few steps of training visibly lower the loss. Returns ``root``."""
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


def checkpoint_weights(path: str) -> dict[str, np.ndarray]:
    """Name -> array of every tensor of a MindSpore checkpoint."""
    return read_checkpoint(path)[0]


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference between two sets of weights with the same names."""
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def photo_like(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 [height, width, 3] image with the structure of a photo: smooth colour gradients, a few blobs
    and sensor-like noise (so crops, resizes and colour ops meet realistic statistics)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / max(height - 1, 1), x / max(width - 1, 1)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        plane = 128 + 80 * (a * x + b * y) + 40 * np.sin(6.28 * (c * x + (1 - abs(c)) * y))
        for _ in range(3):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            plane += rng.uniform(-90, 90) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        channels.append(plane)
    image = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


#: (mode, file suffix) of every kind of image file the readers meet: PIL's modes as each format stores them
IMAGE_MODES = (("1", "png"), ("L", "png"), ("LA", "png"), ("P", "png"), ("PA", "png"), ("RGB", "jpg"),
               ("RGBA", "png"), ("CMYK", "jpg"), ("I;16", "png"), ("I", "tif"), ("F", "tif"), ("YCbCr", "jpg"),
               ("LAB", "tif"), ("RGB", "webp"), ("RGBA", "webp"), ("L", "bmp"), ("RGB", "ppm"), ("L", "pgm"))
#: sizes down to 1x1 and extreme aspect ratios (4000x10 and 10x4000)
EDGE_SIZES = ((1, 1), (1, 7), (7, 1), (4000, 10), (10, 4000), (2, 3))


def image_in_mode(pixels: np.ndarray, mode: str) -> Image.Image:
    """``pixels`` (uint8 RGB) as a PIL image of ``mode`` (16-bit and float modes scaled to their range)."""
    rgb = Image.fromarray(pixels)
    if mode == "I;16":
        return Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(pixels[..., 0].astype(np.int32))
    if mode == "F":
        return Image.fromarray(pixels[..., 0].astype(np.float32))
    if mode == "PA":
        return rgb.convert("P").convert("PA")
    return rgb.convert(mode)


def save_image(image: Image.Image, path: str) -> str:
    """Save ``image`` at ``path`` (a PA image, which PNG cannot store, goes through RGBA)."""
    if image.mode == "PA":
        image = image.convert("RGBA")
    image.save(path)
    return path


def write_mode_zoo(root: str, seed: int = 0, size: tuple[int, int] = (48, 36)) -> list[str]:
    """Files of every mode of :data:`IMAGE_MODES` (photo-like), of every :data:`EDGE_SIZES`, all-black and
    all-white (magnitudes 0 and max), and a PNG named ``.jpg``; returns their paths, sorted."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (mode, suffix) in enumerate(IMAGE_MODES):
        image = image_in_mode(photo_like(*size, rng), mode)
        paths.append(save_image(image, os.path.join(root, f"mode_{i:02d}.{suffix}")))
    for i, (w, h) in enumerate(EDGE_SIZES):
        paths.append(save_image(Image.fromarray(photo_like(w, h, rng)), os.path.join(root, f"size_{i}.png")))
    for value in (0, 255):
        flat = Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8))
        paths.append(save_image(flat, os.path.join(root, f"flat_{value}.png")))
    Image.fromarray(photo_like(*size, rng)).save(os.path.join(root, "png_named.jpg"), format="PNG")
    paths.append(os.path.join(root, "png_named.jpg"))
    return sorted(paths)
