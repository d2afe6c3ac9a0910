"""Leaderboard tables rendered: plain text, Markdown, CSV, HTML (escaped), and the PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.leaderboard import Table, columns
from harness.report.plots import plot, plot_budget_curves


def _cell(mean: float, half: float, n: int, digits: int) -> str:
    if n == 0 or not np.isfinite(mean):
        return "–"
    s = f"{mean:.{digits}f}"
    if n >= 2 and np.isfinite(half):
        s += f" ± {half:.{digits}f}"
    return f"{s} (n={n})"


def to_rows(t: Table) -> tuple[list[str], list[list[str]]]:
    present = [c for c in columns() if t.frame[f"{c.metric}/n"].max() > 0]
    headers = ["method", "backbone", "seeds"] + [c.header for c in present]
    rows = []
    for _, r in t.frame.iterrows():
        rows.append([str(r["method"]), str(r["backbone"]), str(r["seeds"])] +
                    [_cell(r[f"{c.metric}/mean"], r[f"{c.metric}/ci"], int(r[f"{c.metric}/n"]), c.digits) for c in present])
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


def tables_from_csv(path: str | Path) -> list[Table]:
    """The tables of a ``leaderboard.csv`` written by :func:`write` (the inverse of :func:`flat_csv`)."""
    from harness.core.errors import SSLBenchError

    try:
        df = pd.read_csv(path, dtype={"seeds": str, "budget": str, "protocol": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SSLBenchError(f"{path}: not a readable leaderboard CSV ({type(e).__name__})") from None
    need = {"dataset", "budget", "protocol", "method", "backbone"}
    if not need <= set(df.columns):
        raise SSLBenchError(f"{path}: not a leaderboard CSV (needs columns {', '.join(sorted(need))})")
    for c in columns():   # a column the CSV predates: no values
        for k, v in (("mean", float("nan")), ("ci", float("nan")), ("n", 0)):
            if f"{c.metric}/{k}" not in df:
                df[f"{c.metric}/{k}"] = v
    return [Table(str(d), str(b), str(p), g.drop(columns=["dataset", "budget", "protocol"]).reset_index(drop=True))
            for (d, b, p), g in df.groupby(["dataset", "budget", "protocol"], sort=True)]


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
