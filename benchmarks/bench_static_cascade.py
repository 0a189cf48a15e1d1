"""Throughput of the static cascade (every exit on every image, fp32, graph mode) vs the PyTorch reference.

Prints, per model, the median img/s of MindSpore and of the PyTorch reference at the same batch on the
same machine, and their ratio. Both run in inference mode with identical weights. MindSpore is timed
three ways: the whole cascade compiled as one graph for this batch size (``model(x)``, static shapes),
the same graph compiled once for any batch size (``set_inputs`` with a ``None`` batch dimension,
dynamic shapes), and exit by exit, each exit its own compiled graph fed the previous exit's state
(``model.run_stage``).

    python benchmarks/bench_static_cascade.py [--models dvt_t2t_vit_12 ...] [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mindspore as ms
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import time_calls  # benchmarks/timing.py

import dvt_ms
from dvt_ms.models import DVTCascade


def bench(name: str, batch: int, repeats: int, warmup: int) -> dict:
    import torch

    from dvt_ms.reference.torch_dvt import build_torch_dvt

    spec = dvt_ms.spec_for(name)
    torch.manual_seed(0)
    reference = build_torch_dvt(spec).eval()
    models = []
    for dynamic in (False, True):
        model = DVTCascade(spec)
        model.set_train(False)
        params = {p.name: p for p in model.get_parameters()}
        for key, value in reference.state_dict().items():
            params[key].set_data(ms.Tensor(value.numpy()))
        if dynamic:
            model.set_inputs(ms.Tensor(shape=[None, 3, spec.img_size, spec.img_size], dtype=ms.float32))
        models.append(model)
    model, dynamic_model = models
    x = np.random.RandomState(0).randn(batch, 3, spec.img_size, spec.img_size).astype(np.float32)
    x_ms, x_pt = ms.Tensor(x), torch.from_numpy(x)

    def run_ms():
        return [o.asnumpy() for o in model(x_ms)]

    def run_dynamic():
        return [o.asnumpy() for o in dynamic_model(x_ms)]

    def run_stages():
        state, outs = None, []
        for k in range(model.num_exits):
            logits, state = model.run_stage(k, x_ms, state)
            outs.append(logits.asnumpy())
        return outs

    def run_pt():
        with torch.inference_mode():
            return [o.numpy() for o in reference(x_pt)]

    t_ms = time_calls(run_ms, repeats, warmup)[1]
    t_dy = time_calls(run_dynamic, repeats, warmup)[1]
    t_st = time_calls(run_stages, repeats, warmup)[1]
    t_pt = time_calls(run_pt, repeats, warmup)[1]
    return {"model": name, "ms": batch / t_ms, "dynamic": batch / t_dy, "stages": batch / t_st,
            "torch": batch / t_pt, "ratio": t_pt / t_ms, "ratio_dynamic": t_pt / t_dy, "ratio_stages": t_pt / t_st}


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
    print("img/s: MindSpore one graph (static batch) | one graph (any batch) | per-exit graphs | PyTorch; "
          "ratio = MindSpore / PyTorch speed")
    print(f"{'model':<16} {'static':>8} {'any-batch':>10} {'per-exit':>9} {'PyTorch':>8} {'ratio':>7} "
          f"{'ratio any-batch':>16} {'ratio per-exit':>15}")
    for name in args.models:
        r = bench(name, args.batch, args.repeats, args.warmup)
        print(f"{r['model']:<16} {r['ms']:>8.2f} {r['dynamic']:>10.2f} {r['stages']:>9.2f} {r['torch']:>8.2f} "
              f"{r['ratio']:>7.2f} {r['ratio_dynamic']:>16.2f} {r['ratio_stages']:>15.2f}")


if __name__ == "__main__":
    main()
