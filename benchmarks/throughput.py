"""Pretraining throughput: SimCLR on a CIFAR-stem ResNet-18, 32 px, batch 256.

Prints images/s in fp32 and in bf16 autocast + channels_last, their ratio, and the share of
step time spent on data + views (batched tensor augmentations). Uses the trainer's own
pieces (method registry, view recipe, optimiser) on synthetic uint8 images of CIFAR shape.

    python benchmarks/throughput.py [--steps 8] [--warmup 2] [--backbone resnet18_cifar]
"""

from __future__ import annotations

import argparse
import time

import torch

from harness.config import resolve
from harness.data import batch_indices
from harness.method import Batch, DataInfo, StepInfo
from harness.optim import build_optimizer
from harness.trainer import bf16_supported, build_method


def measure(backbone: str, precision: str, channels_last: bool, steps: int, warmup: int, batch: int) -> dict:
    cfg = resolve({"method": "simclr", "backbone": backbone, "optim.batch_size": batch, "method_cfg.blur": False})
    info = DataInfo("bench", 3, 32, 50000, 10)
    torch.manual_seed(0)
    method = build_method(cfg, info)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    method.train()
    opt = build_optimizer("lars", method.param_groups(), 0.3, 1e-6, 0.9)
    recipe = method.view_recipe(info)
    x_all = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    t_data = t_total = 0.0
    for s in range(steps + warmup):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(s)
        idx = batch_indices(len(x_all), batch, s, 0)
        views = recipe(x_all[idx], gen, mean, std)
        if channels_last:
            views.images = [v.contiguous(memory_format=torch.channels_last) for v in views.images]
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = method(Batch(views, idx), StepInfo(s, s / steps, steps, gen))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if s >= warmup:
            t_data += t1 - t0
            t_total += t2 - t0
    return {"img_s": steps * batch / t_total, "data_share": t_data / t_total, "step_s": t_total / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18_cifar")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    print(f"SimCLR, {args.backbone}, 32 px, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    fp32 = measure(args.backbone, "fp32", False, args.steps, args.warmup, args.batch)
    print(f"fp32                  : {fp32['img_s']:7.1f} img/s  ({fp32['step_s']:.2f} s/step, data+views {100 * fp32['data_share']:.1f}% of a step)")
    if not bf16_supported(torch.device("cpu")):
        print("bf16: not supported on this CPU")
        return
    bf16 = measure(args.backbone, "bf16", True, args.steps, args.warmup, args.batch)
    print(f"bf16 + channels_last  : {bf16['img_s']:7.1f} img/s  ({bf16['step_s']:.2f} s/step, data+views {100 * bf16['data_share']:.1f}% of a step)")
    print(f"speed-up bf16/fp32    : {bf16['img_s'] / fp32['img_s']:.2f}x   (target >= 2.5x)")
    print(f"data+views share (bf16): {100 * bf16['data_share']:.1f}%   (target <= 10%)")


if __name__ == "__main__":
    main()
