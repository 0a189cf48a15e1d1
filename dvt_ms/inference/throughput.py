"""Wall-clock comparison: real early exit vs every exit on every image vs the last exit alone."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from ..flops import cumulative_gflops, stage_macs
from ..models.cascade import DVTCascade
from ..models.spec import CascadeSpec
from .engine import EarlyExitEngine

__all__ = ["last_exit_spec", "speed_report", "time_variants"]


def last_exit_spec(spec: CascadeSpec) -> CascadeSpec:
    """The last exit of a cascade as a stand-alone one-exit network (no reuse modules): the backbone of
    the largest token grid, i.e. what one would run without DVT (T2T-ViT-12 at 14x14 for DVT T2T-ViT-12)."""
    last = replace(spec.exits[-1], feature_reuse=False, relation_reuse=False)
    return replace(spec, exits=(last,), exit_names=(spec.exit_names[-1],))


def time_variants(variants: dict[str, Callable[[np.ndarray], object]], batches: Sequence[np.ndarray],
                  rounds: int = 3) -> dict[str, float]:
    """Median images per second of each variant over ``batches`` (each variant first runs every batch
    once untimed, so that compilation is not measured). Variants alternate within a round."""
    images = sum(len(b) for b in batches)
    for run in variants.values():
        for batch in batches:
            run(batch)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(max(1, rounds)):
        for name, run in variants.items():
            start = time.perf_counter()
            for batch in batches:
                run(batch)
            seconds[name].append(time.perf_counter() - start)
    return {name: images / statistics.median(values) for name, values in seconds.items()}


def speed_report(engine: EarlyExitEngine, batches: Sequence[np.ndarray], rounds: int = 3,
                 buckets: Sequence[int] | None = None) -> dict[str, object]:
    """Time the three ways of running ``engine.model`` on the same ``batches`` and set the measured
    speed-ups next to the ones the FLOPs predict for the exits the images actually took.

    The last-exit-alone network has random weights: only its speed matters here.
    """
    spec = engine.spec
    alone_spec = last_exit_spec(spec)
    alone = EarlyExitEngine(DVTCascade(alone_spec), [], buckets=buckets, min_batch=engine.min_batch)
    counts = np.zeros(engine.num_exits, dtype=np.int64)
    for batch in batches:
        counts += engine(batch).counts
    cumulative = cumulative_gflops(spec)
    expected = float(np.dot(counts / counts.sum(), cumulative))
    alone_gflops = stage_macs(alone_spec)[0] / 1e9
    rates = time_variants({"early_exit": engine, "all_exits": engine.all_exit_logits, "last_exit_alone": alone},
                          batches, rounds)
    return {
        "images": int(counts.sum()),
        "batch_size": int(max(len(b) for b in batches)),
        "rounds": int(max(1, rounds)),
        "exit_counts": counts.tolist(),
        "early_exit_img_per_s": rates["early_exit"],
        "all_exits_img_per_s": rates["all_exits"],
        "last_exit_alone_img_per_s": rates["last_exit_alone"],
        "early_exit_gflops": expected,
        "all_exits_gflops": cumulative[-1],
        "last_exit_alone_gflops": alone_gflops,
        "measured_speedup_vs_all_exits": rates["early_exit"] / rates["all_exits"],
        "predicted_speedup_vs_all_exits": cumulative[-1] / expected,
        "measured_speedup_vs_last_exit_alone": rates["early_exit"] / rates["last_exit_alone"],
        "predicted_speedup_vs_last_exit_alone": alone_gflops / expected,
    }
