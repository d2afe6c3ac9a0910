"""How many epochs the SGD linear probe needs, on REAL frozen features from the feature cache.

For every cached (train, test) feature pair whose row counts match the labels given, prints the
probe's test top-1 and time at each epoch count next to scikit-learn's
``StandardScaler + LogisticRegression(lbfgs)`` on the same features. This is what chose the
default ``eval.linear_epochs``.

    .venv/bin/python benchmarks/linear_probe_epochs.py runs/feature-cache ../shared/data/cifar10.npz
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evals.linear import linear_probe  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", help="a feature-cache folder (runs/feature-cache)")
    ap.add_argument("labels", help="an .npz with y_train and y_test matching the cached features")
    ap.add_argument("--epochs", default="30,15,10")
    ap.add_argument("--max-pairs", type=int, default=8)
    ap.add_argument("--no-sklearn", action="store_true")
    a = ap.parse_args(argv)
    with np.load(a.labels) as z:
        ytr, yte = torch.from_numpy(z["y_train"]).long(), torch.from_numpy(z["y_test"]).long()
    epochs = [int(e) for e in a.epochs.split(",")]
    pairs = []
    for tr in sorted(Path(a.cache).glob("*/*/train-*.npy")):
        te = tr.with_name(tr.name.replace("train-", "test-", 1))
        if te.exists() and np.load(tr, mmap_mode="r").shape[0] == len(ytr) and np.load(te, mmap_mode="r").shape[0] == len(yte):
            pairs.append((tr, te))
    pairs = pairs[: a.max_pairs]
    print(f"{len(pairs)} feature pairs; epochs {epochs}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'features':36s} {'dim':>4s} " + " ".join(f"{'ep' + str(e):>14s}" for e in epochs) + f" {'sklearn':>14s}")
    diffs = {e: [] for e in epochs}
    ratios = {e: [] for e in epochs}
    for tr, te in pairs:
        xtr, xte = torch.from_numpy(np.load(tr)), torch.from_numpy(np.load(te))
        cells = []
        accs = {}
        for e in epochs:
            t0 = time.perf_counter()
            m = linear_probe(xtr, ytr, xte, yte, 10, epochs=e)
            dt = time.perf_counter() - t0
            accs[e] = (m["linear/top1"], dt)
            cells.append(f"{m['linear/top1']:6.2f} {dt:5.1f}s")
        sk = ""
        if not a.no_sklearn:
            from sklearn.linear_model import LogisticRegression
            from sklearn.preprocessing import StandardScaler

            t0 = time.perf_counter()
            sc = StandardScaler().fit(xtr.numpy())
            clf = LogisticRegression(max_iter=1000).fit(sc.transform(xtr.numpy()), ytr.numpy())
            acc = 100.0 * (clf.predict(sc.transform(xte.numpy())) == yte.numpy()).mean()
            dt = time.perf_counter() - t0
            sk = f"{acc:6.2f} {dt:5.1f}s"
            for e in epochs:
                diffs[e].append(accs[e][0] - acc)
                ratios[e].append(dt / accs[e][1])
        print(f"{tr.parent.parent.name[:24] + '/' + tr.name[:11]:36s} {xtr.shape[1]:4d} " + " ".join(f"{c:>14s}" for c in cells) + f" {sk:>14s}")
    if not a.no_sklearn and pairs:
        for e in epochs:
            print(f"epochs {e:3d}: ours - sklearn accuracy: mean {np.mean(diffs[e]):+.2f}, worst {np.min(diffs[e]):+.2f} points; "
                  f"time ratio sklearn/ours: median {np.median(ratios[e]):.2f}x")


if __name__ == "__main__":
    main()
