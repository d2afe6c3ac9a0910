"""ViT training steps with each attention kernel: PyTorch's fused flash kernel vs the math path.

Prints the machine, the attention trial of ``harness.models.autotune`` (forward + backward at the backbone's
attention shape, fp32 and bf16), then for each method the whole trainer's images/s over a few steps with
``train.attention=flash`` and ``train.attention=math``, interleaved for ``--rounds`` rounds (the fit's wall
time, start-up included: both arms pay it alike). Synthetic CIFAR-shaped images; the small preset.

    python benchmarks/attention_step.py [--methods mae,ibot] [--steps 5] [--rounds 2] [--backbone vit_mini_p4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness.data.sources import synthetic  # noqa: E402
from harness.models.autotune import attention_shape, attention_trial, machine_summary  # noqa: E402
from harness.models.backbones import build_backbone  # noqa: E402
from harness.run.plugins import load_plugins  # noqa: E402
from harness.train.config import resolve  # noqa: E402
from harness.train.trainer import Trainer  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="mae,ibot", help="comma-separated ViT methods")
    ap.add_argument("--backbone", default="vit_mini_p4")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    args = ap.parse_args(argv)
    load_plugins()
    print(machine_summary())
    shape = attention_shape(build_backbone(args.backbone, 3, 32), 32, min(args.batch, 256))
    if shape is None:
        raise SystemExit(f"sslbench: error: {args.backbone} is not a ViT; pass a ViT backbone such as vit_mini_p4")
    for bf16 in (False, True):
        t = attention_trial(shape, bf16)
        print(f"attention {'x'.join(map(str, shape))} {'bf16' if bf16 else 'fp32'}: flash {t['flash_ms']} ms, "
              f"math {t['math_ms']} ms -> {t['choice']}")
    ds = synthetic(n_train=max(4 * args.batch, 1024), n_test=64, image_size=32, channels=3, num_classes=10)
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for method in args.methods.split(","):
            for kernel in ("flash", "math"):
                cfg = resolve({"method": method, "preset": "small", "backbone": args.backbone, "data.name": "synthetic",
                               "budget.kind": "steps", "budget.value": args.steps, "optim.batch_size": args.batch,
                               "train.progress": False, "train.precision": args.precision, "train.attention": kernel})
                with tempfile.TemporaryDirectory() as d:
                    t0 = time.perf_counter()
                    Trainer(cfg, ds, d).fit()
                    rates.setdefault((method, kernel), []).append(args.steps * args.batch / (time.perf_counter() - t0))
    for method in args.methods.split(","):
        f, m = rates[(method, "flash")], rates[(method, "math")]
        print(f"{method:8s} flash {' / '.join(f'{r:.0f}' for r in f)} img/s   math {' / '.join(f'{r:.0f}' for r in m)} "
              f"img/s   math/flash {sum(m) / sum(f):.2f}x")


if __name__ == "__main__":
    main()
