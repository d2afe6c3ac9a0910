"""One conv layer's forward + backward under CPU bf16 autocast, channels-last: the native oneDNN
weight gradient vs the im2col GEMM of harness/conv_wgrad.py, for ResNet-18 (CIFAR stem, 32 px)
and cnn4 layer shapes. Prints median times and the speed-up; '*' marks the layers the trainer's
rule (C_in * C_out >= 1024 * Ho * Wo) sends to the GEMM.

    python benchmarks/conv_wgrad.py [--batch 256] [--reps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

from harness.models.conv_wgrad import GemmWgradConv2d, use_gemm_wgrad

# (C_in, C_out, input size, stride)
SHAPES = [(64, 64, 32, 1), (64, 128, 32, 2), (128, 128, 16, 1), (128, 256, 16, 2), (256, 256, 8, 1),
          (256, 512, 8, 2), (512, 512, 4, 1),                                  # resnet18_cifar
          (32, 64, 16, 1), (64, 128, 8, 1), (128, 256, 4, 1)]                   # cnn4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=10, help="measured repetitions per path (after 2 warm-up)")
    args = ap.parse_args()
    print(f"conv 3x3 forward + backward, bf16 autocast, channels-last, batch {args.batch}, {torch.get_num_threads()} threads")
    for cin, cout, size, stride in SHAPES:
        native = nn.Conv2d(cin, cout, 3, stride, 1, bias=False).to(memory_format=torch.channels_last)
        gemm = nn.Conv2d(cin, cout, 3, stride, 1, bias=False).to(memory_format=torch.channels_last)
        use_gemm_wgrad(gemm)
        gemm.weight_per_position = 0                 # force the GEMM path to time it
        x = torch.randn(args.batch, cin, size, size).contiguous(memory_format=torch.channels_last).requires_grad_(True)

        def run(m: nn.Module, x: torch.Tensor = x) -> float:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = m(x)
            y.backward(torch.ones_like(y))
            return time.perf_counter() - t0

        tn, tg = [], []
        for r in range(args.reps + 2):               # interleaved, so load changes hit both alike
            a, b = run(native), run(gemm)
            if r >= 2:
                tn.append(a)
                tg.append(b)
        out = (size + 2 - 3) // stride + 1
        chosen = "*" if cin * cout >= GemmWgradConv2d.weight_per_position * out * out else " "
        print(f"{chosen} {cin:3d} -> {cout:3d}, {size:2d} px, stride {stride} (out {out}x{out}): native "
              f"{1000 * statistics.median(tn):6.1f} ms, GEMM weight grad {1000 * statistics.median(tg):6.1f} ms, "
              f"speed-up {statistics.median(a / b for a, b in zip(tn, tg)):.2f}x")


if __name__ == "__main__":
    main()
