"""sslbench's whole training loop against a tuned peer (lightly), side by side in one run.

SimCLR on a ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool), batch 256,
32 px CIFAR-10 images, projection head 512-512-128, NT-Xent, SGD; three paths, each a full
training loop (data + augmentations + forward + backward + optimiser step):

* ``peer fp32``: lightly's own pieces as its CIFAR-10 benchmark uses them (``SimCLRTransform`` in a
  ``DataLoader``, ``SimCLRProjectionHead``, ``NTXentLoss``) on torchvision's ResNet-18 with the CIFAR stem;
* ``peer bf16+cl``: the same with the four lines a lightly user can add: the model and the views
  channels-last, and the forward under bf16 autocast;
* ``sslbench``: ``harness.train.trainer.Trainer`` itself (batched views on tensors, the kernels its
  ``auto`` choices measured on this machine, bf16 where the CPU has it), on the same images;
* ``ceiling``: the same model, kernels and optimiser stepped on one fixed batch of views -- forward,
  backward and the optimiser step only: the loop cannot beat it, so ``sslbench / ceiling`` says how much
  of a step the loop's own work (data, augmentation, schedule, logging) costs.

The paths run one after another, ``--rounds`` times (default 2: the comparison printed twice), each
summarised by its median step time after ``--warmup`` steps; the ratio is taken within a round, so a
change of the machine's load between rounds does not bias it. The first lines say the machine
(CPU model, cores, torch and oneDNN versions, threads) and the kernels sslbench chose.

lightly is an optional benchmark dependency (``pip install 'sslbench[bench]'``), never a runtime one;
without it only the sslbench path runs.

    python benchmarks/peer_simclr.py [--steps 6] [--warmup 2] [--rounds 2] [--workers 1] [--data ../shared/data/cifar10.npz]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.models.autotune import machine_summary  # noqa: E402


def cifar_arrays(path: str | None, n: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) images: CIFAR-10's first ``n`` training images, or seeded noise without it."""
    if path and Path(path).exists():
        d = np.load(path)
        x = d["x_train"][:n]
        if x.shape[1] == 3:
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x), d["y_train"][:n].astype(np.int64)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


class PeerLoop:
    """lightly's SimCLR on torchvision's CIFAR-stem ResNet-18, fp32 or with bf16 autocast + channels-last."""

    def __init__(self, x: np.ndarray, batch: int, fast: bool, workers: int):
        import torchvision
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
        from PIL import Image

        transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)   # lightly's CIFAR-10 settings

        class Images(torch.utils.data.Dataset):
            def __len__(self):
                return len(x)

            def __getitem__(self, i):
                return transform(Image.fromarray(x[i]))

        torch.manual_seed(0)
        resnet = torchvision.models.resnet18()
        resnet.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        resnet.maxpool = nn.Identity()
        resnet.fc = nn.Identity()
        self.model = nn.Sequential(resnet, SimCLRProjectionHead(512, 512, 128))
        self.criterion = NTXentLoss(temperature=0.5)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.06 * batch / 256, momentum=0.9, weight_decay=5e-4)
        self.loader = torch.utils.data.DataLoader(Images(), batch_size=batch, shuffle=True, drop_last=True,
                                                  num_workers=workers, persistent_workers=workers > 0)
        self.fast, self.batch = fast, batch
        if fast:
            self.model = self.model.to(memory_format=torch.channels_last)     # line 1
        self._it = iter(self.loader)

    def step(self) -> None:
        try:
            x0, x1 = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            x0, x1 = next(self._it)
        if self.fast:
            x0 = x0.contiguous(memory_format=torch.channels_last)               # line 2
            x1 = x1.contiguous(memory_format=torch.channels_last)               # line 3
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.fast):   # line 4
            loss = self.criterion(self.model(x0), self.model(x1))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()

    def run(self, steps: int, warmup: int) -> list[float]:
        self.model.train()
        times = []
        for s in range(warmup + steps):
            t0 = time.perf_counter()
            self.step()
            if s >= warmup:
                times.append(time.perf_counter() - t0)
        return times


