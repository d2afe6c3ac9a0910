"""Seconds per epoch on a GPU: the ``cifar10_gpu`` suite's settings (lightly's CIFAR-10 benchmark:
ResNet-18 with the CIFAR stem, batch 512, bf16, channels-last) through the real trainer.

Prints the machine (GPU, CUDA, torch; the CPU as well), then per method: the median step time after a
warm-up, seconds per epoch (steps per epoch x median step), images/s, GPU utilisation (sampled by
``nvidia-smi`` every 0.2 s while training; "n/a" without it) and peak GPU memory; then the evaluation's
cost on the same encoder: feature extraction of the 60k images and the kNN search (FAISS on the GPU with
faiss-gpu installed, else torch). Target on an H100/H200-class GPU: <= 2 s per SimCLR epoch.

``--device cpu`` runs the same code on a CPU (a smoke test of this script; tests use it with tiny
settings), ``--compile`` adds ``train.compile=true``.

    python benchmarks/gpu_epoch.py [--methods simclr,byol,moco_v2] [--steps 30] [--warmup 10]
        [--data ../shared/data/cifar10.npz] [--compile] [--device cpu --batch 32 --steps 2 --warmup 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.models.autotune import machine_summary  # noqa: E402


class GPUSampler:
    """GPU utilisation (%) sampled by nvidia-smi in a thread while the block runs."""

    def __init__(self, index: int = 0, every: float = 0.2):
        self.index, self.every, self.samples = index, every, []
        self.smi = shutil.which("nvidia-smi")
        self._stop = threading.Event()

    def _loop(self):
        while not self._stop.is_set():
            out = subprocess.run([self.smi, f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().isdigit():
                self.samples.append(int(out.stdout.strip()))
            self._stop.wait(self.every)

    def __enter__(self):
        if self.smi:
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.smi:
            self._t.join()

    def mean(self) -> str:
        return f"{statistics.mean(self.samples):.0f}%" if self.samples else "n/a"


def suite_overrides(method: str) -> dict:
    """The cifar10_gpu suite's settings for one method (common + per-method), as the suite runs them."""
    import yaml

    suite = yaml.safe_load((ROOT / "harness" / "configs" / "suites" / "cifar10_gpu.yaml").read_text())
    return {**suite["common"], **suite.get("per_method", {}).get(method, {}), "method": method}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="simclr,byol,moco_v2")
    ap.add_argument("--steps", type=int, default=30, help="measured steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=None, help="default: the suite's (512)")
    ap.add_argument("--backbone", default=None, help="default: the suite's (resnet18_cifar); smoke tests use cnn4")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"),
                    help="CIFAR-10 (.npz or a folder with cifar-10-batches-py/), or 'synthetic'")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile of the training step)")
    ap.add_argument("--skip-eval", action="store_true", help="no feature-extraction / kNN timing")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_epoch: no CUDA GPU here (torch.cuda.is_available() is False); --device cpu runs the CPU smoke test")
    from harness.data.sources import load_dataset
    from harness.run.plugins import load_plugins
    from harness.train.budget import steps_per_epoch
    from harness.train.config import resolve
    from harness.train.trainer import Trainer

    load_plugins()
    dev = torch.device(args.device)
    print(machine_summary())
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, torch {torch.__version__}")
    folder = Path(tempfile.mkdtemp(prefix="sslbench-gpu-epoch-"))
    data = {"data.name": "synthetic"} if args.data == "synthetic" else {"data.name": "cifar10", "data.data_dir": args.data}
    for method in args.methods.split(","):
        over = {**suite_overrides(method), **data, "budget.kind": "steps", "budget.value": args.warmup + args.steps,
                "train.device": args.device, "train.progress": False, "train.checkpoint_every_seconds": 1e9,
                "train.compile": args.compile}
        if dev.type == "cpu":
            over.update({"train.precision": "auto", "train.channels_last": "auto"})
        if args.batch:
            over["optim.batch_size"] = args.batch
        if args.backbone:
            over["backbone"] = args.backbone
        cfg = resolve(over)
        ds = load_dataset(cfg.data)
        rates: list[tuple[int, float]] = []
        trainer = Trainer(cfg, ds, folder / method, log_fn=lambda m, s, rates=rates: rates.append((s, m["train/img_per_s"])))
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with GPUSampler(dev.index or 0) as util:
            trainer.fit()
        steps = [cfg.optim.batch_size / r for s, r in rates if s > args.warmup]
        step = statistics.median(steps)
        spe = steps_per_epoch(len(ds.y_train), cfg.optim.batch_size, cfg.train.max_steps_per_epoch)
        mem = f"{torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB" if dev.type == "cuda" else "n/a"
        print(f"{method:8s} batch {cfg.optim.batch_size}: {step * spe:7.2f} s/epoch ({spe} steps x {step * 1e3:.1f} ms, "
              f"{cfg.optim.batch_size / step:,.0f} img/s), GPU utilisation {util.mean()}, peak memory {mem}; kernels "
              f"{trainer.kernels.summary()}, channels-last {trainer.kernels.channels_last}"
              f"{', compiled' if args.compile else ''}", flush=True)
        if not args.skip_eval:
            from evals.features import extract_features
            from evals.knn import knn_eval, resolve_backend

            enc = trainer.method.encoder()
            t0 = time.perf_counter()
            ftr = extract_features(enc, ds.x_train, ds.mean, ds.std, batch_size=1024, device=dev,
                                   precision=trainer.precision, progress=False)
            fte = extract_features(enc, ds.x_test, ds.mean, ds.std, batch_size=1024, device=dev,
                                   precision=trainer.precision, progress=False)
            t1 = time.perf_counter()
            backend = resolve_backend("auto", "flat", dev, fte, ftr, 200)
            m = knn_eval(ftr, ds.y_train, fte, ds.y_test, (20, 200), 0.07, ds.num_classes, backend=backend, device=dev)
            t2 = time.perf_counter()
            print(f"{'':8s} evaluation: features of {len(ds.y_train) + len(ds.y_test):,} images {t1 - t0:.2f} s, "
                  f"kNN ({backend}) {t2 - t1:.2f} s (kNN@20 after {args.warmup + args.steps} steps: "
                  f"{m['knn/top1@20']:.1f})", flush=True)


if __name__ == "__main__":
    main()
