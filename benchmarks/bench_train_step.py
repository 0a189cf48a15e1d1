"""Training-step throughput of DVT (forward, backward, AdamW update) vs the PyTorch reference.

Prints the median img/s of one MindSpore train step (graph mode, float32, the compiled step of
``dvt-train``: summed multi-exit soft-target cross-entropy, AdamW, no EMA) and of the equivalent
PyTorch step (same spec, same weights, ``torch.optim.AdamW`` with the same parameter groups) on the
same machine in one run, and their ratio.

    python benchmarks/bench_train_step.py [--model dvt_t2t_vit_12] [--batch 8] [--repeats 5] [--warmup 2]
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
from dvt_ms.data.augment import one_hot
from dvt_ms.models import DVTCascade
from dvt_ms.models.layers import bind_masks
from dvt_ms.train.loss import NetWithLoss
from dvt_ms.train.loss_scale import LossScaling
from dvt_ms.train.optimizer import AdamW, no_weight_decay, param_groups
from dvt_ms.train.train_step import TrainStep


def main() -> None:
    import torch
    import torch.nn.functional as F

    from dvt_ms.reference.torch_dvt import build_torch_dvt

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dvt_t2t_vit_12")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    spec = dvt_ms.spec_for(args.model)
    torch.manual_seed(0)
    reference = build_torch_dvt(spec).train()
    model = DVTCascade(spec)
    params = {p.name: p for p in model.get_parameters()}
    for key, value in reference.state_dict().items():
        params[key].set_data(ms.Tensor(value.numpy()))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, spec.img_size, spec.img_size)).astype(np.float32)
    y = one_hot(rng.integers(0, spec.num_classes, args.batch), spec.num_classes, 0.1)

    weights, decays = param_groups(model, 0.05)
    step = TrainStep(NetWithLoss(model), AdamW(weights, decays), np.full(1, 1e-4, np.float32),
                     LossScaling(1.0, False), spec.num_exits, masks=bind_masks(model))
    step.set_train(True)
    x_ms, y_ms = ms.Tensor(x), ms.Tensor(y)

    def run_ms():
        return float(step(x_ms, y_ms)[0].asnumpy())

    groups = {"decay": [], "no_decay": []}
    for name, p in reference.named_parameters():
        if p.requires_grad:
            groups["no_decay" if no_weight_decay(name, p) else "decay"].append(p)
    opt = torch.optim.AdamW([{"params": groups["decay"], "weight_decay": 0.05},
                             {"params": groups["no_decay"], "weight_decay": 0.0}], lr=1e-4)
    x_pt, y_pt = torch.from_numpy(x), torch.from_numpy(y)

    def run_pt():
        opt.zero_grad(set_to_none=True)
        loss = sum(F.cross_entropy(logits, y_pt) for logits in reference(x_pt))
        loss.backward()
        opt.step()
        return float(loss.detach())

    print(f"{args.model}: batch {args.batch}, {sum(p.size for p in model.trainable_params()):,} trainable weights, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), mindspore {ms.__version__}")
    first_ms, ms_s = time_calls(run_ms, args.repeats, args.warmup)
    first_pt, pt_s = time_calls(run_pt, args.repeats, args.warmup)
    ms_ips, pt_ips = args.batch / ms_s, args.batch / pt_s
    print(f"  first step (compile): mindspore {first_ms:.1f} s, pytorch {first_pt:.1f} s")
    print(f"  median step: mindspore {ms_s * 1e3:.0f} ms ({ms_ips:.2f} img/s), pytorch {pt_s * 1e3:.0f} ms "
          f"({pt_ips:.2f} img/s); mindspore / pytorch = {ms_ips / pt_ips:.2f}x")
    print(f"  summed loss after the runs: mindspore {run_ms():.4f}, pytorch {run_pt():.4f}")


if __name__ == "__main__":
    main()
