"""Throughput of the static cascade (every exit on every image, fp32, graph mode) vs the PyTorch reference.

Prints, per model, the median img/s of MindSpore and of the PyTorch reference at the same batch on the
same machine, and their ratio. Both run in inference mode with identical weights.

    python benchmarks/bench_static_cascade.py [--models dvt_t2t_vit_12 ...] [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import mindspore as ms
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dvt_ms
from dvt_ms.models import DVTCascade


def time_calls(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, batch: int, repeats: int, warmup: int) -> dict:
    import torch

    from dvt_ms.reference.torch_dvt import build_torch_dvt

    spec = dvt_ms.spec_for(name)
    torch.manual_seed(0)
    reference = build_torch_dvt(spec).eval()
    model = DVTCascade(spec)
    model.set_train(False)
    params = {p.name: p for p in model.get_parameters()}
    for key, value in reference.state_dict().items():
        params[key].set_data(ms.Tensor(value.numpy()))
    model.set_inputs(ms.Tensor(shape=[None, 3, spec.img_size, spec.img_size], dtype=ms.float32))
    x = np.random.RandomState(0).randn(batch, 3, spec.img_size, spec.img_size).astype(np.float32)
    x_ms, x_pt = ms.Tensor(x), torch.from_numpy(x)

    def run_ms():
        return [o.asnumpy() for o in model(x_ms)]

    def run_pt():
        with torch.inference_mode():
            return [o.numpy() for o in reference(x_pt)]

    t_ms = time_calls(run_ms, repeats, warmup)
    t_pt = time_calls(run_pt, repeats, warmup)
    return {"model": name, "ms": batch / t_ms, "torch": batch / t_pt, "ratio": t_pt / t_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    import torch

    print(f"static cascade, all exits, fp32, batch {args.batch}, median of {args.repeats}; "
          f"torch {torch.__version__} threads {torch.get_num_threads()}, mindspore {ms.__version__}")
    print(f"{'model':<18} {'MindSpore img/s':>16} {'PyTorch img/s':>14} {'ratio ms/torch':>15}")
    for name in args.models:
        r = bench(name, args.batch, args.repeats, args.warmup)
        print(f"{r['model']:<18} {r['ms']:>16.2f} {r['torch']:>14.2f} {r['ratio']:>15.2f}")


if __name__ == "__main__":
    main()
