"""Plots that tell the truth: bars from zero with their values, nothing drawn (or warned) for what a table lacks."""

import warnings
from pathlib import Path

import numpy as np

from harness.report.leaderboard import build
from harness.report.plots import plot
from harness.report.render import tables_from_csv

ROOT = Path(__file__).resolve().parent.parent


def test_bars_start_at_zero_and_carry_their_values(tmp_path):
    tables = tables_from_csv(ROOT / "results/reference/mim_cifar10_cpu/leaderboard.csv")
    figs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = plot(tables, tmp_path, "board", on_figure=figs.append)
    assert paths and paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figs[0].sslbench_bar_axis
    assert ax.get_xlim()[0] == 0.0
    texts = {t.get_text() for t in ax.texts}
    frame = tables[0].frame
    for m in ("knn/top1@20", "linear/top1", "finetune/top1"):   # the MIM table has all three: each a bar per row
        assert {f"{v:.1f}" for v in frame[f"{m}/mean"]} <= texts, m
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"kNN@20", "linear", "fine-tune"} <= legend, legend


def test_a_table_without_fine_tuning_draws_no_fine_tune_bar(tmp_path):
    t = tables_from_csv(ROOT / "results/reference/mim_cifar10_cpu/leaderboard.csv")[0]
    for c in [c for c in t.frame.columns if c.startswith("finetune/")]:
        t.frame[c] = np.nan if c.endswith(("/mean", "/ci")) else 0
    figs = []
    plot([t], tmp_path, "board", on_figure=figs.append)
    ax = figs[0].sslbench_bar_axis
    assert "fine-tune" not in {x.get_text() for x in ax.get_legend().get_texts()}
    assert len(ax.patches) == 2 * len(t.frame)      # kNN and linear bars only


def test_a_table_without_the_metric_draws_nothing_and_warns_nothing(tmp_path):
    t = tables_from_csv(ROOT / "results/reference/mim_cifar10_cpu/leaderboard.csv")[0]
    for c in [c for c in t.frame.columns if c.startswith(("knn/", "linear/", "finetune/"))]:
        t.frame[c] = np.nan if c.endswith(("/mean", "/ci")) else 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot([t], tmp_path, "empty") == []


def test_runs_without_evaluation_make_no_leaderboard(tmp_path, monkeypatch):
    from harness.cli import main
    from harness.tracking.query import fetch_runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert main(["pretrain", "method=simclr", "data.name=synthetic", "budget.kind=steps", "budget.value=2",
                 "optim.batch_size=16", "train.progress=false", "backbone=cnn4", "--no-eval", "out_dir=runs"]) == 0
    assert build(fetch_runs(None)) == []
    assert main(["leaderboard", "--out", "board"]) == 2 and not (tmp_path / "board").exists()


def test_scatter_numbers_stay_inside_their_axes_and_the_off_scale_note_below_it(tmp_path):
    """The random-init point of the 960-s MIM table lies far off the trained encoders' scale: it is pinned
    to the border, and its number must not leave the axes (over the title); the note naming it sits under
    the axes, clear of every point."""
    tables = tables_from_csv(ROOT / "results/reference/mim_cifar10_960s/leaderboard.csv")   # 1920 s and 960 s
    figs = []
    plot(tables, tmp_path, "board", on_figure=figs.append)
    assert len(figs) == len(tables) == 2
    for fig, table in zip(figs, tables):
        fig.canvas.draw()
        ax = next(a for a in fig.axes if a.get_title().startswith("alignment"))
        box = ax.get_window_extent()
        numbers = [t for t in ax.texts if t.get_text().isdigit()]
        assert len(numbers) == len(table.frame)
        for t in numbers:
            e = t.get_window_extent()
            assert box.x0 - 1 <= e.x0 and e.x1 <= box.x1 + 1 and box.y0 - 1 <= e.y0 and e.y1 <= box.y1 + 1, t.get_text()
        note = next(t for t in ax.texts if t.get_text().startswith("off scale"))
        assert "random init" in note.get_text() and note.get_window_extent().y1 < box.y0
