"""Leaderboards as a paper table: LaTeX with booktabs, cells ``mean $\\pm$ CI``, the best value of
each evaluation column in bold (ties at the printed precision all bold; lower-is-better columns
such as alignment by their own direction), and a footnote with the seeds per row."""

from __future__ import annotations

import numpy as np

from evals.protocols import columns as protocol_columns
from harness.report.leaderboard import Table, columns

_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def escape(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in str(text))


def _cell(mean: float, half: float, n: int, digits: int, bold: bool) -> str:
    if n == 0 or not np.isfinite(mean):
        return "--"
    s = f"{mean:.{digits}f}"
    if n >= 2 and np.isfinite(half):
        s += f" $\\pm$ {half:.{digits}f}"
    return f"\\textbf{{{s}}}" if bold else s


def table(t: Table) -> str:
    ranked = {c.metric for c in protocol_columns()}
    present = [c for c in columns() if t.frame[f"{c.metric}/n"].max() > 0]
    best = {}
    for c in present:
        if c.metric not in ranked:
            continue
        vals = t.frame[f"{c.metric}/mean"].round(c.digits)
        vals = vals[np.isfinite(vals)]
        if len(vals) > 1:
            best[c.metric] = vals.max() if c.higher_is_better else vals.min()
    spec = "ll" + "r" * len(present)
    head = ["method", "backbone"] + [escape(c.header) + ("" if c.higher_is_better else r" $\downarrow$") for c in present]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    seeds = set()
    for _, r in t.frame.iterrows():
        cells = [escape(r["method"]), escape(r["backbone"])]
        for c in present:
            m = r[f"{c.metric}/mean"]
            bold = c.metric in best and np.isfinite(m) and round(float(m), c.digits) == best[c.metric]
            cells.append(_cell(m, r[f"{c.metric}/ci"], int(r[f"{c.metric}/n"]), c.digits, bold))
        seeds.add(len(str(r["seeds"]).split(",")))
        lines.append(" & ".join(cells) + r" \\")
    n = f"{min(seeds)}" if len(seeds) == 1 else f"{min(seeds)}--{max(seeds)}"
    caption = (f"{escape(t.dataset)}, budget {escape(t.budget)}, protocol {escape(t.protocol)}. Mean $\\pm$ 95\\% "
               f"confidence half-width (Student t) over {n} seed(s) per row (single-seed cells show the mean); "
               "accuracy in \\%, top-1; best per column in bold.")
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines)


def document(tables: list[Table], title: str = "") -> str:
    """A standalone document (``pdflatex`` compiles it; the tables can be pasted into a paper as they are)."""
    body = "\n\n".join(table(t) for t in tables)
    return "\n".join([r"\documentclass{article}", r"\usepackage{booktabs}", r"\usepackage[margin=1.5cm,landscape]{geometry}",
                      r"\begin{document}", f"% {escape(title)}" if title else "", body, r"\end{document}", ""])
