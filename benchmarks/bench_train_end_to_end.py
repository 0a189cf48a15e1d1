"""dvt-train end to end on a synthetic image folder, next to its bare compiled step.

The end-to-end run is ``dvt-train`` itself with a published recipe (``-c configs/dvt_t2t_vit_12.yaml`` by
default: RandAugment, random erasing, mixup / cutmix, label smoothing, EMA, drop path, the config's
``num_parallel_workers``) on a folder of random JPEG images of random sizes, in float32 (``--amp_level O0``,
the CPU precision), with validation and periodic checkpoints off. Its speed is what it writes into
``results.json`` for the last epoch (img/s over that epoch's steps, data pipeline included; the first epoch
holds the compile). The bare step is dvt-train's compiled step fed one fixed batch, in a process of its own
after the run (the two are not alternated: the run is a whole training). The gap between the two is what the
data pipeline costs on this machine.

    python benchmarks/bench_train_end_to_end.py [-c configs/dvt_t2t_vit_12.yaml] [--batch 8] [--images 160]
        [--epochs 2] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLASSES = 4


def make_folder(root: Path, images: int, seed: int = 0) -> None:
    """``root/train/<class>/*.jpg`` and a small ``root/val``: random images of random sizes (256-480 px)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", CLASSES)):
        for i in range(count):
            folder = root / split / f"class_{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = rng.integers(256, 481, size=2)
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def end_to_end(args, data: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "dvt_ms.train", "-c", args.config, "--data_dir", str(data), "--num_classes",
           str(CLASSES), "--batch_size", str(args.batch), "--amp_level", "O0", "--epoch_size", str(args.epochs),
           "--warmup_epochs", "0", "--val_interval", "0", "--ckpt_interval", "0", "--log_interval", "5",
           "--ckpt_save_dir", str(out), "--device_target", "CPU"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dvt-train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    first = [line for line in proc.stdout.splitlines() if "first step" in line]
    return {"epochs": json.loads((out / "results.json").read_text())["epochs"], "first_step_line": first[:1],
            "workers": _config_value(args.config, "num_parallel_workers")}


def _config_value(path: str, key: str):
    import yaml

    return yaml.safe_load(Path(path).read_text()).get(key)


def bare_step(args) -> list[float]:
    """Seconds per call of dvt-train's compiled step on one fixed batch (same recipe and model), in a process
    of its own."""
    code = f"""
import json, sys, time
import mindspore as ms, numpy as np
sys.path.insert(0, {str(REPO)!r})
from dvt_ms.train.cli import load_settings
from dvt_ms.train.run import build_train_step, build_training_model
from dvt_ms.train.distributed import Runtime
import logging
ms.set_context(mode=ms.GRAPH_MODE); ms.set_device("CPU")
cfg = load_settings(["-c", {args.config!r}, "--num_classes", "{CLASSES}", "--batch_size", "{args.batch}",
                   "--amp_level", "O0", "--warmup_epochs", "0"])
runtime, log = Runtime("CPU", 0), logging.getLogger("bench")
model = build_training_model(cfg, runtime, log)
step, _ = build_train_step(cfg, model, 100, runtime, log)
step.set_train(True); step.sync_masks()
rng = np.random.default_rng(0)
x = ms.Tensor(rng.standard_normal(({args.batch}, 3, model.img_size, model.img_size)).astype(np.float32))
t = rng.random(({args.batch}, {CLASSES})).astype(np.float32); t = ms.Tensor(t / t.sum(1, keepdims=True))
step(x, t)[0].asnumpy()
times = []
for _ in range({args.steps}):
    t0 = time.perf_counter(); step(x, t)[0].asnumpy(); times.append(time.perf_counter() - t0)
print("@@times " + json.dumps(times))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("@@times ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the bare step failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("@@times "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default=str(REPO / "configs" / "dvt_t2t_vit_12.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=160, help="training images in the synthetic folder")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed calls of the bare step")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "run"
        make_folder(data, args.images)
        run = end_to_end(args, data, out)
    times = bare_step(args)
    last = run["epochs"][-1]
    speed = last["img_per_sec"]
    bare = args.batch / statistics.median(times)
    print(f"dvt-train end to end, {Path(args.config).name}, batch {args.batch}, fp32, {args.images} synthetic "
          f"images, num_parallel_workers {run['workers']} (on this machine, {os.cpu_count()} CPUs)")
    print("| | img/s |\n|---|---|")
    print(f"| dvt-train, last of {args.epochs} epochs (data pipeline included) | {speed:.2f} |")
    print(f"| bare compiled step, one fixed batch (median of {len(times)}) | {bare:.2f} |")
    print(f"| end to end / bare step | {speed / bare:.2f} |")
    if run["first_step_line"]:
        print(run["first_step_line"][0].split(" ", 1)[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
