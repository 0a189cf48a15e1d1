"""Real early exit vs running every exit: measured speed-up next to the FLOPs-predicted one.

A DVT T2T-ViT-12 with random weights; the thresholds are calibrated on the benchmark images
themselves (budgeted-batch rule with target shares 60 % / 25 % / 15 %), so that 60 % of the images
leave at exit 1, 25 % at exit 2 and 15 % at exit 3. Variants, timed on the same batch in alternating
rounds (medians reported):

* ``early exit``: :class:`EarlyExitEngine` with its default shapes for the device (on CPU: static
  graphs, subsets padded to finely spaced bucket sizes);
* ``early exit, exact``: static graphs compiled for every exact subset size (no padding): the bound the
  default must stay within 10 % of;
* ``early exit, dynamic``: one graph per exit for any batch size (``set_inputs`` with ``None``);
* ``all exits``: the same compiled stages, every exit on every image (what the official code runs);
* ``last exit alone``: the 14x14 exit as a stand-alone T2T-ViT-12 (no DVT).

The FLOPs-predicted speed-up over all exits is ``cumulative[-1] / sum_k share_k * cumulative[k]``
(2.977x for these shares). Target: measured >= 0.9 x predicted.

    python benchmarks/bench_early_exit.py [--batch 20] [--rounds 5] [--model dvt_t2t_vit_12]

The official PyTorch DVT comparison is ``bench_vs_official.py``; this one compares dvt_ms's own ways of
running the same cascade.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindspore as ms
import numpy as np

import dvt_ms
from dvt_ms.flops import cumulative_gflops, stage_macs
from dvt_ms.inference.engine import EarlyExitEngine
from dvt_ms.inference.thresholds import find_thresholds, softmax_confidence
from dvt_ms.inference.throughput import last_exit_spec
from dvt_ms.models import DVTCascade

TARGET_SHARES = (0.60, 0.25, 0.15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dvt_t2t_vit_12")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    ms.set_seed(0)
    model = dvt_ms.create_model(args.model)
    model.set_train(False)
    spec = model.spec
    if spec.num_exits != len(TARGET_SHARES):
        raise SystemExit(f"this benchmark expects a 3-exit model, {args.model} has {spec.num_exits}")
    x = np.random.RandomState(0).randn(args.batch, spec.in_chans, spec.img_size, spec.img_size).astype(np.float32)

    engine = EarlyExitEngine(model, [1e8, 1e8])
    print(f"{args.model}, random weights, batch {args.batch}, {ms.get_context('device_target')}, "
          f"{os.cpu_count()} CPUs; compiling ...", flush=True)
    confidences = np.stack([softmax_confidence(logits)[0] for logits in engine.all_exit_logits(x)])
    thresholds = find_thresholds(confidences, np.asarray(TARGET_SHARES, dtype=np.float32))
    engine.set_thresholds(thresholds)
    counts = engine(x).counts
    shares = counts / counts.sum()
    cumulative = cumulative_gflops(spec)
    expected = float(np.dot(shares, cumulative))

    alone_spec = last_exit_spec(spec)
    alone = EarlyExitEngine(DVTCascade(alone_spec), [])
    alone_gflops = stage_macs(alone_spec)[0] / 1e9
    exact = EarlyExitEngine(model, thresholds, buckets=list(range(1, args.batch + 1)))
    # Dynamic shapes switch the fused CPU kernels off in the cells they compile: give them their own copy.
    dynamic_model = DVTCascade(spec)
    for mine, theirs in zip(dynamic_model.get_parameters(), model.get_parameters(), strict=True):
        mine.set_data(theirs.data)
    dynamic = EarlyExitEngine(dynamic_model, thresholds, buckets=None)
    variants = {
        "early exit": lambda: engine(x),
        "early exit, exact": lambda: exact(x),
        "early exit, dynamic": lambda: dynamic(x),
        "all exits": lambda: engine.all_exit_logits(x),
        "last exit alone": lambda: alone(x),
    }
    for run in variants.values():  # compile / warm up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {s[-1]:.2f}s" for n, s in seconds.items()),
              flush=True)

    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"\nthresholds {thresholds[0]:.6f} / {thresholds[1]:.6f}; exit shares "
          + " / ".join(f"{s:.1%}" for s in shares))
    print(f"GFLOPs per image: early exit {expected:.4f}, all exits {cumulative[-1]:.4f}, "
          f"last exit alone {alone_gflops:.4f}")
    print(f"{'variant':<18}{'median s':>10}{'img/s':>10}")
    for name, value in median.items():
        print(f"{name:<22}{value:>10.3f}{args.batch / value:>10.1f}")
    measured = median["all exits"] / median["early exit"]
    per_round = statistics.median(a / e for a, e in zip(seconds["all exits"], seconds["early exit"], strict=True))
    predicted = cumulative[-1] / expected
    print(f"\nspeed-up of early exit over all exits: measured {measured:.3f}x (median of per-round ratios "
          f"{per_round:.3f}x), FLOPs-predicted {predicted:.3f}x, ratio {measured / predicted:.3f} (target >= 0.9)")
    measured_alone = median["last exit alone"] / median["early exit"]
    predicted_alone = alone_gflops / expected
    print(f"speed-up of early exit over the last exit alone: measured {measured_alone:.3f}x, FLOPs-predicted "
          f"{predicted_alone:.3f}x, ratio {measured_alone / predicted_alone:.3f}")
    print(f"early exit with the default shapes vs static graphs of the exact subset sizes: "
          f"{median['early exit'] / median['early exit, exact']:.3f}x the time (target <= 1.10); "
          f"dynamic-batch graphs: {median['early exit, dynamic'] / median['early exit, exact']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
