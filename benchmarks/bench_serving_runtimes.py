"""dvt-predict's early exit on the three ways to run an export: ONNX Runtime, the checkpoint, MindIR.

A T2T-ViT-12 with random weights is saved, exported in both formats (``dvt-export --format both``), and the
thresholds are calibrated on the benchmark images (target shares 60 % / 25 % / 15 % at exits 1 / 2 / 3).
Each side then runs :class:`~dvt_ms.inference.engine.EarlyExitEngine` over the same images at batch 1 and
16, in its own process, the sides alternating round by round (medians):

* ``onnxruntime``: :class:`~dvt_ms.serve.onnx_runtime.OnnxStages` over the ONNX files;
* ``checkpoint``: the cascade from the checkpoint (:func:`dvt_ms.load_model`), static shapes and the fused
  CPU kernels: what ``dvt-predict --ckpt`` runs;
* ``mindir``: :class:`~dvt_ms.serve.graphs.ExportedStages` over the MindIR files (stock ops, dynamic batch);
* ``checkpoint_stock``: the checkpoint path built without the fused CPU kernels (``use_kernels(False)``): the
  stock MindSpore ops an export carries, static shapes. It shows what the exports' gap to the checkpoint owes to
  the kernels, which neither format can hold (a portable MindIR or ONNX file has no custom AOT ops).

Every side reports images per second and the GMAC/s its early exit achieves (the mean multiply-accumulates
per image the exits taken cost), next to the machine's fp32 GEMM rate (a 1024^3 numpy product) measured in
the same rounds.

    python benchmarks/bench_serving_runtimes.py [--model dvt_t2t_vit_12] [--rounds 7] [--images 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import Worker, answer  # noqa: E402

SIDES = ("onnxruntime", "checkpoint", "mindir", "checkpoint_stock")
BATCHES = (1, 16)
TARGET_SHARES = (0.60, 0.25, 0.15)
GEMM = 1024


def _gemm_seconds(np) -> float:
    a = np.random.default_rng(0).standard_normal((GEMM, GEMM)).astype(np.float32)
    start = time.perf_counter()
    a @ a
    return time.perf_counter() - start


def worker(side: str, folder: str) -> int:
    """One side: build its engine, then answer every ``round`` line with its timings."""
    import mindspore as ms
    import numpy as np

    import dvt_ms
    from dvt_ms.inference.engine import EarlyExitEngine
    from dvt_ms.kernels import use_kernels
    from dvt_ms.serve import read_manifest
    from dvt_ms.serve.predictor import exported_stages

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    with open(os.path.join(folder, "bench.json"), encoding="utf-8") as f:
        setup = json.load(f)
    images = np.load(os.path.join(folder, "images.npy"))
    batches = {b: [images[i:i + b] for i in range(0, len(images), b)] for b in BATCHES}
    with use_kernels(side != "checkpoint_stock"):  # cells choose their ops when built and compiled
        if side in ("checkpoint", "checkpoint_stock"):
            source = dvt_ms.load_model(os.path.join(folder, "model.ckpt")).model
        else:
            source = exported_stages(read_manifest(os.path.join(folder, "export")),
                                     "onnxruntime" if side == "onnxruntime" else "mindspore")
        engine = EarlyExitEngine(source, setup["thresholds"])
        counts = engine(images).counts.tolist()
        for b in BATCHES:  # compile / warm up every shape the rounds use
            for batch in batches[b]:
                engine(batch)
    answer({"ready": True, "counts": counts})
    for line in sys.stdin:
        if line.strip() != "round":
            break
        seconds = {}
        for b in BATCHES:
            start = time.perf_counter()
            for batch in batches[b]:
                engine(batch)
            seconds[str(b)] = time.perf_counter() - start
        answer({"seconds": seconds, "gemm": _gemm_seconds(np)})
    return 0


def _between(confidences, threshold: float) -> float:
    """``threshold`` moved halfway to the next lower confidence: the same images leave, and none sits within
    a rounding error of it (the runtimes' logits differ in the last bits)."""
    below = confidences[confidences < threshold]
    return float((threshold + below.max()) / 2) if below.size else float(threshold)


def prepare(folder: str, model_name: str, count: int) -> dict:
    """Save the model, export both formats, calibrate the thresholds on the images; returns the setup."""
    import mindspore as ms
    import numpy as np

    import dvt_ms
    from dvt_ms.checkpoint import save_checkpoint
    from dvt_ms.data.transforms import EvalTransform
    from dvt_ms.flops import cumulative_gflops
    from dvt_ms.inference.engine import EarlyExitEngine
    from dvt_ms.inference.operating_point import OperatingPoint
    from dvt_ms.inference.thresholds import find_thresholds, softmax_confidence
    from dvt_ms.serve.export import export_model

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    model = dvt_ms.create_model(model_name)
    model.set_train(False)
    spec = model.spec
    save_checkpoint(model, os.path.join(folder, "model.ckpt"), metadata={"model": model_name, "model_args": {}})
    images = np.random.default_rng(0).standard_normal((count, spec.in_chans, spec.img_size, spec.img_size))
    images = images.astype(np.float32)
    np.save(os.path.join(folder, "images.npy"), images)
    confidences = np.stack([softmax_confidence(logits)[0]
                            for logits in EarlyExitEngine(model, [1e8] * (spec.num_exits - 1)).all_exit_logits(images)])
    thresholds = find_thresholds(confidences, np.asarray(TARGET_SHARES, dtype=np.float32))
    thresholds = [_between(confidences[k], t) for k, t in enumerate(thresholds[:-1])] + [float(thresholds[-1])]
    export_model(model, os.path.join(folder, "export"), model_name=model_name, model_args={},
                 point=OperatingPoint(np.asarray(thresholds), "benchmark"),
                 transform=EvalTransform(spec.img_size, 0.875), formats=("mindir", "onnx"))
    setup = {"thresholds": [float(t) for t in thresholds], "cumulative_gflops": cumulative_gflops(spec)}
    with open(os.path.join(folder, "bench.json"), "w", encoding="utf-8") as f:
        json.dump(setup, f)
    return setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dvt_t2t_vit_12")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", type=int, default=32, help="images per round and batch size")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.folder)

    folder = tempfile.mkdtemp(prefix="dvt_bench_serving_")
    print(f"{args.model}, random weights: saving, exporting (MindIR + ONNX), calibrating ...", flush=True)
    setup = prepare(folder, args.model, args.images)
    workers = {side: Worker(side, [sys.executable, __file__, "--worker", side, "--folder", folder]) for side in SIDES}
    counts = {side: w.read()["counts"] for side, w in workers.items()}
    if len({tuple(c) for c in counts.values()}) != 1:
        raise SystemExit(f"the sides disagree on the exits taken: {counts}")
    shares = [c / args.images for c in counts["checkpoint"]]
    mean_gmacs = sum(s * g for s, g in zip(shares, setup["cumulative_gflops"], strict=True))
    times = {side: {b: [] for b in BATCHES} for side in SIDES}
    gemm = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side, w in workers.items():
            reply = w.round()
            for b in BATCHES:
                times[side][b].append(reply["seconds"][str(b)])
            gemm[side].append(reply["gemm"])
    for w in workers.values():
        w.close()
    print(f"exit shares {', '.join(f'{100 * s:.0f} %' for s in shares)}: {mean_gmacs:.3f} GMACs per image "
          f"(last exit {setup['cumulative_gflops'][-1]:.3f}); {args.images} images per round, {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs\n")
    print("| runtime | batch | img/s | ms per call | GMAC/s achieved | GEMM GMAC/s |")
    print("|---|---|---|---|---|---|")
    for b in BATCHES:
        for side in SIDES:
            seconds = statistics.median(times[side][b])
            rate = args.images / seconds
            print(f"| {side} | {b} | {rate:.1f} | {1e3 * seconds / (args.images / b):.2f} | {rate * mean_gmacs:.1f} | "
                  f"{GEMM ** 3 / statistics.median(gemm[side]) / 1e9:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
