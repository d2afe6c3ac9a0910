"""Regression comparisons between two run sets (``sslbench compare A B``).

A and B are each one of: an exported per-run CSV (``results/<experiment>/runs.csv``, written by
``sslbench leaderboard``), ``commit:SHA`` (runs tagged with that git commit, prefix allowed),
or ``experiment:NAME`` (a suite's runs). Runs are paired by (method, dataset, backbone,
budget, seed). For each (method, dataset, backbone, budget) the paired deltas B - A get a
mean and a 95% Student-t interval, and a verdict:

* regression: mean delta < -tolerance and the interval lies below zero (beyond noise);
* improvement: mean delta > +tolerance and the interval lies above zero;
* noise: anything else. With a single pair there is no interval: the tolerance alone decides,
  and the verdict says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core.errors import SSLBenchError
from harness.report.leaderboard import budget_text, ci95
from harness.tracking.query import fetch_runs

KEY = ["method", "dataset", "backbone", "budget", "seed"]


def runs_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """MLflow runs (``tracking.fetch_runs``) -> one row per run: KEY columns + ``metrics.*`` + commit."""
    if runs.empty:
        return pd.DataFrame(columns=KEY)
    out = pd.DataFrame({
        "method": runs.get("params.method"), "dataset": runs.get("params.data.name"),
        "backbone": runs.get("params.backbone"),
        "budget": budget_text(runs),
        "seed": runs.get("params.seed").astype(str),
        "commit": runs.get("tags.git.commit", pd.Series(["unknown"] * len(runs))),
        "start_time": runs.get("start_time", pd.Series([0] * len(runs))),
    })
    for c in runs.columns:
        if c.startswith("metrics."):
            out[c[len("metrics."):]] = runs[c]
    out = out.sort_values("start_time").drop_duplicates(KEY, keep="last")
    return out.drop(columns=["start_time"]).reset_index(drop=True)


def load_selection(spec: str, uri: str | None = None) -> pd.DataFrame:
    p = Path(spec)
    if p.suffix == ".csv" or p.exists():
        if not p.exists():
            raise SSLBenchError(f"{p}: no such CSV; export one with 'sslbench leaderboard' (it writes runs.csv)")
        df = pd.read_csv(p, dtype={"seed": str})
        missing = [c for c in KEY if c not in df]
        if missing:
            raise SSLBenchError(f"{p}: not a runs CSV (missing columns {', '.join(missing)})")
        return df
    runs = runs_frame(fetch_runs(None, uri=uri))
    if spec.startswith("commit:"):
        sha = spec.split(":", 1)[1]
        sel = runs[runs["commit"].astype(str).str.startswith(sha)] if len(runs) else runs
        what = f"commit {sha}"
    else:
        name = spec.split(":", 1)[1] if spec.startswith("experiment:") else spec
        sel = runs_frame(fetch_runs([name], uri=uri))
        what = f"experiment '{name}'"
    if sel.empty:
        raise SSLBenchError(f"no finished runs for {what}; give a runs CSV, commit:SHA or experiment:NAME")
    return sel


@dataclass
class Row:
    method: str
    dataset: str
    backbone: str
    budget: str
    metric: str
    a: float
    b: float
    delta: float
    half: float
    n: int
    verdict: str


def compare(a: pd.DataFrame, b: pd.DataFrame, metrics: list[str], tolerance: float) -> list[Row]:
    a = a.copy()
    b = b.copy()
    a["seed"], b["seed"] = a["seed"].astype(str), b["seed"].astype(str)
    merged = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    if merged.empty:
        raise SSLBenchError("no runs pair up by (method, dataset, backbone, budget, seed) between A and B")
    rows = []
    for (m, d, bb, bud), g in merged.groupby(["method", "dataset", "backbone", "budget"], sort=True):
        for metric in metrics:
            ca, cb = f"{metric}_a", f"{metric}_b"
            if ca not in g or cb not in g:
                continue
            gg = g[[ca, cb]].dropna()
            if gg.empty:
                continue
            deltas = (gg[cb] - gg[ca]).to_numpy(float)
            mean, half, n = ci95(deltas)
            if n >= 2 and np.isfinite(half):
                lo, hi = mean - half, mean + half
                verdict = "regression" if (mean < -tolerance and hi < 0) else \
                    "improvement" if (mean > tolerance and lo > 0) else "noise"
            else:
                verdict = "regression (n=1)" if mean < -tolerance else "improvement (n=1)" if mean > tolerance else "noise (n=1)"
            rows.append(Row(m, d, bb, bud, metric, float(gg[ca].mean()), float(gg[cb].mean()), mean, half, n, verdict))
    if not rows:
        raise SSLBenchError(f"none of the metrics {', '.join(metrics)} is present in both run sets")
    return rows


def report(rows: list[Row], tolerance: float) -> str:
    hdr = ["method", "dataset", "backbone", "budget", "metric", "A", "B", "delta (95% CI)", "n", "verdict"]
    body = []
    for r in rows:
        ci = f"{r.delta:+.2f} ± {r.half:.2f}" if np.isfinite(r.half) else f"{r.delta:+.2f}"
        body.append([r.method, r.dataset, r.backbone, r.budget, r.metric, f"{r.a:.2f}", f"{r.b:.2f}", ci, str(r.n), r.verdict])
    w = [max(len(h), *(len(x[i]) for x in body)) for i, h in enumerate(hdr)]
    lines = ["  ".join(h.ljust(x) for h, x in zip(hdr, w)), "  ".join("-" * x for x in w)]
    lines += ["  ".join(c.ljust(x) for c, x in zip(r, w)) for r in body]
    n_reg = sum(r.verdict.startswith("regression") for r in rows)
    lines.append(f"\ntolerance {tolerance} points; {n_reg} regression(s), "
                 f"{sum(r.verdict.startswith('improvement') for r in rows)} improvement(s), "
                 f"{sum(r.verdict.startswith('noise') for r in rows)} within noise")
    return "\n".join(lines)
