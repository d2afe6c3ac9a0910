"""Leaderboards as a paper table (``leaderboard.tex``): LaTeX with booktabs, one ``table`` per
leaderboard table.

* Cells are ``mean $\\pm$ CI`` (the 95% Student-t half-width the tables carry); a single-seed cell
  shows the mean alone; a missing one is ``--``.
* The best value of each accuracy column is bold (every row at the printed precision that ties
  it). Lower-is-better columns (alignment, uniformity) carry a ``$\\downarrow$`` in the header and are
  never bold: each alone is won by a degenerate encoder (a collapsed one aligns perfectly), so a
  "best" there would mislead. Pretraining columns (img/s, seconds) are measurements, not ranked.
* The caption says the dataset, budget, protocol and the seeds per row; when rows have different
  seed counts a ``seeds`` column says each row's.
* Every name from the store is escaped (``_``, ``%``, ``&``, ``#``, ``[...]``, ``<-``, ...).
"""

from __future__ import annotations

import numpy as np

from evals.protocols import columns as protocol_columns
from harness.report.leaderboard import Table, columns

_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}", "|": r"\textbar{}",
            # a cell that starts with "[" would be read as the optional argument of the row's "\\"
            "[": "{[}", "]": "{]}"}


def _plain(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def escape(text: str) -> str:
    """``text`` as LaTeX text: special characters escaped; a distillation's ``<-`` is an arrow."""
    parts = str(text).split("<-")
    return _plain(parts[0]) if len(parts) == 1 else r" $\leftarrow$ ".join(_plain(p.strip()) for p in parts)


def cell(mean: float, half: float, n: int, digits: int, bold: bool = False, row_seeds: int | None = None) -> str:
    """``mean $\\pm$ half`` at ``digits`` decimals; the mean alone for one seed; ``--`` for none; a
    superscript ``n=k`` when the cell averages fewer seeds than its row has."""
    if n == 0 or not np.isfinite(mean):
        return "--"
    s = f"{mean:.{digits}f}".replace("-", "$-$", 1)   # a minus sign, not a hyphen
    if n >= 2 and np.isfinite(half):
        s += f" $\\pm$ {half:.{digits}f}"
    s = f"\\textbf{{{s}}}" if bold else s
    return s + (f"$^{{n={n}}}$" if row_seeds is not None and n < row_seeds else "")


def best_values(t: Table) -> dict[str, float]:
    """Per ranked column (accuracies: higher is better), the best mean at the printed precision;
    only for columns where at least two rows have a value (a lone value is not "best" of anything)."""
    best = {}
    for c in protocol_columns():
        if not c.higher_is_better or f"{c.metric}/mean" not in t.frame:
            continue
        vals = t.frame[f"{c.metric}/mean"].astype(float).round(c.digits)
        vals = vals[np.isfinite(vals) & (t.frame[f"{c.metric}/n"] > 0)]
        if len(vals) > 1:
            best[c.metric] = float(vals.max())
    return best


def _seed_count(seeds) -> int:
    return len([s for s in str(seeds).split(",") if s.strip() and s.strip() != "nan"])


def table(t: Table) -> str:
    present = [c for c in columns() if t.frame[f"{c.metric}/n"].max() > 0]
    best = best_values(t)
    counts = [_seed_count(s) for s in t.frame["seeds"]]
    per_row = len(set(counts)) > 1          # rows differ in seeds: say each row's
    spec = "ll" + ("r" if per_row else "") + "r" * len(present)
    head = ["method", "backbone"] + (["seeds"] if per_row else []) + \
           [escape(c.header) + ("" if c.higher_is_better else r" $\downarrow$") for c in present]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    for (_, r), k in zip(t.frame.iterrows(), counts):
        cells = [escape(r["method"]), escape(r["backbone"])] + ([str(k)] if per_row else [])
        for c in present:
            m = float(r[f"{c.metric}/mean"])
            bold = c.metric in best and np.isfinite(m) and round(m, c.digits) == best[c.metric]
            cells.append(cell(m, float(r[f"{c.metric}/ci"]), int(r[f"{c.metric}/n"]), c.digits, bold, k))
        lines.append(" & ".join(cells) + r" \\")
    seeds = (f"{min(counts)} seed{'s' if min(counts) != 1 else ''} per row" if not per_row
             else f"{min(counts)} to {max(counts)} seeds per row (column seeds)")
    ranked = [escape(c.header) for c in present if c.metric in best]
    lower = [escape(c.header) for c in present if not c.higher_is_better]
    caption = (f"{escape(t.dataset)}, budget {escape(t.budget)}, protocol {escape(t.protocol)}: mean $\\pm$ 95\\% "
               f"confidence half-width (Student t) over {seeds}; a single-seed cell shows the mean, a superscript $n$ "
               "marks a cell over fewer seeds than its row. Accuracy in "
               "\\%, top-1" + (f"; best per column in bold ({', '.join(ranked)})" if ranked else "") +
               (f"; {', '.join(lower)}: lower is better, not ranked (each alone favours a degenerate encoder)"
                if lower else "") + ".")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"\\par\\smallskip{{\\footnotesize note: {escape(n)}}}" for n in t.notes]   # said, never hidden
    lines += [f"\\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines)


def document(tables: list[Table], title: str = "") -> str:
    """A standalone document (``pdflatex`` compiles it: booktabs is in Debian's texlive-latex-recommended,
    geometry in texlive-latex-base); each ``table`` environment can be pasted into a paper as it is."""
    body = "\n\n".join(table(t) for t in tables)
    return "\n".join([r"\documentclass{article}", r"\usepackage{booktabs}",
                      r"\usepackage[margin=1.5cm,landscape]{geometry}", r"\begin{document}",
                      *([f"% leaderboard: {escape(title)}"] if title else []), body, r"\end{document}", ""])
