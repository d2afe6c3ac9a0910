"""Leaderboards from MLflow runs: mean over seeds with a 95% Student-t interval.

Runs are grouped into separate tables by (dataset, budget, evaluation protocol), so runs
with different budgets, protocols or datasets never share a column. Inside a table, one row
per (method, backbone); each cell is ``mean ± half-width (n)``; a single-seed cell shows
``(n=1)`` and no interval. Columns come from the protocol table (``evals.protocols``). A row of runs
that trained on class labels (tag ``sslbench.uses_labels``: the supervised baseline, CLIP on templated
captions) is marked ``(labels)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from evals.protocols import HEADLINE, Column
from evals.protocols import columns as protocol_columns
from harness.core.identity import differences, identity, identity_fields
from harness.core.schema import BudgetConfig
from harness.method.registry import RANDOM_INIT


def budget_text(runs: pd.DataFrame) -> pd.Series:
    """Each run's budget as ``BudgetConfig.text`` (``seconds=240.0``), from its logged params."""
    def one(kind, value) -> str:
        try:
            return BudgetConfig(str(kind), float(value)).text
        except (TypeError, ValueError):
            return f"{kind}={value}"

    return pd.Series([one(k, v) for k, v in zip(runs["params.budget.kind"], runs["params.budget.value"])],
                     index=runs.index, dtype=object)


LABELS_COLUMN = "tags.sslbench.uses_labels"   # set by harness.run.naming.run_tags on label-using runs

PRETRAIN_COLUMNS = (Column("pretrain/throughput", "img/s", digits=0), Column("pretrain/seconds", "train s", digits=0))


def columns() -> list[Column]:
    """The leaderboard's metric columns: every protocol's (the protocol table), then pretraining's."""
    return [*protocol_columns(), *PRETRAIN_COLUMNS]


def ci95(values) -> tuple[float, float, int]:
    """Mean, 95% half-width (Student t, n-1 dof; nan for n < 2) and n of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


# not protocol settings: the seed; the zero-shot class names, which follow from the dataset (a table key
# already) and are logged only by methods with a text tower, so they must not split a table from its floor
# knobs that do not change a number: the seed (own column), the class names (from the dataset), and the
# kNN search backend (torch and FAISS flat are both exact; auto picks the faster on each machine)
DERIVED_KNOBS = ("params.eval/seed", "params.eval/zero_shot_class_names", "params.eval/knn_backend")


def _protocol_key(row: pd.Series) -> str:
    """A short hash of the evaluation knobs the evaluator logged for this run (``eval/...`` params:
    the protocols run and their settings; not the seed), so runs scored differently never share
    a column, while config keys of protocols that did not run do not split tables."""
    knobs = sorted((k, str(v)) for k, v in row.items()
                   if k.startswith("params.eval/") and k not in DERIVED_KNOBS and isinstance(v, str))
    return hashlib.sha1(repr(knobs).encode()).hexdigest()[:8]


@dataclass
class Table:
    dataset: str
    budget: str
    protocol: str
    frame: pd.DataFrame          # one row per (method, backbone, configuration); columns metric/mean, metric/ci, metric/n
    run_ids: tuple[str, ...] = ()  # the MLflow runs the cells average (superseded records excluded)
    notes: tuple[str, ...] = ()    # what the table would have mixed, said instead of mixed
    data: str = ""                 # the dataset's content fingerprint (when recorded)


def run_params(row: pd.Series) -> dict[str, str]:
    """A run's logged params (``params.*`` columns of :func:`harness.tracking.query.fetch_runs`)."""
    return {k[len("params."):]: v for k, v in row.items() if k.startswith("params.") and isinstance(v, str)}


