"""The paper table: booktabs LaTeX with mean ± CI, the best per column in bold, names escaped."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.report.latex import document, escape, table
from harness.report.leaderboard import Table, columns

ROOT = Path(__file__).resolve().parent.parent


def _table() -> Table:
    rows = []
    for method, knn, half, au in (("simclr", 50.04, 0.5, 0.30), ("feature_distillation [aef201] <- mae/vit_mini_p4", 52.0, 1.2, 0.50),
                                  ("byol_100%", 52.0, np.nan, 0.20)):
        r = {"method": method, "backbone": "cnn4", "seeds": "0,1,2" if np.isfinite(half) else "0", "config": "x"}
        for c in columns():
            r[f"{c.metric}/mean"], r[f"{c.metric}/ci"], r[f"{c.metric}/n"] = np.nan, np.nan, 0
        r["knn/top1@20/mean"], r["knn/top1@20/ci"], r["knn/top1@20/n"] = knn, half, 3 if np.isfinite(half) else 1
        r["align/mean"], r["align/ci"], r["align/n"] = au, 0.01, 3
        rows.append(r)
    return Table("cifar10", "seconds=240.0", "27b7604e", pd.DataFrame(rows))


def _body_rows(tex: str) -> list[list[str]]:
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
    return [ln.rstrip(" \\").split(" & ") for ln in body.strip().splitlines()]


def test_cells_bold_escaping_and_structure():
    tex = table(_table())
    header = tex.split(r"\toprule", 1)[1].split(r"\midrule", 1)[0].strip().rstrip(" \\").split(" & ")
    rows = _body_rows(tex)
    assert all(len(r) == len(header) for r in rows) and len(rows) == 3
    knn, align = header.index("kNN@20"), next(i for i, h in enumerate(header) if h.startswith("align"))
    assert rows[0][knn] == "50.0 $\\pm$ 0.5"                                 # not the best: plain, mean ± CI
    assert rows[1][knn] == "\\textbf{52.0 $\\pm$ 1.2}" and rows[2][knn] == "\\textbf{52.0}"   # a tie: both bold; n=1: mean only
    assert rows[2][align].startswith("\\textbf{0.2")                        # lower is better for alignment
    assert "$\\downarrow$" in header[align]
    assert rows[1][0] == r"feature\_distillation [aef201] \textless{}- mae/vit\_mini\_p4" and rows[2][0] == r"byol\_100\%"
    assert "1--3 seed(s)" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert escape("a_b&c%d$#{}") == r"a\_b\&c\%d\$\#\{\}"


def test_the_document_is_balanced_for_a_committed_table():
    from harness.report.render import tables_from_csv

    tex = document(tables_from_csv(ROOT / "results/reference/mim_cifar10_cpu/leaderboard.csv"), "mim")
    unescaped = re.sub(r"\\[{}]", "", tex)
    assert unescaped.count("{") == unescaped.count("}")
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):   # every environment closed in order
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert not stack
    for block in tex.split(r"\begin{tabular}")[1:]:
        spec = re.match(r"\{(\w+)\}", block).group(1)
        header = block.split(r"\toprule", 1)[1].split(r"\midrule", 1)[0]
        assert header.count(" & ") + 1 == len(spec)
        assert all(len(r) == len(spec) for r in _body_rows(block))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (Debian: texlive-latex-recommended)")
def test_pdflatex_compiles_it(tmp_path):
    (tmp_path / "t.tex").write_text(document([_table()], "test"))
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "t.pdf").exists(), r.stdout[-2000:]
