"""Regression comparisons between two run sets (``sslbench compare A B``).

A and B are each one of: an exported per-run CSV (``results/<experiment>/runs.csv``, written by
``sslbench leaderboard``), ``commit:SHA`` (runs tagged with that git commit, prefix allowed),
or ``experiment:NAME`` (a suite's runs). Runs are paired by (method, dataset, backbone,
budget, seed), and a pair counts only when both runs have the same configuration identity
(``config_id``: everything that changes a result, ``harness.core.identity``) and were scored
under the same protocol knobs; pairs that differ are listed as not comparable, never compared.
For each (method, dataset, backbone, budget) the paired deltas B - A get a mean and a 95%
Student-t interval, and a verdict:

* regression: mean delta < -tolerance and the interval lies below zero (beyond noise);
* improvement: mean delta > +tolerance and the interval lies above zero;
* noise: anything else;
* insufficient seeds: a single pair has no noise estimate, so no verdict is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core.errors import SSLBenchError
from harness.report.leaderboard import ci95, with_identity
from harness.tracking.query import fetch_runs

KEY = ["method", "dataset", "backbone", "budget", "seed"]
IDENTITY = ["config_id", "protocol"]     # must match for a pair to count


def runs_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """MLflow runs (``tracking.fetch_runs``) -> one row per run identity (the newest record):
    KEY columns, config_id, protocol, commit and ``metrics.*``."""
    if runs.empty:
        return pd.DataFrame(columns=KEY + IDENTITY)
    df = with_identity(runs)
    out = pd.DataFrame({
        "method": df["params.method"], "dataset": df["dataset"], "backbone": df["params.backbone"],
        "budget": df["budget"], "seed": df["params.seed"].astype(str), "config_id": df["config_id"],
        "protocol": df["protocol"], "identity": df["identity"],
        "commit": df.get("tags.git.commit", pd.Series(["unknown"] * len(df), index=df.index)),
        "start_time": df.get("start_time", pd.Series([0] * len(df), index=df.index)),
    })
    for c in df.columns:
        if c.startswith("metrics."):
            out[c[len("metrics."):]] = df[c]
    out = out.sort_values("start_time", kind="stable").drop_duplicates(["identity", "protocol"], keep="last")
    return out.drop(columns=["start_time", "identity"]).reset_index(drop=True)


def load_selection(spec: str, uri: str | None = None) -> pd.DataFrame:
    p = Path(spec)
    if p.suffix == ".csv" or p.exists():
        if not p.exists():
            raise SSLBenchError(f"{p}: no such CSV; export one with 'sslbench leaderboard' (it writes runs.csv)")
        try:
            df = pd.read_csv(p, dtype={"seed": str, "config_id": str, "protocol": str})
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
            raise SSLBenchError(f"{p}: not a readable runs CSV ({type(e).__name__}: {str(e)[:80]}); "
                                "export one with 'sslbench leaderboard'") from None
        missing = [c for c in KEY if c not in df]
        if missing:
            raise SSLBenchError(f"{p}: not a runs CSV (missing columns {', '.join(missing)})")
        if df.empty:
            raise SSLBenchError(f"{p}: the runs CSV has no rows")
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


def _comparable(merged: pd.DataFrame) -> pd.Series:
    ok = pd.Series(True, index=merged.index)
    for c in IDENTITY:
        if f"{c}_a" in merged and f"{c}_b" in merged:
            ok &= merged[f"{c}_a"].astype(str) == merged[f"{c}_b"].astype(str)
    return ok


def not_comparable(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The (method, dataset, backbone, budget) groups whose A and B runs differ in configuration or
    protocol (so they are not compared), each as one line."""
    merged = _merge(a, b)
    bad = merged[~_comparable(merged)]
    out = []
    for (m, d, bb, bud), g in bad.groupby(["method", "dataset", "backbone", "budget"], sort=True):
        what = [f"{c} {g[f'{c}_a'].iloc[0]} vs {g[f'{c}_b'].iloc[0]}" for c in IDENTITY
                if f"{c}_a" in g and str(g[f"{c}_a"].iloc[0]) != str(g[f"{c}_b"].iloc[0])]
        out.append(f"{m}/{bb} {d} {bud}: not compared, A and B were measured differently ({'; '.join(what)})")
    return out


def _merge(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    a, b = a.copy(), b.copy()
    a["seed"], b["seed"] = a["seed"].astype(str), b["seed"].astype(str)
    return a.merge(b, on=KEY, suffixes=("_a", "_b"))


def compare(a: pd.DataFrame, b: pd.DataFrame, metrics: list[str], tolerance: float) -> list[Row]:
    merged = _merge(a, b)
    if merged.empty:
        raise SSLBenchError("no runs pair up by (method, dataset, backbone, budget, seed) between A and B")
    comparable = _comparable(merged)
    if not comparable.any():
        raise SSLBenchError("no pair of runs was measured the same way in A and B: " + "; ".join(not_comparable(a, b))[:600])
    merged = merged[comparable]
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
            else:   # one pair: no estimate of the seed-to-seed noise, so no verdict
                verdict = "insufficient seeds (n=1)"
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
    n_few = sum(r.verdict.startswith("insufficient") for r in rows)
    lines.append(f"\ntolerance {tolerance} points; {n_reg} regression(s), "
                 f"{sum(r.verdict.startswith('improvement') for r in rows)} improvement(s), "
                 f"{sum(r.verdict.startswith('noise') for r in rows)} within noise"
                 + (f", {n_few} with insufficient seeds (pair >= 2 seeds per side for a verdict)" if n_few else ""))
    return "\n".join(lines)
