"""dvt-train's compiled train step against the official PyTorch DVT's, on the same CPU.

The official side is its ``main.py`` training step, run unmodified through ``official_dvt.py``: the model
in train mode built with ``drop_path_rate=0.1`` (the recipe; the T2T performers' dropout 0.1 is part of
the architecture), the sum of timm's ``SoftTargetCrossEntropy`` over the three exits, ``zero_grad``,
``loss.backward()`` and ``torch.optim.AdamW`` (lr 5e-4, weight decay 0.05) over the parameter groups of
the repository's ``create_optimizer`` (no decay for 1-D tensors and biases). dvt_ms runs dvt-train's own
step (:func:`dvt_ms.train.run.build_train_step`: forward of every exit, summed soft-target loss, backward,
overflow check, AdamW, schedule) with ``--drop_path_rate 0.1``, fp32 (``--amp_level O0``). Both start from
the same weights (the official model's initialisation, handed over as a file) and take the same images and
soft targets.

Each side runs in its own process; after the first step (its time includes MindSpore's compile) and two
warm-up steps, the parent alternates the sides round by round and reports medians. Printed per model and
batch: first step, median step, img/s, the ratio (official time / dvt_ms time, > 1: dvt_ms faster), the
machine's fp32 GEMM rate in each framework and each side's achieved GMAC/s (3x the forward MACs of every
exit: the usual forward + backward convention) and each process's peak resident memory.

    python benchmarks/bench_train_vs_official.py --official DIR [--models dvt_t2t_vit_12 dvt_deit_small]
        [--batches 8 32] [--rounds 5] [--repeats 2]
    python benchmarks/bench_train_vs_official.py --official DIR --profile [--models ...] [--batches 8]

``--profile`` prints, per side, the op types that take the time in one train step (MindSpore's profiler:
its backward ops are the ``*Grad`` kernels; torch.profiler: self CPU time per aten op, backward ones named
``*_backward``).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

from timing import Worker, answer, timed

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DROP_PATH = 0.1
LR, WEIGHT_DECAY = 5e-4, 0.05


def _batch(batch: int, num_classes: int):
    import numpy as np

    rng = np.random.RandomState(0)
    images = rng.randn(batch, 3, 224, 224).astype(np.float32)
    logits = rng.randn(batch, num_classes).astype(np.float32)
    targets = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # soft targets, as after mixup
    return images, targets.astype(np.float32)


GEMM = 1024  # the machine-rate probe: a GEMM^3 fp32 matrix product, timed in every round after the steps


def _serve(step, matmul, repeats: int, extra: dict) -> None:
    first = timed(step)
    step()
    step()
    matmul()
    answer({"first": first, **extra})
    for line in sys.stdin:
        if line.strip() != "round":
            break
        times = [timed(step) for _ in range(repeats)]
        answer({"times": times, "gemm": [timed(matmul) for _ in range(3)],
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20})  # Linux: KiB


def official_step(args):
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from official_dvt import load_official

    torch.manual_seed(0)
    model = load_official(args.official, args.model, drop_path_rate=DROP_PATH).train()
    np.savez(args.weights, **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    from timm.loss import SoftTargetCrossEntropy  # the official repository's bundled timm
    from timm.optim.optim_factory import add_weight_decay

    optimizer = torch.optim.AdamW(add_weight_decay(model, WEIGHT_DECAY), lr=LR, weight_decay=0.0)
    loss_fn = SoftTargetCrossEntropy()
    images, targets = (torch.from_numpy(a) for a in _batch(args.batch, model.normal_token.num_classes))

    def step():
        outputs = model(images)
        loss = sum(loss_fn(out, targets) for out in outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    a = torch.randn(GEMM, GEMM)
    return step, lambda: torch.mm(a, a), {"threads": torch.get_num_threads()}


def dvt_ms_step(args):
    import logging

    import mindspore as ms
    import numpy as np

    sys.path.insert(0, str(REPO))
    from dvt_ms.train.cli import load_settings
    from dvt_ms.train.distributed import Runtime
    from dvt_ms.train.run import build_train_step, build_training_model

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    cfg = load_settings(["--model", args.model, "--batch_size", str(args.batch), "--drop_path_rate", str(DROP_PATH),
                       "--amp_level", "O0", "--lr", str(LR), "--weight_decay", str(WEIGHT_DECAY),
                       "--warmup_epochs", "0"])
    runtime, log = Runtime("CPU", 0), logging.getLogger("bench")
    model = build_training_model(cfg, runtime, log)
    weights = np.load(args.weights)
    params = {p.name: p for p in model.get_parameters()}
    if set(params) != set(weights.files):
        raise SystemExit(f"parameter names differ from the official model's: "
                         f"{sorted(set(params) ^ set(weights.files))[:5]}")
    for name, value in weights.items():
        # ops.assign, not set_data: set_data before the first compile adds ~5 s to it (T2T-ViT-12, this machine),
        # which a run starting from its own initialisation does not pay
        ms.ops.assign(params[name], ms.Tensor(value))
    train_step, _ = build_train_step(cfg, model, 1000, runtime, log)
    train_step.set_train(True)
    train_step.sync_masks()
    images, targets = (ms.Tensor(a) for a in _batch(args.batch, model.num_classes))

    def step():
        return float(train_step(images, targets)[0].asnumpy())

    a = ms.Tensor(np.random.default_rng(0).standard_normal((GEMM, GEMM)).astype(np.float32))
    matmul = ms.jit(ms.ops.matmul)
    return step, lambda: matmul(a, a).asnumpy(), {"threads": None}


def _forward_gmac(model_name: str) -> float:
    sys.path.insert(0, str(REPO))
    from dvt_ms.flops import cumulative_gflops
    from dvt_ms.models.registry import spec_for

    return cumulative_gflops(spec_for(model_name))[-1]


def profile_side(args, step) -> dict[str, float]:
    """Milliseconds per step of each op type, over ``args.repeats`` profiled steps."""
    step()
    step()
    if args.worker == "official":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                step()
        return {e.key: e.self_cpu_time_total / 1e3 / args.repeats for e in prof.key_averages()
                if not e.key.startswith(("autograd::", "Optimizer."))}
    import mindspore as ms

    with tempfile.TemporaryDirectory() as out:
        profiler = ms.Profiler(output_path=out)
        for _ in range(args.repeats):
            step()
        profiler.analyse()
        path = glob.glob(os.path.join(out, "*", "FRAMEWORK", "cpu_op_type_info_*.csv"))[0]
        with open(path, newline="") as f:
            return {r["op_type"]: float(r["total_compute_time"]) / args.repeats for r in csv.DictReader(f)}


def worker_main(args) -> None:
    step, matmul, extra = official_step(args) if args.worker == "official" else dvt_ms_step(args)
    if args.profile:
        answer({"profile": profile_side(args, step)})
        return
    _serve(step, matmul, args.repeats, extra)


def start_worker(side: str, args, model: str, batch: int, weights: str) -> Worker:
    cmd = [sys.executable, __file__, "--worker", side, "--official", args.official, "--model", model,
           "--batch", str(batch), "--weights", weights, "--repeats", str(args.repeats)]
    if args.profile:
        cmd.append("--profile")
    return Worker(side, cmd)


def compare(args, model: str, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        official = start_worker("official", args, model, batch, weights)
        info = {"official": official.read()}  # the weights file is written before the first step
        ours = start_worker("dvt_ms", args, model, batch, weights)
        info["dvt_ms"] = ours.read()
        times: dict[str, list[float]] = {"official": [], "dvt_ms": []}
        gemm: dict[str, list[float]] = {"official": [], "dvt_ms": []}
        peak: dict[str, float] = {}
        try:
            for r in range(args.rounds):
                for worker in ((official, ours) if r % 2 == 0 else (ours, official)):
                    reply = worker.round()
                    times[worker.side].extend(reply["times"])
                    gemm[worker.side].extend(reply["gemm"])
                    peak[worker.side] = reply["peak_rss_gib"]
                print(f"  {model} batch {batch} round {r + 1}/{args.rounds}: "
                      + ", ".join(f"{s} {statistics.median(t[-args.repeats:]):.3f} s" for s, t in times.items()),
                      file=sys.stderr, flush=True)
        finally:
            official.close()
            ours.close()
    return {"model": model, "batch": batch, "info": info, "median": {s: statistics.median(t) for s, t in times.items()},
            "gemm": {s: GEMM ** 3 / statistics.median(t) / 1e9 for s, t in gemm.items()},
            "train_gmac": 3 * _forward_gmac(model) * batch, "peak_rss_gib": peak}


def report(result: dict) -> str:
    b, med, info, gmac = result["batch"], result["median"], result["info"], result["train_gmac"]
    lines = [f"{result['model']}, batch {b}, fp32, drop path {DROP_PATH} (on this machine)",
             "| | first step (s) | median step (s) | img/s | GMAC/s achieved | GEMM GMAC/s | peak RSS (GiB) |",
             "|---|---|---|---|---|---|---|"]
    for side, label in (("official", "official PyTorch"), ("dvt_ms", "dvt_ms")):
        lines.append(f"| {label} | {info[side]['first']:.1f} | {med[side]:.3f} | {b / med[side]:.2f} | "
                     f"{gmac / med[side]:.1f} | {result['gemm'][side]:.1f} | {result['peak_rss_gib'][side]:.2f} |")
    lines.append(f"| ratio (official / dvt_ms) | | {med['official'] / med['dvt_ms']:.2f}x | | | | |")
    return "\n".join(lines)


def profile_table(model: str, batch: int, tables: dict[str, dict[str, float]], top: int) -> str:
    columns = []
    for side, ops in tables.items():
        ranked = sorted(ops.items(), key=lambda kv: -kv[1])
        columns.append((side, sum(ops.values()), ranked[:top]))
    lines = [f"{model}, batch {batch}: ms per train step by op type (on this machine)",
             "| " + " | ".join(f"{side} op | ms" for side, _, _ in columns) + " |", "|" + "---|---|" * len(columns),
             "| " + " | ".join(f"**total** | **{total:.0f}**" for _, total, _ in columns) + " |"]
    for i in range(top):
        lines.append("| " + " | ".join(f"{ops[i][0]} | {ops[i][1]:.1f}" if i < len(ops) else " | "
                                        for _, _, ops in columns) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", help="folder of a copy of blackfeather-wang/Dynamic-Vision-Transformer")
    parser.add_argument("--models", nargs="+", default=["dvt_t2t_vit_12", "dvt_deit_small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per side and round")
    parser.add_argument("--profile", action="store_true", help="per-op profile of one step per side instead")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", choices=("official", "dvt_ms"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.official:
        parser.error("--official DIR is required: the baseline is the official PyTorch DVT "
                     "(a copy of blackfeather-wang/Dynamic-Vision-Transformer)")
    if args.worker:
        worker_main(args)
        return 0
    import torch

    print(f"official PyTorch DVT vs dvt-train's step, separate processes; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs", flush=True)
    results = []
    for model in args.models:
        for batch in args.batches:
            if args.profile:
                with tempfile.TemporaryDirectory() as tmp:
                    weights = os.path.join(tmp, "weights.npz")
                    tables = {}
                    for side in ("official", "dvt_ms"):
                        worker = start_worker(side, args, model, batch, weights)
                        tables[side] = worker.read()["profile"]
                        worker.close()
                print("\n" + profile_table(model, batch, tables, args.top) + "\n", flush=True)
                results.append({"model": model, "batch": batch, "profile": tables})
                continue
            results.append(compare(args, model, batch))
            print("\n" + report(results[-1]) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
