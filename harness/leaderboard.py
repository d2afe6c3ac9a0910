"""Leaderboards from MLflow runs: mean over seeds with a 95% Student-t interval.

Runs are grouped into separate tables by (dataset, budget, evaluation protocol), so runs
with different budgets, protocols or datasets never share a column. Inside a table, one row
per (method, backbone); each cell is ``mean ± half-width (n)``; a single-seed cell shows
``(n=1)`` and no interval.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

RANDOM_INIT = "random_init"

COLUMNS: list[tuple[str, str, bool]] = [  # metric, header, higher is better
    ("knn/top1@20", "kNN@20", True),
    ("knn/top1@200", "kNN@200", True),
    ("linear/top1", "linear", True),
    ("linear@1%/top1", "linear 1%", True),
    ("linear@10%/top1", "linear 10%", True),
    ("finetune/top1", "fine-tune", True),
    ("semisup@1%/top1", "semi-sup 1%", True),
    ("semisup@10%/top1", "semi-sup 10%", True),
    ("align", "align", False),
    ("uniform", "uniform", False),
    ("pretrain/throughput", "img/s", True),
    ("pretrain/seconds", "train s", True),
]


def ci95(values) -> tuple[float, float, int]:
    """Mean, 95% half-width (Student t, n-1 dof; nan for n < 2) and n of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    from scipy import stats

    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


def _protocol_key(row: pd.Series) -> str:
    """A short hash of the evaluation knobs the evaluator logged for this run (``eval/...`` params:
    the protocols run and their settings; not the seed), so runs scored differently never share
    a column, while config keys of protocols that did not run do not split tables."""
    knobs = sorted((k, str(v)) for k, v in row.items()
                   if k.startswith("params.eval/") and k != "params.eval/seed" and isinstance(v, str))
    return hashlib.sha1(repr(knobs).encode()).hexdigest()[:8]


@dataclass
class Table:
    dataset: str
    budget: str
    protocol: str
    frame: pd.DataFrame          # one row per (method, backbone); columns metric/mean, metric/ci, metric/n
    run_ids: tuple[str, ...] = ()  # the MLflow runs the cells average (superseded records excluded)


def build(runs: pd.DataFrame, dataset: str | None = None, backbone: str | None = None, budget: str | None = None,
          sort: str = "knn/top1@20") -> list[Table]:
    if runs.empty:
        return []
    df = runs.copy()
    for col in ("params.method", "params.backbone", "params.data.name", "params.budget.kind", "params.budget.value", "params.seed"):
        if col not in df:
            df[col] = None
    df["dataset"] = df["params.data.name"]
    df["budget"] = df["params.budget.kind"].astype(str) + "=" + df["params.budget.value"].astype(str)
    df["protocol"] = df.apply(_protocol_key, axis=1)
    # one record per run: a rerun or a re-evaluation (a new MLflow run under the same run
    # identity, possibly with other protocol knobs) supersedes the older ones; MLflow keeps them
    if "start_time" in df:
        df = df.sort_values("start_time", kind="stable")
    ident = [c for c in ("experiment",) if c in df] + ["params.method", "params.backbone", "dataset", "budget", "params.seed"]
    df = df.drop_duplicates(ident, keep="last")
    if dataset:
        df = df[df["dataset"] == dataset]
    if backbone:
        df = df[df["params.backbone"] == backbone]
    # a random-init encoder trains nothing: its rows join every budget's table of the same
    # dataset and protocol (the floor of each table)
    is_rand = df["params.method"] == RANDOM_INIT
    rand = df[is_rand].copy()
    df = df[~is_rand]
    if budget:
        df = df[df["budget"] == budget]
    groups = {key for key in df.groupby(["dataset", "budget", "protocol"]).groups}
    for key in rand.groupby(["dataset", "protocol"]).groups:
        if not any((g[0], g[2]) == key for g in groups):
            groups.add((key[0], "any", key[1]))
    extra = []
    for ds_, bud, proto in groups:
        r = rand[(rand["dataset"] == ds_) & (rand["protocol"] == proto)].copy()
        r["budget"] = bud
        extra.append(r)
    df = pd.concat([df, *extra], ignore_index=True) if extra else df
    # the same (method, backbone, dataset, budget, protocol, seed) logged twice: keep the newest run
    if "start_time" in df:
        df = df.sort_values("start_time")
    df = df.drop_duplicates(["params.method", "params.backbone", "dataset", "budget", "protocol", "params.seed"], keep="last")
    tables = []
    for (ds, bud, proto), g in df.groupby(["dataset", "budget", "protocol"], sort=True):
        rows = []
        for (method, bb), r in g.groupby(["params.method", "params.backbone"], sort=False):
            row = {"method": method, "backbone": bb, "seeds": ",".join(sorted(map(str, r["params.seed"].unique())))}
            for metric, _, _ in COLUMNS:
                col = f"metrics.{metric}"
                mean, half, n = ci95(r[col].tolist()) if col in r else (float("nan"), float("nan"), 0)
                row[f"{metric}/mean"], row[f"{metric}/ci"], row[f"{metric}/n"] = mean, half, n
            rows.append(row)
        frame = pd.DataFrame(rows)
        ids = tuple(sorted(set(g["run_id"].dropna().astype(str)))) if "run_id" in g else ()
        key = f"{sort}/mean"
        if key in frame:
            frame = frame.sort_values(key, ascending=False, na_position="last").reset_index(drop=True)
        tables.append(Table(ds, bud, proto, frame, ids))
    return tables


