"""The CI performance gate (``sslbench check``).

Runs a small suite (``harness/configs/suites/ci.yaml``: a few methods, a fixed STEPS budget so
the result does not depend on machine load, CIFAR-10 where working and broken methods
separate) and compares each method's metric with a committed baseline
(``results/ci/baseline.csv``: mean and standard deviation over >= 3 seeds). A method fails
when its value leaves ``mean ± band`` with ``band = max(k * std, min_band)``: the band is
derived from seed-to-seed variance. The band is two-sided on purpose: at CI budgets a
working method need not beat a broken one in the obvious direction (SimCLR's kNN accuracy
first drops below random init, then climbs past it), so any move beyond the noise means the
behaviour changed; an intended improvement is recorded by updating the baseline. Exit status
0 = pass, 1 = fail (the failing methods are named).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core.errors import SSLBenchError

BASELINE = Path("results/ci/baseline.csv")
CHECKOUT = Path(__file__).resolve().parents[2]   # the source checkout this package runs from


def default_baseline() -> Path:
    """``results/ci/baseline.csv`` of the current folder when it has one, else the checkout's own (so
    the gate works from any folder of an editable install); a path the user gives is theirs."""
    here = BASELINE.resolve()
    return here if here.exists() or not (CHECKOUT / BASELINE).exists() else CHECKOUT / BASELINE


@dataclass
class Verdict:
    method: str
    metric: str
    value: float
    mean: float
    std: float
    n: int
    band: float
    ok: bool


def make_baseline(values: pd.DataFrame, metric: str) -> pd.DataFrame:
    """values: rows (method, seed, metric) -> one row per method: mean, std (ddof=1), n."""
    g = values.groupby("method")[metric]
    return pd.DataFrame({"method": g.mean().index, "metric": metric, "mean": g.mean().values,
                         "std": g.std(ddof=1).fillna(0).values, "n": g.count().values})


def load_baseline(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise SSLBenchError(f"no CI baseline at {path}; create it with 'sslbench check --update-baseline --seeds 0,1,2'")
    df = pd.read_csv(path)
    if not {"method", "metric", "mean", "std", "n"} <= set(df.columns):
        raise SSLBenchError(f"{path}: not a CI baseline (needs columns method, metric, mean, std, n)")
    return df


def judge(current: pd.DataFrame, baseline: pd.DataFrame, k: float = 3.0, min_band: float = 1.0) -> list[Verdict]:
    out = []
    for _, b in baseline.iterrows():
        cur = current[current["method"] == b["method"]]
        metric = b["metric"]
        if cur.empty or metric not in cur:
            out.append(Verdict(b["method"], metric, float("nan"), b["mean"], b["std"], int(b["n"]), float("nan"), False))
            continue
        value = float(cur[metric].mean())
        band = max(k * float(b["std"]), min_band)
        out.append(Verdict(b["method"], metric, value, float(b["mean"]), float(b["std"]), int(b["n"]), band,
                           bool(np.isfinite(value) and abs(value - b["mean"]) <= band)))
    return out


def table(verdicts: list[Verdict]) -> str:
    hdr = ["method", "metric", "value", "baseline mean ± std (n)", "allowed range", "result"]

    def result(v: Verdict) -> str:
        if v.ok:
            return "ok"
        if not np.isfinite(v.value):
            return "MISSING"
        side = "under" if v.value < v.mean else "over"
        return (f"FAIL (outside the band, {abs(v.value - v.mean):.2f} {side} the mean: behaviour changed; "
                "update the baseline if intended)")

    rows = [[v.method, v.metric, f"{v.value:.2f}", f"{v.mean:.2f} ± {v.std:.2f} ({v.n})",
             f"{v.mean - v.band:.2f} .. {v.mean + v.band:.2f}", result(v)] for v in verdicts]
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
    lines = ["  ".join(h.ljust(x) for h, x in zip(hdr, w)), "  ".join("-" * x for x in w)]
    return "\n".join(lines + ["  ".join(c.ljust(x) for c, x in zip(r, w)) for r in rows])


def current_values(results: list[dict], metric: str) -> pd.DataFrame:
    """A suite's results (``harness.run.suites.run_suite``) -> rows (method, seed, metric); a run that
    failed (diverged) counts as NaN, so the gate fails it."""
    rows = []
    for r in results:
        if "failed" in r:
            rows.append({"method": r["config"]["method"], "seed": r["config"]["seed"], metric: float("nan")})
        elif r.get("metrics"):
            rows.append({"method": r["config"]["method"], "seed": r["config"]["seed"], metric: r["metrics"].get(metric)})
    return pd.DataFrame(rows, columns=["method", "seed", metric])


def write_baseline(current: pd.DataFrame, path: Path, metric: str) -> pd.DataFrame:
    """Write (and return) the baseline made from this run's seeds."""
    base = make_baseline(current, metric)
    if (base["n"] < 3).any():
        print("sslbench: warning: a baseline from fewer than 3 seeds has no useful variance band", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    base.to_csv(path, index=False)
    return base


def ensure_writable(path: Path) -> None:
    """Refuse, before any training, a baseline path that cannot be written."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SSLBenchError(f"cannot write the baseline {path} (no write permission in {folder}); choose --baseline PATH")


def gate(current: pd.DataFrame, baseline: pd.DataFrame, methods: list[str], k: float = 3.0,
         min_band: float = 1.0) -> tuple[list[Verdict], list[str]]:
    """Judge the suite's ``methods`` against their baseline rows; returns (verdicts, failing methods)."""
    verdicts = judge(current, baseline[baseline["method"].isin(methods)], k=k, min_band=min_band)
    return verdicts, [v.method for v in verdicts if not v.ok]
