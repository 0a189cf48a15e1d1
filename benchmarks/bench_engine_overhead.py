"""What the early-exit engine adds on top of the exit it runs: ``EarlyExitEngine(images)`` vs the bare stage.

For an image that leaves at exit 1 (thresholds 0: every image leaves there), the engine's call (numpy in,
per-image results out) is timed against exit 1's compiled stage called alone on a ready tensor with its
logits brought to the host, the least any caller pays. Both use the same compiled graph, in one process,
alternating call by call; medians over the rounds. Sources: the checkpoint path (a cascade's stages, with
the fused CPU kernels) and, with ``--exported``, the MindIR graphs of ``dvt-export`` run by MindSpore and
its ONNX graphs run by ONNX Runtime (random weights, exported into a temporary folder). Each row also
prints the stage's achieved GMAC/s next to the machine's fp32 GEMM rate measured in the same rounds.

    python benchmarks/bench_engine_overhead.py --model dvt_t2t_vit_12 --batches 1 16 --exported
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEMM = 1024  # the machine-rate probe: a GEMM^3 fp32 matrix product


def _seconds(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dvt_t2t_vit_12")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=0, help="calls per round and side (default: ~0.3 s of work)")
    parser.add_argument("--exported", action="store_true", help="also time the dvt-export MindIR and ONNX stages")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    import dvt_ms
    from dvt_ms.flops import stage_macs
    from dvt_ms.inference.engine import EarlyExitEngine
    from dvt_ms.models.exit import ExitStage

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    model = dvt_ms.create_model(args.model)
    model.set_train(False)
    spec = model.spec
    macs = stage_macs(spec)[0]  # exit 1's multiply-accumulates per image
    sources = {"checkpoint": model}
    if args.exported:
        from dvt_ms.data.transforms import EvalTransform
        from dvt_ms.inference.operating_point import OperatingPoint
        from dvt_ms.serve.export import export_model
        from dvt_ms.serve.graphs import ExportedStages
        from dvt_ms.serve.manifest import read_manifest
        from dvt_ms.serve.onnx_runtime import OnnxStages

        folder = Path(tempfile.mkdtemp(prefix="dvt_bench_export_")) / "export"
        point = OperatingPoint(np.zeros(spec.num_exits), "bench")
        export_model(model, str(folder), model_name=args.model, model_args={}, point=point,
                     transform=EvalTransform(spec.img_size, 0.875), formats=("mindir", "onnx"))
        manifest = read_manifest(str(folder))
        sources["mindir"] = ExportedStages(manifest)
        sources["onnxruntime"] = OnnxStages(manifest)

    class _MatMul(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    probe, square = _MatMul(), ms.Tensor(np.random.default_rng(0).standard_normal((GEMM, GEMM)).astype(np.float32))
    probe(square, square).asnumpy()
    rng = np.random.default_rng(0)
    rows = []
    for name, source in sources.items():
        engine = EarlyExitEngine(source, [0.0] * (spec.num_exits - 1))  # every image leaves at exit 1
        stage = engine._stages[0]
        for batch in args.batches:
            images = rng.standard_normal((batch, spec.in_chans, spec.img_size, spec.img_size)).astype(np.float32)
            tensor = ms.Tensor(images)

            def bare(stage=stage, tensor=tensor):
                ExitStage.unpack(stage(tensor, None, None))[0].asnumpy()

            def whole(engine=engine, images=images):
                engine(images)

            for fn in (bare, whole, bare, whole):  # compile and warm up both
                fn()
            calls = args.calls or max(1, round(0.3 / _seconds(bare, 3)))
            times = {"bare": [], "engine": [], "gemm": []}
            for _ in range(args.rounds):
                times["bare"].append(_seconds(bare, calls))
                times["engine"].append(_seconds(whole, calls))
                times["gemm"].append(_seconds(lambda: probe(square, square).asnumpy(), 1))
            bare_s, engine_s = statistics.median(times["bare"]), statistics.median(times["engine"])
            gemm = GEMM ** 3 / statistics.median(times["gemm"]) / 1e9
            overhead = engine_s / bare_s - 1
            rows.append((name, batch, bare_s, engine_s, overhead, macs * batch / bare_s / 1e9, gemm))
            print(f"{name:<10} batch {batch:>3}: bare stage {1e3 * bare_s:7.2f} ms, engine {1e3 * engine_s:7.2f} ms, "
                  f"overhead {100 * overhead:+5.1f} % ({macs * batch / bare_s / 1e9:.1f} GMAC/s achieved, "
                  f"GEMM {gemm:.1f} GMAC/s); {args.rounds} rounds x {calls} calls", flush=True)
    print("\n| source | batch | bare exit 1 (ms) | engine (ms) | overhead | exit 1 GMAC/s | GEMM GMAC/s |")
    print("|---|---|---|---|---|---|---|")
    for name, batch, bare_s, engine_s, overhead, achieved, gemm in rows:
        print(f"| {name} | {batch} | {1e3 * bare_s:.2f} | {1e3 * engine_s:.2f} | {100 * overhead:+.1f} % | "
              f"{achieved:.1f} | {gemm:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