def _cell(mean: float, half: float, n: int, metric: str) -> str:
    if n == 0 or not np.isfinite(mean):
        return "–"
    digits = 0 if metric in ("pretrain/throughput", "pretrain/seconds") else (3 if metric in ("align", "uniform") else 1)
    s = f"{mean:.{digits}f}"
    if n >= 2 and np.isfinite(half):
        s += f" ± {half:.{digits}f}"
    return f"{s} (n={n})"


def to_rows(t: Table) -> tuple[list[str], list[list[str]]]:
    present = [(m, h) for m, h, _ in COLUMNS if t.frame[f"{m}/n"].max() > 0]
    headers = ["method", "backbone", "seeds"] + [h for _, h in present]
    rows = []
    for _, r in t.frame.iterrows():
        rows.append([str(r["method"]), str(r["backbone"]), str(r["seeds"])] +
                    [_cell(r[f"{m}/mean"], r[f"{m}/ci"], int(r[f"{m}/n"]), m) for m, _ in present])
    return headers, rows


def markdown(t: Table) -> str:
    headers, rows = to_rows(t)
    lines = [f"**dataset** {t.dataset} · **budget** {t.budget} · **protocol** {t.protocol} "
             "(cells: mean ± 95% CI (Student t) over seeds, n = number of seeds; accuracy in %, top-1)", "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plain(t: Table) -> str:
    headers, rows = to_rows(t)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = [f"dataset {t.dataset} | budget {t.budget} | protocol {t.protocol} | mean ± 95% CI (n seeds)",
           "  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def flat_csv(t: Table) -> pd.DataFrame:
    f = t.frame.copy()
    f.insert(0, "dataset", t.dataset)
    f.insert(1, "budget", t.budget)
    f.insert(2, "protocol", t.protocol)
    return f


def current_runs(runs: pd.DataFrame, tables: list[Table]) -> pd.DataFrame:
    """The runs whose numbers the tables show (a rerun's older records left out), when known."""
    ids = {i for t in tables for i in t.run_ids}
    return runs[runs["run_id"].astype(str).isin(ids)] if ids and "run_id" in runs else runs


def provenance(runs: pd.DataFrame) -> str:
    """Where the numbers come from: devices, torch versions and git commits of the runs."""
    parts = []
    for col, name in (("tags.device.name", "device"), ("tags.host.cpu_count", "CPU cores"),
                      ("tags.torch.version", "torch"), ("tags.git.commit", "commit")):
        if col in runs:
            vals = sorted({str(v)[:12] if name == "commit" else str(v) for v in runs[col].dropna()})
            if vals:
                parts.append(f"{name}: {', '.join(vals)}")
    text = "; ".join(parts)
    if "tags.command" in runs:
        cmds = sorted({str(c) for c in runs["tags.command"].dropna() if str(c).strip()})
        if cmds:
            text += "\n\nRuns produced by:\n\n" + "\n".join(f"- `{c}`" for c in cmds)
    return text


def write(tables: list[Table], out_dir: str | Path, stem: str, command: str = "", title: str = "",
          meta: str = "") -> list[Path]:
    """Write Markdown, CSV and HTML (and PNG plots) under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# Leaderboard: {title or stem}", ""]
    if command:
        md += [f"Produced by: `{command}`", ""]
    if meta:
        md += [f"Measured with {meta}", ""]
    md += ["\n\n".join(markdown(t) for t in tables)]
    paths = [out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.html"]
    paths[0].write_text("\n".join(md) + "\n")
    pd.concat([flat_csv(t) for t in tables], ignore_index=True).to_csv(paths[1], index=False)
    html = [f"<h1>Leaderboard: {title or stem}</h1>"] + ([f"<p>Produced by: <code>{command}</code></p>"] if command else [])
    for t in tables:
        headers, rows = to_rows(t)
        html.append(f"<h2>{t.dataset} · {t.budget} · protocol {t.protocol}</h2>")
        html.append(pd.DataFrame(rows, columns=headers).to_html(index=False, escape=True))
    paths[2].write_text("\n".join(html))
    paths += plot(tables, out, stem)
    paths += plot_budget_curves(tables, out, stem)
    return paths


def _budget_value(budget: str) -> tuple[str, float] | None:
    kind, _, value = budget.partition("=")
    try:
        return kind, float(value)
    except ValueError:
        return None


def plot_budget_curves(tables: list[Table], out: Path, stem: str, metric: str = "knn/top1@20") -> list[Path]:
    """Accuracy vs budget, one line per (method, backbone) with 95% CI bars, for every (dataset,
    protocol, budget kind) measured at two or more budgets; random-init rows are a dashed floor.
    Writes ``{stem}-budget.png`` (one panel per group); nothing when no group has two budgets."""
    groups: dict[tuple[str, str, str], list[tuple[float, Table]]] = {}
    for t in tables:
        bv = _budget_value(t.budget)
        if bv is not None:
            groups.setdefault((t.dataset, t.protocol, bv[0]), []).append((bv[1], t))
    groups = {k: sorted(v, key=lambda x: x[0]) for k, v in groups.items() if len(v) >= 2}
    if not groups:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), squeeze=False)
    for ax, ((ds, proto, kind), items) in zip(axes[0], sorted(groups.items())):
        lines: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for value, t in items:
            for _, r in t.frame.iterrows():
                if r[f"{metric}/n"] > 0:
                    lines.setdefault((r["method"], r["backbone"]), []).append((value, r[f"{metric}/mean"], r[f"{metric}/ci"]))
        for (method, bb), pts in sorted(lines.items()):
            x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
            if method == RANDOM_INIT:
                ax.axhline(np.nanmean(y), linestyle="--", color="grey", linewidth=1)
                ax.annotate(f"random init ({bb})", (x.min(), np.nanmean(y)), fontsize=8, color="grey")
                continue
            ax.errorbar(x, y, yerr=np.where(np.isfinite(e), e, 0.0), marker="o", capsize=3, label=f"{method} ({bb})")
        ax.set_xscale("log")
        ax.set_xlabel(f"budget ({kind})")
        ax.set_ylabel(f"{metric} top-1 (%)")
        ax.set_title(f"{ds}, protocol {proto}: accuracy vs budget")
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / f"{stem}-budget.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def plot(tables: list[Table], out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for i, t in enumerate(tables):
        f = t.frame
        sfx = f"-{i}" if len(tables) > 1 else ""
        labels = [f"{m}\n{b}" for m, b in zip(f["method"], f["backbone"])]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        ax = axes[0]
        for metric, name, off in (("knn/top1@20", "kNN@20", -0.2), ("linear/top1", "linear", 0.2)):
            if f[f"{metric}/n"].max() > 0:
                y = f[f"{metric}/mean"].to_numpy(float)
                err = f[f"{metric}/ci"].to_numpy(float)  # no bar for single-seed cells (no interval)
                ax.bar(np.arange(len(f)) + off, y, width=0.4, label=name)
                ok = np.isfinite(err)
                if ok.any():
                    ax.errorbar(np.arange(len(f))[ok] + off, y[ok], yerr=err[ok], fmt="none", ecolor="black", capsize=3)
        ax.set_xticks(np.arange(len(f)), labels, fontsize=8)
        ax.set_ylabel("top-1 accuracy (%)")
        lo = np.nanmin(np.r_[f.get("knn/top1@20/mean", pd.Series([np.nan])), f.get("linear/top1/mean", pd.Series([np.nan]))])
        if np.isfinite(lo):
            ax.set_ylim(max(0, lo - 10), None)
        ax.legend()
        n_max = int(max(f["knn/top1@20/n"].max(), f["linear/top1/n"].max()))
        ax.set_title(f"{t.dataset}, budget {t.budget}" + (" (95% CI over seeds)" if n_max > 1 else " (1 seed: no CI)"))
        ax = axes[1]
        if f["align/n"].max() > 0:
            for _, r in f.iterrows():
                ax.scatter(r["uniform/mean"], r["align/mean"])
                ax.annotate(f"{r['method']} ({r['backbone']})", (r["uniform/mean"], r["align/mean"]), fontsize=8)
        ax.set_xlabel("uniformity (lower is better)")
        ax.set_ylabel("alignment (lower is better)")
        ax.set_title("alignment vs uniformity (Wang & Isola, 2020)")
        fig.tight_layout()
        p = out / f"{stem}{sfx}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
