"""Pretraining throughput: SimCLR on a CIFAR-stem ResNet-18, 32 px, batch 256.

Prints images/s in fp32 and in bf16 autocast + channels_last, their ratio, and the share of
step time spent on data + views (batched tensor augmentations). Uses the trainer's own
pieces (method registry, view recipe, optimiser) on synthetic uint8 images of CIFAR shape.

The two paths run interleaved (one fp32 step, one bf16 step, ...) and each is summarised by
its median step time, so a change in the machine's load during the run (this is a shared
virtual machine: the same step varies by +-15% over minutes) hits both paths alike instead
of biasing the ratio.

The bf16 path is set up by the trainer's own ``prepare_for_training`` (channels-last and, on
CPU, the GEMM weight gradient of small-map convs: ``--conv-wgrad native`` measures without it).

    python benchmarks/throughput.py [--steps 8] [--warmup 2] [--backbone resnet18_cifar] [--conv-wgrad native]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.core.device import bf16_supported
from harness.data.dataset import batch_indices
from harness.method.contract import Batch, DataInfo, StepInfo
from harness.models.autotune import machine_summary
from harness.models.kernels import prepare_for_training
from harness.run.plugins import load_plugins
from harness.train.build import build_method
from harness.train.config import resolve
from harness.train.optim import build_optimizer, effective_optim


class Path:
    """One training set-up (precision + memory format) stepped one batch at a time."""

    def __init__(self, backbone: str, precision: str, channels_last: bool, batch: int, steps: int,
                 conv_wgrad: str = "auto"):
        cfg = resolve({"method": "simclr", "backbone": backbone, "optim.batch_size": batch, "method_cfg.blur": False})
        info = DataInfo("bench", 3, 32, 50000, 10)
        torch.manual_seed(0)
        load_plugins()
        self.method = build_method(cfg, info)
        # the trainer's own set-up: memory format, conv kernels (auto: measured on this machine, cached)
        self.plan = prepare_for_training(self.method, True, torch.device("cpu"), precision, "on" if channels_last else "off",
                                         conv_wgrad, trial_model=self.method.backbone, channels=3, sizes=(32,), batch=batch)
        self.method.train()
        self.opt = build_optimizer(effective_optim(type(self.method).optim, cfg.optim), self.method.param_groups())
        self.recipe = self.method.view_recipe(info)
        self.precision, self.channels_last, self.batch, self.steps = precision, channels_last, batch, steps
        self.data_s: list[float] = []
        self.step_s: list[float] = []

    def step(self, x_all: torch.Tensor, s: int, record: bool) -> None:
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(s)
        idx = batch_indices(len(x_all), self.batch, s, 0)
        views = self.recipe(x_all[idx], gen, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
        if self.channels_last:
            views.images = [v.contiguous(memory_format=torch.channels_last) for v in views.images]
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = self.method(Batch(views, idx), StepInfo(s, s / self.steps, self.steps, gen))["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        t2 = time.perf_counter()
        if record:
            self.data_s.append(t1 - t0)
            self.step_s.append(t2 - t0)

    def summary(self) -> dict:
        step = statistics.median(self.step_s)
        return {"img_s": self.batch / step, "step_s": step, "data_share": statistics.median(self.data_s) / step,
                "spread": (min(self.step_s), max(self.step_s))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18_cifar")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8, help="measured steps per path (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", choices=["fp32", "bf16"], help="measure one path only (no ratio)")
    ap.add_argument("--conv-wgrad", choices=["auto", "gemm", "native"], default="auto",
                    help="the bf16 path's conv weight gradients (train.conv_wgrad: auto = measured per shape on this "
                         "machine, gemm = the size rule, native = oneDNN's)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every measured step's time")
    args = ap.parse_args()
    print(machine_summary())
    print(f"SimCLR, {args.backbone}, 32 px, batch {args.batch}")
    paths = {}
    if args.only != "bf16":
        paths["fp32"] = Path(args.backbone, "fp32", False, args.batch, args.steps)
    if args.only != "fp32" and not bf16_supported(torch.device("cpu")):
        print("bf16: not supported on this CPU; measuring fp32 only")
    elif args.only != "fp32":
        paths["bf16 + channels_last"] = Path(args.backbone, "bf16", True, args.batch, args.steps, args.conv_wgrad)
    x_all = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8)
    for s in range(args.warmup + args.steps):
        for p in paths.values():          # interleaved: both paths see the same machine load
            p.step(x_all, s, record=s >= args.warmup)
    res = {name: p.summary() for name, p in paths.items()}
    for name, r in res.items():
        lo, hi = r["spread"]
        print(f"{name:22s}: {r['img_s']:7.1f} img/s  (median {r['step_s']:.2f} s/step, range {lo:.2f}-{hi:.2f}; "
              f"data+views {100 * r['data_share']:.1f}% of a step; conv weight gradient {paths[name].plan.summary()})")
        if args.verbose:
            print(f"{'':22s}  steps (s): {' '.join(f'{t:.2f}' for t in paths[name].step_s)}")
    if len(res) == 2:
        fp32, bf16 = res["fp32"], res["bf16 + channels_last"]
        print(f"speed-up bf16/fp32    : {bf16['img_s'] / fp32['img_s']:.2f}x   (target >= 2.5x)")
        print(f"data+views share (bf16): {100 * bf16['data_share']:.1f}%   (target <= 10%)")


if __name__ == "__main__":
    main()
