"""Leaderboard tables rendered: plain text, Markdown, CSV, HTML (escaped), and the PNG plots."""

from __future__ import annotations

import html
import os
import re
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
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += [""] + [f"> note: {n}" for n in t.notes] if t.notes else []
    return "\n".join(lines)


def plain(t: Table) -> str:
    headers, rows = to_rows(t)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = [f"dataset {t.dataset} | budget {t.budget} | protocol {t.protocol} | mean ± 95% CI (n seeds)",
           "  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    out += [f"note: {n}" for n in t.notes]
    return "\n".join(out)


def flat_csv(t: Table) -> pd.DataFrame:
    f = t.frame.copy()
    f.insert(0, "dataset", t.dataset)
    f.insert(1, "budget", t.budget)
    f.insert(2, "protocol", t.protocol)
    return f


def html_page(tables: list[Table], title: str, command: str = "", meta: str = "") -> str:
    """The leaderboard as one HTML page; every string from the store (names, commands) is escaped."""
    e = html.escape
    body = [f"<h1>Leaderboard: {e(title)}</h1>"]
    if command:
        body.append(f"<p>Produced by: <code>{e(command)}</code></p>")
    if meta:
        body.append(f"<pre>{e(meta)}</pre>")
    for t in tables:
        headers, rows = to_rows(t)
        body.append(f"<h2>{e(t.dataset)} · {e(t.budget)} · protocol {e(t.protocol)}</h2>")
        body.append(pd.DataFrame(rows, columns=headers).to_html(index=False, escape=True))
        body += [f"<p><em>note: {e(n)}</em></p>" for n in t.notes]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + e(title) + "</title></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    """Write Markdown, CSV, HTML, LaTeX (and PNG plots) under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# Leaderboard: {title or stem}", ""]
    if command:
        md += [f"Produced by: `{command}`", ""]
    if meta:
        md += [f"Measured with {meta}", ""]
    md += ["\n\n".join(markdown(t) for t in tables)]
    paths = [out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.html"]
    _write_atomic(paths[0], "\n".join(md) + "\n")
    _write_atomic(paths[1], pd.concat([flat_csv(t) for t in tables], ignore_index=True).to_csv(index=False))
    _write_atomic(paths[2], html_page(tables, title or stem, command, meta))
    from harness.report.latex import document

    paths.append(out / f"{stem}.tex")
    _write_atomic(paths[-1], document(tables, title or stem))
    # the PNGs an earlier write of this leaderboard left (e.g. leaderboard.png before a second table made
    # leaderboard-0.png and -1.png) would sit beside the new ones as if current: only our own names go
    for old in out.glob(f"{stem}*.png"):
        if re.fullmatch(re.escape(stem) + r"(-\d+|-budget)?\.png", old.name):
            old.unlink(missing_ok=True)
    paths += plot(tables, out, stem)
    paths += plot_budget_curves(tables, out, stem)
    return paths