class OurLoop:
    """The sslbench trainer (``Trainer.fit``) on the same images, SimCLR with the peer's head, loss and optimiser."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int, folder: Path, compile_step: bool = False):
        from harness.data.dataset import ImageDataset
        from harness.run.plugins import load_plugins

        load_plugins()
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        self.ds = ImageDataset("cifar10", xt, torch.from_numpy(y), xt[:256], torch.from_numpy(y[:256]), 10)
        self.batch, self.folder, self.round = batch, folder, 0
        self.over = {"method": "simclr", "backbone": "resnet18_cifar", "optim.batch_size": batch, "optim.name": "sgd",
                     "optim.lr": 0.06 * batch / 256, "optim.weight_decay": 5e-4, "method_cfg.proj_hidden": 512,
                     "method_cfg.proj_dim": 128, "method_cfg.temperature": 0.5, "method_cfg.blur": False,
                     "method_cfg.jitter_strength": 0.5, "budget.kind": "steps", "train.progress": False,
                     "train.checkpoint_every_seconds": 1e9, "train.compile": compile_step}
        self.plan = None

    def run(self, steps: int, warmup: int) -> list[float]:
        from harness.train.config import resolve
        from harness.train.trainer import Trainer

        self.round += 1
        cfg = resolve({**self.over, "budget.value": warmup + steps})
        rates: list[tuple[int, float]] = []
        trainer = Trainer(cfg, self.ds, self.folder / f"round{self.round}",
                          log_fn=lambda m, step: rates.append((step, m["train/img_per_s"])))
        self.plan = trainer.kernels
        trainer.fit()
        # every step is logged (fewer than 200 steps): img/s of each step -> its seconds
        return [self.batch / r for s, r in rates if s > warmup]


class CeilingLoop(OurLoop):
    """The measured ceiling: the trainer's own model, kernels and optimiser stepped on one fixed batch of
    views (no data, no augmentation, no schedule, no logging): forward + backward + optimiser step only."""

    def run(self, steps: int, warmup: int) -> list[float]:
        from harness.data.dataset import batch_indices
        from harness.method.contract import Batch, StepInfo
        from harness.train.config import resolve
        from harness.train.trainer import Trainer

        self.round += 1
        t = Trainer(resolve({**self.over, "budget.value": 1}), self.ds, self.folder / f"ceiling{self.round}")
        self.plan = t.kernels
        gen = torch.Generator().manual_seed(0)
        idx = batch_indices(len(self.ds.y_train), self.batch, 0, 0)
        views = t.recipe(self.ds.x_train[idx], gen, self.ds.mean, self.ds.std)
        if t.channels_last:
            views.images = [v.contiguous(memory_format=torch.channels_last) for v in views.images]
        batch, info = Batch(views, idx), StepInfo(0, 0.5, 1, gen)
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.precision == "bf16")
        t.method.train()
        times = []
        for s in range(warmup + steps):
            t0 = time.perf_counter()
            with amp:
                loss = t.model(batch, info)["loss"]
            t.method.zero_grad(set_to_none=True)
            loss.backward()
            t.optimizers[0].step()
            if s >= warmup:
                times.append(time.perf_counter() - t0)
        return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="measured steps per path and round (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1, help="the peer's DataLoader workers (2 cores: 1)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"),
                    help="CIFAR-10 .npz (x_train, y_train); seeded noise images without it")
    ap.add_argument("--only", choices=["peer", "sslbench"], help="run one side only")
    ap.add_argument("--compile", action="store_true", help="sslbench with train.compile=true (its first warm-up "
                    "step compiles; the ceiling stays eager)")
    args = ap.parse_args()
    print(machine_summary())
    x, y = cifar_arrays(args.data)
    print(f"SimCLR, ResNet-18 CIFAR stem, 32 px, batch {args.batch}, head 512-512-128, SGD; "
          f"{'CIFAR-10' if Path(args.data).exists() else 'noise images'}; median step time over {args.steps} steps "
          f"after {args.warmup}")
    paths = {}
    if args.only != "sslbench":
        try:
            paths["peer fp32"] = PeerLoop(x, args.batch, False, args.workers)
            paths["peer bf16+cl"] = PeerLoop(x, args.batch, True, args.workers)
        except ImportError as e:
            print(f"lightly is not installed ({e}); pip install 'sslbench[bench]' to measure the peer")
    ours = (OurLoop(x, y, args.batch, Path(tempfile.mkdtemp(prefix="sslbench-peer-bench-")), args.compile)
            if args.only != "peer" else None)
    if ours:
        paths["sslbench"] = ours
        paths["ceiling"] = CeilingLoop(x, y, args.batch, ours.folder)
    for r in range(1, args.rounds + 1):
        res = {}
        for name, p in paths.items():
            t = p.run(args.steps, args.warmup)
            res[name] = args.batch / statistics.median(t)
            print(f"round {r}  {name:13s} {res[name]:7.1f} img/s  (step {statistics.median(t):.2f} s, "
                  f"range {min(t):.2f}-{max(t):.2f})", flush=True)
            if name == "sslbench" and r == 1:
                plan = ours.plan
                print(f"         sslbench kernels: channels-last {plan.channels_last}, conv weight gradient "
                      f"{plan.summary()} ({plan.source})")
        if "sslbench" in res and "peer bf16+cl" in res:
            print(f"round {r}  sslbench / peer bf16+cl = {res['sslbench'] / res['peer bf16+cl']:.2f}x; "
                  f"sslbench / peer fp32 = {res['sslbench'] / res['peer fp32']:.2f}x", flush=True)
        if "sslbench" in res:
            print(f"round {r}  sslbench loop / model-only ceiling = {res['sslbench'] / res['ceiling']:.2f}", flush=True)


if __name__ == "__main__":
    main()
