"""dvt_ms against the official PyTorch DVT on the same CPU: whole cascade, each exit, real early exit.

The baseline is the official code itself (blackfeather-wang/Dynamic-Vision-Transformer, run unmodified
through ``official_dvt.py``), never a re-implementation of ours. Each side runs in its own process;
the parent alternates them round by round (one side idle while the other is timed) and reports
medians. Both sides hold the same weights (the official model's random initialisation, handed over
as a file) and the same images, and the parent checks that they compute the same logits before
timing anything.

Per round and side (batch ``--batch``, fp32, inference):

* whole cascade: every exit on every image (official ``model(x)``; dvt_ms ``model(x)``, one graph);
* exit k alone: exit 1 on the images, exit 2 / 3 given the upstream exit's features and relations
  (official sub-models ``less_less_token`` / ``less_token`` / ``normal_token``; dvt_ms
  ``model.run_stage``);
* real early exit (dvt_ms only, :class:`EarlyExitEngine`, its default shapes for the device): thresholds
  calibrated on the batch so that ``--shares`` of the images leave at each exit, compared with the
  official every-exit forward, which is what the official code runs to classify images;
* the machine's rate for each framework: a 1024^3 fp32 matrix product, timed in the same rounds (so with
  the other process idle), reported as GMAC/s next to each exit's achieved GMAC/s.

    python benchmarks/bench_vs_official.py --official DIR [--models dvt_t2t_vit_12 ...] [--batch 16]
        [--rounds 7] [--shares 0.6,0.25,0.15]

There is no fallback baseline: our own PyTorch reference (``dvt_ms.reference``) runs ~25 % slower than
the official code (it computes the grid resizes as interpolate + pool on every call), so a ratio against
it would flatter dvt_ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from timing import Worker, answer, timed

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MEASURES = ("cascade", "exit1", "exit2", "exit3", "early_exit")


# ---- workers ---------------------------------------------------------------------------------------

def _images(batch: int, img_size: int):
    import numpy as np

    return np.random.RandomState(0).randn(batch, 3, img_size, img_size).astype(np.float32)


GEMM = 1024  # the machine-rate probe: a GEMM^3 fp32 matrix product, timed in the rounds like the model runs


def _serve(runs: dict, logits: list, repeats: int) -> None:
    """Answer the parent: ``logits`` once, then ``repeats`` timings of every run per ``round`` line."""
    import numpy as np

    for fn in runs.values():  # compile / warm up
        fn()
        fn()
    answer({"logits": [np.asarray(o, np.float64).tolist() for o in logits]})
    for line in sys.stdin:
        if line.strip() != "round":
            break
        answer({name: [timed(fn) for _ in range(repeats)] for name, fn in runs.items()})


def official_worker(args) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from official_dvt import exit_cells, load_official

    torch.manual_seed(0)
    model = load_official(args.official, args.model)
    np.savez(args.weights, **{k: v.numpy() for k, v in model.state_dict().items()})
    x = torch.from_numpy(_images(args.batch, 224))
    exits = exit_cells(model)
    with torch.inference_mode():
        logits, states = [], [(None, None)]
        for cell in exits:
            out, features, relations = cell(x, features_to_be_reused_list=states[-1][0],
                                            relations_to_be_reused_list=states[-1][1])
            logits.append(out.numpy())
            states.append((features, relations))

        def stage(k):
            f, r = states[k]
            return lambda: exits[k](x, features_to_be_reused_list=f, relations_to_be_reused_list=r)

        a = torch.randn(GEMM, GEMM)
        runs = {"cascade": lambda: model(x), "exit1": stage(0), "exit2": stage(1), "exit3": stage(2),
                "gemm": lambda: torch.mm(a, a)}
        _serve(runs, logits, args.repeats)


def dvt_ms_worker(args) -> None:
    import mindspore as ms
    import numpy as np

    sys.path.insert(0, str(REPO))
    import dvt_ms
    from dvt_ms.inference.engine import EarlyExitEngine
    from dvt_ms.inference.thresholds import find_thresholds, softmax_confidence

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model = dvt_ms.create_model(args.model)
    model.set_train(False)
    weights = np.load(args.weights)
    params = {p.name: p for p in model.get_parameters()}
    if set(params) != set(weights.files):
        differ = sorted(set(params) ^ set(weights.files))
        raise SystemExit(f"parameter names differ from the official model's: {differ[:5]}")
    for name, value in weights.items():
        params[name].set_data(ms.Tensor(value))
    x = ms.Tensor(_images(args.batch, model.img_size))
    logits = [o.asnumpy() for o in model(x)]
    states = [None]
    for k in range(model.num_exits):
        states.append(model.run_stage(k, x, states[-1])[1])

    engine = EarlyExitEngine(model, [1e8] * (model.num_exits - 1))
    shares = np.asarray([float(s) for s in args.shares.split(",")], np.float32)
    confidences = np.stack([softmax_confidence(o)[0] for o in logits])
    engine.set_thresholds(find_thresholds(confidences, shares / shares.sum()))
    counts = engine(x).counts
    answer({"exit_counts": counts.tolist()})

    def stage(k):
        return lambda: model.run_stage(k, x, states[k])[0].asnumpy()

    a = ms.Tensor(np.random.default_rng(0).standard_normal((GEMM, GEMM)).astype(np.float32))
    matmul = ms.jit(ms.ops.matmul)
    runs = {"cascade": lambda: [o.asnumpy() for o in model(x)], "exit1": stage(0), "exit2": stage(1),
            "exit3": stage(2), "early_exit": lambda: engine(x), "gemm": lambda: matmul(a, a).asnumpy()}
    _serve(runs, logits, args.repeats)


# ---- parent ----------------------------------------------------------------------------------------

def start_worker(side: str, args, weights: str) -> Worker:
    cmd = [sys.executable, __file__, "--worker", side, "--model", args.model, "--batch", str(args.batch),
           "--weights", weights, "--shares", args.shares, "--repeats", str(args.repeats)]
    if args.official:
        cmd += ["--official", args.official]
    return Worker(side, cmd, close_timeout=120)


def compare_model(args) -> dict:
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        official = start_worker("official", args, weights)
        reference_logits = official.read()["logits"]  # the weights file is written before this line
        ours = start_worker("dvt_ms", args, weights)
        counts = ours.read()["exit_counts"]
        our_logits = ours.read()["logits"]
        try:
            parity = max(float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())
                         for a, b in zip(our_logits, reference_logits, strict=True))
            if parity > 1e-4:
                raise SystemExit(f"{args.model}: dvt_ms and the official code disagree (max relative logit "
                                 f"difference {parity:.2e}); timings would compare different computations")
            times: dict[str, dict[str, list[float]]] = {"official": {}, "dvt_ms": {}}
            for r in range(args.rounds):
                order = (official, ours) if r % 2 == 0 else (ours, official)
                for worker in order:
                    for name, seconds in worker.round().items():
                        times[worker.side].setdefault(name, []).extend(seconds)
                last = ", ".join(f"{side} {name} " + "/".join(f"{v:.3f}" for v in values[-args.repeats:])
                                 for side, t in times.items() for name, values in t.items()
                                 if name in ("cascade", "exit1"))
                print(f"  {args.model} round {r + 1}/{args.rounds} (s): {last}", file=sys.stderr, flush=True)
        finally:
            official.close()
            ours.close()
    median = {side: {k: statistics.median(v) for k, v in t.items()} for side, t in times.items()}
    sys.path.insert(0, str(REPO))
    from dvt_ms.flops import exit_macs
    from dvt_ms.models.registry import spec_for

    spec = spec_for(args.model)
    gmacs = [exit_macs(spec, k) / 1e9 for k in range(spec.num_exits)]
    gemm = {side: GEMM ** 3 / m["gemm"] / 1e9 for side, m in median.items()}
    return {"model": args.model, "batch": args.batch, "parity": parity, "exit_counts": counts, "median": median,
            "gemm": gemm, "exit_gmacs": gmacs}


def report(result: dict) -> str:
    b, off, ours = result["batch"], result["median"]["official"], result["median"]["dvt_ms"]
    counts = result["exit_counts"]
    shares = " / ".join(f"{c / sum(counts):.0%}" for c in counts)
    rows = [
        ("whole cascade, every exit (img/s)", b / off["cascade"], b / ours["cascade"],
         off["cascade"] / ours["cascade"]),
        ("exit 1 alone (img/s)", b / off["exit1"], b / ours["exit1"], off["exit1"] / ours["exit1"]),
        ("exit 2 given exit 1's state (ms/img)", 1e3 * off["exit2"] / b, 1e3 * ours["exit2"] / b,
         off["exit2"] / ours["exit2"]),
        ("exit 3 given exit 2's state (ms/img)", 1e3 * off["exit3"] / b, 1e3 * ours["exit3"] / b,
         off["exit3"] / ours["exit3"]),
        (f"real early exit ({shares}) vs official every-exit forward (img/s)", b / off["cascade"],
         b / ours["early_exit"], off["cascade"] / ours["early_exit"]),
    ]
    lines = [f"{result['model']}, batch {b}, fp32 (max relative logit difference {result['parity']:.1e})",
             "| what | official PyTorch | dvt_ms | ratio |", "|---|---|---|---|"]
    lines += [f"| {what} | {o:.1f} | {m:.1f} | {ratio:.2f}x |" for what, o, m, ratio in rows]
    gemm, gmacs = result["gemm"], result["exit_gmacs"]
    lines += ["", "| achieved GMAC/s (on this machine) | official PyTorch | dvt_ms |", "|---|---|---|",
              f"| fp32 GEMM {GEMM}^3 | {gemm['official']:.1f} | {gemm['dvt_ms']:.1f} |"]
    for k, name in enumerate(("exit1", "exit2", "exit3")):
        lines.append(f"| exit {k + 1} ({gmacs[k]:.2f} GMACs/img) | {b * gmacs[k] / off[name]:.1f} | "
                     f"{b * gmacs[k] / ours[name]:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", help="folder of a copy of blackfeather-wang/Dynamic-Vision-Transformer")
    parser.add_argument("--models", nargs="+", default=["dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shares", default="0.6,0.25,0.15", help="target shares of images leaving at each exit")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each measurement per side and round")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", choices=("official", "dvt_ms"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "official":
        official_worker(args)
        return 0
    if args.worker == "dvt_ms":
        dvt_ms_worker(args)
        return 0
    if not args.official:
        parser.error("--official DIR is required: the baseline is the official PyTorch DVT "
                     "(a copy of blackfeather-wang/Dynamic-Vision-Transformer)")
    import torch

    print(f"official PyTorch DVT vs dvt_ms, separate processes, alternating rounds, median of {args.rounds}; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} CPUs", flush=True)
    results = []
    for name in args.models:
        args.model = name
        results.append(compare_model(args))
        print("\n" + report(results[-1]) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
