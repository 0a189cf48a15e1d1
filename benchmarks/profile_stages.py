"""Where each exit spends its time: the top op types per stage, dvt_ms (MindSpore's profiler) vs the official
PyTorch DVT (torch.profiler), batch ``--batch``, fp32, inference.

Exit 1 runs on the images; exits 2 and 3 get the upstream exit's state, as in early exit. Each side
runs in its own process (this script calls itself with ``--side``). Times are per forward of the stage
(milliseconds, summed over all calls of an op type, averaged over ``--steps`` profiled forwards after
two warm-up forwards). MindSpore's CPU profiler times host kernels; torch's counts self CPU time per
aten op. The two name ops differently (``MatMul`` vs ``aten::addmm``): read them side by side.

    python benchmarks/profile_stages.py --official DIR [--model dvt_t2t_vit_12] [--batch 16] [--top 8]
    python benchmarks/profile_stages.py --dvt-ms-root OTHER_CHECKOUT --side dvt_ms   # profile another version
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT = "@@profile "


def images(batch: int):
    import numpy as np

    return np.random.RandomState(0).randn(batch, 3, 224, 224).astype(np.float32)


def profile_dvt_ms(args) -> list[dict[str, float]]:
    sys.path.insert(0, str(Path(args.dvt_ms_root).resolve()))
    import mindspore as ms

    import dvt_ms

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model = dvt_ms.create_model(args.model)
    model.set_train(False)
    x = ms.Tensor(images(args.batch))
    states = [None]
    for k in range(model.num_exits):
        states.append(model.run_stage(k, x, states[k])[1])
    tables = []
    for k in range(model.num_exits):
        def run(k=k):
            return model.run_stage(k, x, states[k])[0].asnumpy()

        run()
        run()
        with tempfile.TemporaryDirectory() as out:
            profiler = ms.Profiler(output_path=out)
            for _ in range(args.steps):
                run()
            profiler.analyse()
            path = glob.glob(os.path.join(out, "*", "FRAMEWORK", "cpu_op_type_info_*.csv"))[0]
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        tables.append({r["op_type"]: float(r["total_compute_time"]) / args.steps for r in rows})
    return tables


def profile_official(args) -> list[dict[str, float]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(HERE))
    from official_dvt import exit_cells, load_official

    torch.manual_seed(0)
    model = load_official(args.official, args.model)
    exits = exit_cells(model)
    x = torch.from_numpy(images(args.batch))
    tables = []
    with torch.inference_mode():
        states = [(None, None)]
        for cell in exits:
            _, features, relations = cell(x, features_to_be_reused_list=states[-1][0],
                                          relations_to_be_reused_list=states[-1][1])
            states.append((features, relations))
        for k, cell in enumerate(exits):
            def run(k=k, cell=cell):
                return cell(x, features_to_be_reused_list=states[k][0], relations_to_be_reused_list=states[k][1])

            run()
            run()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.steps):
                    run()
            tables.append({e.key: e.self_cpu_time_total / 1e3 / args.steps for e in prof.key_averages()})
    return tables


def side_main(args) -> None:
    tables = profile_dvt_ms(args) if args.side == "dvt_ms" else profile_official(args)
    print(RESULT + json.dumps(tables), flush=True)


def run_side(side: str, args) -> list[dict[str, float]]:
    cmd = [sys.executable, __file__, "--side", side, "--model", args.model, "--batch", str(args.batch),
           "--steps", str(args.steps), "--dvt-ms-root", args.dvt_ms_root]
    if args.official:
        cmd += ["--official", args.official]
    env = dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    raise SystemExit(f"the {side} profile failed:\n{out.stderr[-3000:]}")


def table(tables: dict[str, list[dict[str, float]]], top: int) -> str:
    lines = []
    for k in range(max(len(t) for t in tables.values())):
        lines.append(f"\nexit {k + 1} (ms per forward of batch)")
        columns = []
        for side, per_stage in tables.items():
            ops = sorted(per_stage[k].items(), key=lambda kv: -kv[1])
            total = sum(per_stage[k].values())
            columns.append((side, total, ops[:top]))
        lines.append("| " + " | ".join(f"{side} op | ms" for side, _, _ in columns) + " |")
        lines.append("|" + "---|---|" * len(columns))
        lines.append("| " + " | ".join(f"**total** | **{total:.1f}**" for _, total, _ in columns) + " |")
        for i in range(top):
            cells = []
            for _, _, ops in columns:
                cells.append(f"{ops[i][0]} | {ops[i][1]:.1f}" if i < len(ops) else " | ")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", help="folder of a copy of blackfeather-wang/Dynamic-Vision-Transformer")
    parser.add_argument("--model", default="dvt_t2t_vit_12")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--dvt-ms-root", default=str(HERE.parent), help="checkout of dvt_ms to profile")
    parser.add_argument("--side", choices=("dvt_ms", "official", "both"), default="both")
    args = parser.parse_args()
    if args.side in ("dvt_ms", "official") and os.environ.get("DVT_PROFILE_CHILD"):
        side_main(args)
        return 0
    sides = ("dvt_ms", "official") if args.side == "both" else (args.side,)
    if "official" in sides and not args.official:
        parser.error("--official DIR is required to profile the official PyTorch DVT")
    os.environ["DVT_PROFILE_CHILD"] = "1"
    tables = {side: run_side(side, args) for side in sides}
    print(f"{args.model}, batch {args.batch}, fp32, top {args.top} op types per exit")
    print(table(tables, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
