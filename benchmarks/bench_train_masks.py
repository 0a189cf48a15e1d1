"""What dropout and drop-path masks cost in dvt-train's compiled step: masks on vs every mask off.

Each variant runs in its own process, rounds alternate (on, off, on, off, ...), and the medians of all
timed steps are compared. "on" is the recipe: drop path 0.1 plus the T2T token performers' dropout 0.1
(and the config's other rates); "off" sets every dropout / drop-path rate to 0, so no cell draws a mask
(the step still computes the per-step stream words, a few hundred int32 values). Also printed: the first
step (compile) of each, the machine's GEMM rate and the step's achieved GMAC/s (3x the forward MACs of every
exit, a convention for forward + backward).

    python benchmarks/bench_train_masks.py [--model dvt_t2t_vit_12] [--batch 8] [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gemm_gmacs() -> float:
    """MindSpore's fp32 rate on a 1024^3 matrix product here (GMAC/s, median of 5)."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    class _MatMul(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    a = ms.Tensor(np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32))
    mm = _MatMul()
    mm(a, a).asnumpy()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        mm(a, a).asnumpy()
        times.append(time.perf_counter() - t0)
    return 1024 ** 3 / statistics.median(times) / 1e9


def worker(model_name: str, batch: int, steps: int, masks: bool) -> dict:
    """Build dvt-train's step for ``model_name`` (masks on or off), compile it, time ``steps`` steps."""
    import logging

    import mindspore as ms
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from dvt_ms.flops import cumulative_gflops
    from dvt_ms.models.layers import Dropout, DropPath, DropPathMasks
    from dvt_ms.train.cli import load_settings
    from dvt_ms.train.distributed import Runtime
    from dvt_ms.train.run import build_train_step, build_training_model

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    cfg = load_settings(["--model", model_name, "--batch_size", str(batch), "--drop_path_rate",
                       "0.1" if masks else "0.0"])
    runtime, log = Runtime("CPU", 0), logging.getLogger("bench")
    model = build_training_model(cfg, runtime, log)
    if not masks:  # the T2T performers' dropout is part of the architecture: switch it off by hand
        for _, cell in model.cells_and_names():
            if isinstance(cell, (Dropout, DropPath)):
                cell.rate = 0.0
            elif isinstance(cell, DropPathMasks):
                cell.active = False
    step, _ = build_train_step(cfg, model, 1000, runtime, log)
    step.set_train(True)
    step.sync_masks()
    spec = model.spec
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((batch, spec.in_chans, spec.img_size, spec.img_size)).astype(np.float32))
    y = ms.Tensor(np.full((batch, spec.num_classes), 1.0 / spec.num_classes, np.float32))
    t0 = time.perf_counter()
    step(x, y)[0].asnumpy()
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(x, y)[0].asnumpy()
        times.append(time.perf_counter() - t0)
    macs = 3 * cumulative_gflops(spec)[-1] * batch  # forward + backward, every exit
    return {"masks": masks, "first": first, "times": times, "train_gmac": macs, "gemm_gmacs": _gemm_gmacs()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dvt_t2t_vit_12")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.batch, args.steps, args.worker == "on")))
        return
    results = {"on": [], "off": []}
    for r in range(args.rounds):
        for variant in ("on", "off"):
            out = subprocess.run([sys.executable, __file__, "--worker", variant, "--model", args.model, "--batch",
                                  str(args.batch), "--steps", str(args.steps)], capture_output=True, text=True,
                                 check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[variant].append(result)
            print(f"round {r + 1} masks {variant}: first step {result['first']:.1f} s, median step "
                  f"{statistics.median(result['times']):.3f} s", flush=True)
    median = {v: statistics.median(t for res in rs for t in res["times"]) for v, rs in results.items()}
    first = {v: statistics.median(res["first"] for res in rs) for v, rs in results.items()}
    gemm = statistics.median(res["gemm_gmacs"] for rs in results.values() for res in rs)
    macs = results["on"][0]["train_gmac"]
    print(f"{args.model}, batch {args.batch}, {args.rounds} rounds x {args.steps} steps per variant (on this machine):")
    for v in ("on", "off"):
        print(f"  masks {v:3}: median step {median[v]:.3f} s ({args.batch / median[v]:.2f} img/s, "
              f"{macs / median[v]:.1f} GMAC/s of a {gemm:.1f} GMAC/s GEMM rate), first step {first[v]:.1f} s")
    print(f"  masks cost {100 * (median['on'] / median['off'] - 1):+.1f} % per step "
          f"(on / off = {median['on'] / median['off']:.3f})")


if __name__ == "__main__":
    main()
