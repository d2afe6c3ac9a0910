"""Why an Atari encoder scores what it scores on the RAM-state probes: dead units, effective rank, and
the probes on the features after and before the encoder's last ReLU.

For a random-init encoder (``--random BACKBONE``, torch seeded with ``--seed``) and for every checkpoint
given, on the ``atari`` dataset of ``--game`` (frames made by the harness's own collector, cached):

* **dead**: how many of the encoder's output features are zero on every TRAIN frame stack;
* **effective rank**: exp of the entropy of the normalised squared singular values of the centred
  TRAIN features (Roy & Vetterli, 2007);
* **state F1**: the ``state_probe`` protocol (mean weighted F1 over the probed variables, the same code
  as ``eval.protocols=[state_probe]``) on the features, and on the last layer's pre-activations.

Nothing here reads a TEST choice: the probe selects on a TRAIN hold-out, as the protocol does.

    .venv/bin/python benchmarks/state_probe_diagnostics.py --random dqn_der --collect-seed 7 \\
        runs/curl_dev/curl-dqn_der-atari-pong-1000steps-s0-*/checkpoint.pt
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from evals.features import extract_features  # noqa: E402
from evals.state_probe import state_probe  # noqa: E402
from harness.data.atari import load_atari  # noqa: E402
from harness.models.autotune import machine_summary  # noqa: E402
from harness.models.backbones import build_backbone  # noqa: E402
from harness.run.plugins import load_plugins  # noqa: E402
from harness.train.build import load_trained_method  # noqa: E402


def effective_rank(f: torch.Tensor) -> float:
    s = torch.linalg.svdvals((f - f.mean(0)).double())
    p = s ** 2 / (s ** 2).sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def pre_activation(encoder: nn.Module) -> nn.Module:
    """The encoder without its last ReLU (an AtariConv torso: conv-ReLU layers, flattened)."""
    layers = list(encoder.features)
    if not isinstance(layers[-1], nn.ReLU):
        raise SystemExit(f"sslbench: error: {type(encoder).__name__} does not end in a ReLU; pass an Atari torso")
    return nn.Sequential(*layers[:-1], nn.Flatten(1))


def report(name: str, encoder: nn.Module, ds) -> None:
    for kind, module in (("features", encoder), ("pre-ReLU", pre_activation(encoder))):
        tr = extract_features(module, ds.x_train, ds.mean, ds.std, progress=False)
        te = extract_features(module, ds.x_test, ds.mean, ds.std, progress=False)
        res = state_probe(tr, ds.state_train, te, ds.state_test)
        dead = int((tr.abs().amax(0) == 0).sum())
        print(f"{name:56s} {kind:9s} dims {tr.shape[1]:5d}  dead {dead:5d}  eff.rank {effective_rank(tr):6.1f}  "
              f"state F1 {res.get('state/f1', float('nan')):.3f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", help="trainer checkpoints of Atari-frame runs (e.g. curl)")
    ap.add_argument("--random", metavar="BACKBONE", help="also a random-init encoder of this backbone (dqn_der)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed of the random-init encoder")
    ap.add_argument("--game", default="pong")
    ap.add_argument("--collect-seed", type=int, default=0, help="data.collect_seed of the frames (7: development)")
    ap.add_argument("--train-frames", type=int, default=None, help="data.train_frames (default 10000)")
    ap.add_argument("--test-frames", type=int, default=None, help="data.test_frames (default 2000)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    if not args.checkpoints and not args.random:
        ap.error("give checkpoints and/or --random BACKBONE")
    load_plugins()
    print(machine_summary())
    ds = load_atari(args.game, args.train_frames, args.test_frames, args.collect_seed, args.data_dir)
    if args.random:
        torch.manual_seed(args.seed)
        report(f"random init {args.random} (seed {args.seed})", build_backbone(args.random, ds.channels, ds.image_size), ds)
    for path in args.checkpoints:
        method, cfg, _ = load_trained_method(path)
        report(os.path.basename(os.path.dirname(path)), method.backbone, ds)


if __name__ == "__main__":
    main()