def with_identity(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with columns dataset (its label), data_fp, budget, protocol, config_id and identity
    (``harness.core.identity``: everything that changes a result; config_id leaves out the seed)."""
    df = runs.copy()
    for col in ("params.method", "params.backbone", "params.data.name", "params.budget.kind", "params.budget.value",
                "params.seed", "params.data.fingerprint", "tags.dataset"):
        if col not in df:
            df[col] = None
    df["dataset"] = df["tags.dataset"].where(df["tags.dataset"].notna(), df["params.data.name"]).astype(str)
    df["data_fp"] = df["params.data.fingerprint"].fillna("").astype(str)
    df["budget"] = budget_text(df)
    df["protocol"] = df.apply(_protocol_key, axis=1) if len(df) else []
    ids = [identity(run_params(r)) for _, r in df.iterrows()]
    df["config_id"] = [i[0] for i in ids]
    df["identity"] = [i[1] for i in ids]
    return df


def build(runs: pd.DataFrame, dataset: str | None = None, backbone: str | None = None, budget: str | None = None,
          sort: str = HEADLINE) -> list[Table]:
    if runs.empty:
        return []
    df = with_identity(runs)
    # one record per run identity: a rerun or a re-evaluation (a new MLflow run of the same
    # configuration and seed, possibly under other protocol knobs) supersedes the older ones; MLflow keeps them
    if "start_time" in df:
        df = df.sort_values("start_time", kind="stable")
    df = df.drop_duplicates([c for c in ("experiment",) if c in df] + ["identity"], keep="last")
    if dataset:
        df = df[df["dataset"] == dataset]
    if backbone:
        df = df[df["params.backbone"] == backbone]
    # a random-init encoder trains nothing: its rows join every budget's table of the same
    # dataset (label and contents) and protocol (the floor of each table)
    is_rand = df["params.method"] == RANDOM_INIT
    rand = df[is_rand].copy()
    df = df[~is_rand]
    if budget:
        df = df[df["budget"] == budget]
    keys = ["dataset", "data_fp", "budget", "protocol"]
    groups = {key for key in df.groupby(keys).groups}
    for key in rand.groupby(["dataset", "data_fp", "protocol"]).groups:
        if not any((g[0], g[1], g[3]) == key for g in groups):
            groups.add((key[0], key[1], "any", key[2]))
    extra = []
    for ds_, fp, bud, proto in groups:
        r = rand[(rand["dataset"] == ds_) & (rand["data_fp"] == fp) & (rand["protocol"] == proto)].copy()
        r["budget"] = bud
        extra.append(r)
    df = pd.concat([df, *extra], ignore_index=True) if extra else df
    # the same identity logged twice under one protocol (e.g. in two experiments): keep the newest run
    if "start_time" in df:
        df = df.sort_values("start_time", kind="stable")
    df = df.drop_duplicates(["identity", "budget", "protocol"], keep="last")
    contents = df.groupby("dataset")["data_fp"].nunique()
    tables = []
    for (ds, fp, bud, proto), g in df.groupby(keys, sort=True):
        rows, notes = [], []
        if contents.get(ds, 1) > 1:
            notes.append(f"dataset '{ds}' was measured on {contents[ds]} different contents (e.g. another folder, "
                         f"image size or subset): this table is the one with data fingerprint {fp[:8] or 'unrecorded'}")
        for (method, bb), mg in g.groupby(["params.method", "params.backbone"], sort=False):
            configs = list(dict.fromkeys(mg["config_id"]))
            if len(configs) > 1:
                first = run_params(mg[mg["config_id"] == configs[0]].iloc[0])
                diffs = [", ".join(differences(first, run_params(mg[mg["config_id"] == c].iloc[0]), limit=3))
                         for c in configs[1:]]
                notes.append(f"{method}/{bb}: {len(configs)} configurations, shown as separate rows "
                             f"(they differ in {'; '.join(diffs)})")
            for cid in configs:
                r = mg[mg["config_id"] == cid]
                label = method if len(configs) == 1 else f"{method} [{cid[:6]}]"
                teacher = r["params.teacher.method"].dropna() if "params.teacher.method" in r else ()
                if len(teacher):                     # a distillation names its teacher (method/backbone)
                    tb = r["params.teacher.backbone"].dropna() if "params.teacher.backbone" in r else ()
                    label += f" <- {teacher.iloc[0]}" + (f"/{tb.iloc[0]}" if len(tb) else "")
                # background augmentation (Ryali et al., 2021), when it is part of the run's identity (not for a
                # random-init floor, which trains nothing, nor with the option off)
                bg = identity_fields(run_params(r.iloc[0])).get("views.background")
                if bg:
                    label += f" +bg:{bg}"
                if LABELS_COLUMN in r and (r[LABELS_COLUMN] == "true").any():
                    label += " (labels)"         # trained on class labels: the supervised baseline, templated captions
                row = {"method": label, "backbone": bb, "seeds": ",".join(sorted(map(str, r["params.seed"].unique()))),
                       "config": cid}
                for metric in (c.metric for c in columns()):
                    col = f"metrics.{metric}"
                    mean, half, n = ci95(r[col].tolist()) if col in r else (float("nan"), float("nan"), 0)
                    row[f"{metric}/mean"], row[f"{metric}/ci"], row[f"{metric}/n"] = mean, half, n
                rows.append(row)
        frame = pd.DataFrame(rows)
        scored = [c for c in g.columns if c.startswith("metrics.") and not c.startswith(("metrics.train/", "metrics.pretrain/"))]
        if not any(g[c].notna().any() for c in scored):
            continue                   # runs without any evaluation: not a leaderboard (its cells would all be empty)
        ids = tuple(sorted(set(g["run_id"].dropna().astype(str)))) if "run_id" in g else ()
        key = f"{sort}/mean"
        if key in frame:
            frame = frame.sort_values(key, ascending=False, na_position="last").reset_index(drop=True)
        title = ds if contents.get(ds, 1) <= 1 else f"{ds} (data {fp[:8] or 'unrecorded'})"
        tables.append(Table(title, bud, proto, frame, ids, tuple(notes), fp))
    return tables


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
