"""The paper table: booktabs LaTeX with mean ± CI, the best per accuracy column in bold, names escaped,
and a document that is well-formed (and compiles, where pdflatex exists)."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.report.latex import document, escape, table
from harness.report.leaderboard import Table, columns
from harness.report.render import tables_from_csv, write

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = sorted(ROOT.glob("results/reference/*/leaderboard.csv"))


def _row(method, seeds, **metrics):
    r = {"method": method, "backbone": "cnn4", "seeds": seeds, "config": "x"}
    for c in columns():
        r[f"{c.metric}/mean"], r[f"{c.metric}/ci"], r[f"{c.metric}/n"] = np.nan, np.nan, 0
    for metric, (mean, half, n) in metrics.items():
        r[f"{metric}/mean"], r[f"{metric}/ci"], r[f"{metric}/n"] = mean, half, n
    return r


def _table(rows) -> Table:
    return Table("cifar10", "seconds=240.0", "27b7604e", pd.DataFrame(rows))


KNN, LIN = "knn/top1@20", "linear/top1"
ROWS = [
    _row("simclr", "0,1,2", **{KNN: (50.04, 0.5, 3), LIN: (60.0, 1.0, 3), "align": (0.30, 0.01, 3)}),
    _row("feature_distillation [aef201] <- mae/vit_mini_p4", "0,1,2",
         **{KNN: (52.0, 1.2, 3), LIN: (58.0, 0.7, 3), "align": (0.50, 0.02, 3), "uniform": (-1.5, 0.1, 3)}),
    _row("byol_100%", "0,1,2", **{KNN: (51.96, np.nan, 1), LIN: (61.0, 2.0, 2), "align": (0.20, 0.01, 3)}),
]


def _split(tex: str) -> tuple[list[str], list[list[str]]]:
    header = tex.split(r"\toprule", 1)[1].split(r"\midrule", 1)[0].strip().removesuffix(r"\\").strip().split(" & ")
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
    return header, [ln.strip().removesuffix(r"\\").strip().split(" & ") for ln in body.strip().splitlines()]


def test_cells_bold_on_the_best_and_ties_mean_pm_ci():
    header, rows = _split(table(_table(ROWS)))
    knn, lin = header.index("kNN@20"), header.index("linear")
    assert rows[0][knn] == "50.0 $\\pm$ 0.5"                        # not the best: plain, mean ± CI
    assert rows[1][knn] == "\\textbf{52.0 $\\pm$ 1.2}"              # 52.0 and 51.96 tie at the printed precision
    assert rows[2][knn] == "\\textbf{52.0}$^{n=1}$"                 # one seed: the mean alone, marked n=1 of 3
    assert rows[2][lin] == "\\textbf{61.0 $\\pm$ 2.0}$^{n=2}$" and rows[0][lin] == "60.0 $\\pm$ 1.0"


def test_lower_is_better_columns_are_marked_and_never_bold():
    tex = table(_table(ROWS))
    header, rows = _split(tex)
    align, uniform = header.index("align $\\downarrow$"), header.index("uniform $\\downarrow$")
    assert [r[align] for r in rows] == ["0.300 $\\pm$ 0.010", "0.500 $\\pm$ 0.020", "0.200 $\\pm$ 0.010"]
    assert rows[1][uniform] == "$-$1.500 $\\pm$ 0.100" and rows[0][uniform] == "--"   # a minus sign; missing: --
    assert "\\textbf" not in " ".join(r[align] + r[uniform] for r in rows)
    assert "lower is better, not ranked" in tex


def test_a_column_with_one_value_has_no_best():
    header, rows = _split(table(_table([_row("a", "0", **{KNN: (50.0, np.nan, 1), LIN: (60.0, np.nan, 1)}),
                                        _row("b", "0", **{KNN: (40.0, np.nan, 1)})])))
    assert rows[0][header.index("linear")] == "60.0" and rows[0][header.index("kNN@20")] == "\\textbf{50.0}"


def test_escaping_and_the_distillation_arrow():
    _, rows = _split(table(_table(ROWS)))
    assert rows[1][0] == r"feature\_distillation {[}aef201{]} $\leftarrow$ mae/vit\_mini\_p4"
    assert rows[2][0] == r"byol\_100\%"
    assert escape("a_b&c%d$#{}~^\\") == r"a\_b\&c\%d\$\#\{\}\textasciitilde{}\textasciicircum{}\textbackslash{}"
    assert escape("[x]") == "{[}x{]}"   # a row starting with [ is not read as the \\ optional argument


def test_seeds_per_row_in_the_caption_or_a_column():
    tex = table(_table(ROWS))
    assert "over 3 seeds per row" in tex and "seeds &" not in tex
    mixed = [dict(ROWS[0]), dict(ROWS[1], seeds="0")]
    mixed[1][f"{KNN}/n"] = 1
    header, rows = _split(table(_table(mixed)))
    assert header[2] == "seeds" and [r[2] for r in rows] == ["3", "1"]
    assert "1 to 3 seeds per row" in table(_table(mixed))


def _check_well_formed(tex: str) -> None:
    unescaped = re.sub(r"\\[{}]", "", tex)
    depth = 0
    for ch in unescaped:                                         # braces balanced, never closed before opened
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):   # every environment closed, in order
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert not stack
    blocks = tex.split(r"\begin{tabular}")[1:]
    assert blocks
    for block in blocks:
        spec = re.match(r"\{(\w+)\}", block).group(1)
        assert r"\toprule" in block and r"\midrule" in block and r"\bottomrule" in block
        header, rows = _split(block)
        assert len(header) == len(spec) and rows
        assert all(len(r) == len(spec) for r in rows), [r for r in rows if len(r) != len(spec)]
        # an unescaped special character in a cell would break the table or the page
        cells = " ".join(" ".join(r) for r in rows)
        assert not re.search(r"(?<!\\)[_%#&]", cells)


@pytest.mark.parametrize("csv", REFERENCE, ids=lambda p: p.parent.name)
def test_the_document_of_every_committed_table_is_well_formed(csv):
    _check_well_formed(document(tables_from_csv(csv), csv.parent.name))


def test_write_puts_the_tex_beside_the_other_formats(tmp_path):
    paths = write([_table(ROWS)], tmp_path, "leaderboard", title="t_1")
    tex = tmp_path / "leaderboard.tex"
    assert tex in paths and {p.suffix for p in paths} >= {".md", ".csv", ".html", ".tex"}
    _check_well_formed(tex.read_text())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (Debian: texlive-latex-recommended)")
@pytest.mark.parametrize("source", ["handmade", *REFERENCE], ids=lambda p: getattr(getattr(p, "parent", None), "name", p))
def test_pdflatex_compiles_it(tmp_path, source):
    tables = [_table(ROWS)] if source == "handmade" else tables_from_csv(source)
    (tmp_path / "t.tex").write_text(document(tables, "test"))
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "t.pdf").exists(), r.stdout[-2000:]
    assert "Overfull \\hbox" not in (tmp_path / "t.log").read_text(errors="replace")   # the table fits the page
