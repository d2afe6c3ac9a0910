"""How many epochs the SGD linear probe needs, on REAL frozen features from feature caches.

For every cached TRAIN feature file whose row count matches the labels given, splits TRAIN into a
stratified, seeded fit part and a hold-out (``--holdout``, default 20%) and prints the probe's
hold-out top-1 and time at each epoch count, next to scikit-learn's
``StandardScaler + LogisticRegression(lbfgs)`` fitted on the same part. The TEST split is never
read: this is what chose the default ``eval.linear_epochs`` (a protocol choice is a selection, so
it is made on TRAIN). A summary line per epoch count gives the mean and worst difference to the
largest epoch count and to scikit-learn.

    .venv/bin/python benchmarks/linear_probe_epochs.py ../shared/data/cifar10.npz runs/feature-cache
    .venv/bin/python benchmarks/linear_probe_epochs.py labels.npz cacheA cacheB --epochs 30,20,15,10
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

from evals.linear import linear_probe, stratified_split  # noqa: E402
from harness.models.autotune import machine_summary  # noqa: E402


def feature_files(caches: list[str], rows: int) -> list[Path]:
    """Cached TRAIN feature files (``<cache>/<weights>/<data>/train-*.npy``) with ``rows`` rows, one per content."""
    seen, out = set(), []
    for cache in caches:
        for f in sorted(Path(cache).glob("*/*/train-*.npy")):
            arr = np.load(f, mmap_mode="r")
            key = (f.parent.parent.name, f.parent.name, f.name)   # the same weights cached in two stores: once
            if arr.ndim == 2 and arr.shape[0] == rows and key not in seen:
                seen.add(key)
                out.append(f)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels", help="an .npz whose y_train matches the cached TRAIN features")
    ap.add_argument("caches", nargs="+", help="feature-cache folders (runs/feature-cache)")
    ap.add_argument("--epochs", default="30,20,15,10", help="epoch counts; the first is the reference")
    ap.add_argument("--holdout", type=float, default=0.2, help="fraction of TRAIN held out for scoring")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the TRAIN split")
    ap.add_argument("--max-files", type=int, default=24)
    ap.add_argument("--no-sklearn", action="store_true")
    a = ap.parse_args(argv)
    with np.load(a.labels) as z:
        y = torch.from_numpy(z["y_train"]).long()
    epochs = [int(e) for e in a.epochs.split(",")]
    files = feature_files(a.caches, len(y))[: a.max_files]
    fit, held = stratified_split(y, a.holdout, a.seed)
    print(machine_summary())
    print(f"{len(files)} TRAIN feature files; probe fitted on {len(fit)} rows, scored on a {len(held)}-row TRAIN hold-out "
          f"(the test split is not read); epochs {epochs}")
    print(f"{'features':40s} {'dim':>4s} " + " ".join(f"{'ep' + str(e):>13s}" for e in epochs)
          + ("" if a.no_sklearn else f" {'sklearn':>13s}"))
    acc = {e: [] for e in epochs}
    secs = {e: [] for e in epochs}
    sk_acc, sk_secs = [], []
    for f in files:
        x = torch.from_numpy(np.load(f)).float()
        cells = []
        for e in epochs:
            t0 = time.perf_counter()
            m = linear_probe(x[fit], y[fit], x[held], y[held], int(y.max()) + 1, epochs=e)
            secs[e].append(time.perf_counter() - t0)
            acc[e].append(m["linear/top1"])
            cells.append(f"{m['linear/top1']:6.2f} {secs[e][-1]:5.2f}s")
        if not a.no_sklearn:
            from sklearn.linear_model import LogisticRegression
            from sklearn.preprocessing import StandardScaler

            t0 = time.perf_counter()
            sc = StandardScaler().fit(x[fit].numpy())
            clf = LogisticRegression(max_iter=1000).fit(sc.transform(x[fit].numpy()), y[fit].numpy())
            sk_acc.append(100.0 * float((clf.predict(sc.transform(x[held].numpy())) == y[held].numpy()).mean()))
            sk_secs.append(time.perf_counter() - t0)
            cells.append(f"{sk_acc[-1]:6.2f} {sk_secs[-1]:5.2f}s")
        name = f"{f.parent.parent.name[:20]}/{f.name[:-4]}"
        print(f"{name:40s} {x.shape[1]:4d} " + " ".join(f"{c:>13s}" for c in cells), flush=True)
    if not files:
        print("no feature files with as many rows as the labels: run an evaluation first (it fills runs/feature-cache)")
        return
    ref = np.array(acc[epochs[0]])
    for e in epochs:
        d = np.array(acc[e]) - ref
        line = (f"epochs {e:3d}: - ep{epochs[0]} mean {d.mean():+.2f} worst {d.min():+.2f} points; "
                f"median {np.median(secs[e]):.2f} s")
        if sk_acc:
            ds = np.array(acc[e]) - np.array(sk_acc)
            line += (f"; - sklearn mean {ds.mean():+.2f} worst {ds.min():+.2f} points, "
                     f"time sklearn/ours median {np.median(np.array(sk_secs) / np.array(secs[e])):.1f}x")
        print(line)


if __name__ == "__main__":
    main()
