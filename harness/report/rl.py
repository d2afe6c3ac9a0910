"""The agent runs' table (``sslbench rl-table``): from the tracking store alone, one row per agent
configuration (game, with or without CURL, env-step budget, everything else but the seed), each cell the
mean over seeds with its 95% Student-t interval (``harness.report.leaderboard.ci95``): the mean return
of the last K training episodes and the mean evaluation return."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.core.errors import SSLBenchError
from harness.report.leaderboard import ci95
from harness.tracking.query import fetch_runs

METRICS = (("metrics.rl/return_last", "return (last K episodes)"), ("metrics.rl/eval_return", "eval return"))


def _cell(values) -> str:
    mean, half, n = ci95(values)
    if n == 0:
        return "-"
    return f"{mean:.2f} (n=1)" if n == 1 else f"{mean:.2f} ± {half:.2f} (n={n})"


def rl_table(experiment: str = "rl", uri: str | None = None) -> pd.DataFrame:
    runs = fetch_runs([experiment], uri)
    if runs.empty or "metrics.rl/return_last" not in runs:
        raise SSLBenchError(f"no finished agent runs in experiment '{experiment}'; train some with 'sslbench rl'")
    runs = runs[runs["metrics.rl/return_last"].notna()].copy()
    for col in ("tags.game", "tags.method", "params.env_steps", "params.curl_weight", "params.backbone",
                "tags.sslbench.config_id", "params.seed"):
        if col not in runs:
            runs[col] = None
    rows = []
    keys = ["tags.game", "tags.method", "params.curl_weight", "params.backbone", "params.env_steps", "tags.sslbench.config_id"]
    for key, g in runs.groupby(keys, dropna=False, sort=True):
        game, arm, weight, backbone, steps, config = key
        row = {"game": game, "agent": f"{arm} (curl_weight={weight})", "backbone": backbone, "env steps": steps,
               "seeds": ",".join(sorted(str(s) for s in g["params.seed"].unique())), "config": str(config)[:6]}
        row.update({header: _cell(g[col].astype(float)) for col, header in METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def write_rl_table(table: pd.DataFrame, out: Path, experiment: str, command: str = "") -> list[Path]:
    folder = Path(out) / experiment
    folder.mkdir(parents=True, exist_ok=True)
    md, csv = folder / "rl_returns.md", folder / "rl_returns.csv"
    lines = [f"# {experiment}: agent returns (mean ± 95% CI over seeds)", ""]
    if command:
        lines += [f"`{command}`", ""]
    cols = list(table.columns)
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in table.itertuples(index=False)]
    md.write_text("\n".join(lines) + "\n")
    table.to_csv(csv, index=False)
    return [md, csv]
