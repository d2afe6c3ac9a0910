"""Leaderboard plots (PNG): the per-table bar chart and alignment/uniformity scatter, and
accuracy-vs-budget curves when a dataset was measured at several budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evals.protocols import HEADLINE, HEADLINE_METRICS
from harness.core.errors import SSLBenchError
from harness.core.schema import BudgetConfig
from harness.method.registry import RANDOM_INIT
from harness.report.leaderboard import Table, columns


def _budget_value(budget: str) -> tuple[str, float] | None:
    try:
        b = BudgetConfig.parse(budget)
    except SSLBenchError:   # "any": the random-init rows' budget
        return None
    return b.kind, float(b.value)


def plot_budget_curves(tables: list[Table], out: Path, stem: str, metric: str = HEADLINE) -> list[Path]:
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

    header = next((c.header for c in columns() if c.metric == metric), metric)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), squeeze=False)
    for ax, ((ds, proto, kind), items) in zip(axes[0], sorted(groups.items())):
        lines: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        seeds: dict[tuple[str, str], set[str]] = {}
        for value, t in items:
            for _, r in t.frame.iterrows():
                if r[f"{metric}/n"] > 0:
                    lines.setdefault((r["method"], r["backbone"]), []).append((value, r[f"{metric}/mean"], r[f"{metric}/ci"]))
                    seeds.setdefault((r["method"], r["backbone"]), set()).add(str(r["seeds"]))
        for (method, bb), pts in sorted(lines.items()):
            # a curve compares budgets at the same seeds; when they differ the legend says so
            same = len(seeds[(method, bb)]) == 1
            tail = f"seeds {next(iter(seeds[(method, bb)]))}" if same else "seeds differ across budgets"
            x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
            if method == RANDOM_INIT:
                ax.axhline(np.nanmean(y), linestyle="--", color="grey", linewidth=1)
                ax.annotate(f"random init ({bb})", (1.0, np.nanmean(y)), xycoords=("axes fraction", "data"),
                            xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8, color="grey")
                continue
            ax.errorbar(x, y, yerr=np.where(np.isfinite(e), e, 0.0), marker="o", capsize=3,
                        label=f"{method} ({bb}; {tail})", linestyle="-" if same else ":")
        budgets = sorted({v for v, _ in items})
        ax.set_xscale("log")
        ax.set_xticks(budgets, [f"{v:g}" for v in budgets])   # the budgets measured, as numbers
        ax.minorticks_off()
        ax.set_xlabel(f"budget ({kind}, log scale)")
        ax.set_ylabel(f"{header} top-1 (%)")
        ax.set_ylim(0, 100)                                    # accuracy from zero: distances read true
        ax.set_title(f"{ds}, protocol {proto}: accuracy vs budget")
        if ax.get_legend_handles_labels()[0]:   # only random-init floors: nothing to name
            ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / f"{stem}-budget.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def _place_labels(ax, points: list[tuple[int, float, float]]) -> None:
    """Number each scatter point, each label at whichever of a few offsets lies farthest from the
    other points and the labels placed so far (greedy, in screen coordinates), inside the axes where one
    fits (a point pinned to the border would otherwise put its number over the title or the tick labels)."""
    offsets = [(4, 3), (4, -10), (-14, 3), (-14, -10), (4, 11), (-14, 11), (10, -3), (-20, -3)]
    fig_dpi = ax.figure.dpi / 72.0
    screen = [ax.transData.transform((u, a)) for _, u, a in points]
    box = ax.bbox
    taken: list[tuple[float, float]] = []
    def centre(o, sx, sy):     # the label's box is ~8 x 7 points from its anchor at offset o
        return sx + (o[0] + 4) * fig_dpi, sy + (o[1] + 3) * fig_dpi

    def clearance(o, sx, sy):
        x0, y0 = sx + o[0] * fig_dpi, sy + o[1] * fig_dpi
        inside = box.x0 <= x0 and x0 + 8 * fig_dpi <= box.x1 and box.y0 <= y0 and y0 + 7 * fig_dpi <= box.y1
        cx, cy = centre(o, sx, sy)
        others = [q for q in screen if abs(q[0] - sx) + abs(q[1] - sy) > 1e-6] + taken
        return inside, min((np.hypot(cx - qx, cy - qy) for qx, qy in others), default=np.inf)

    for (rank, u, a), (sx, sy) in zip(points, screen):
        best = max(offsets, key=lambda o, sx=sx, sy=sy: clearance(o, sx, sy))
        taken.append(centre(best, sx, sy))
        ax.annotate(str(rank), (u, a), textcoords="offset points", xytext=best, fontsize=7)


def _label(r) -> str:
    return f"{'random init' if r['method'] == RANDOM_INIT else r['method']} ({r['backbone']})"


# the bars: the headline pair, and fine-tuning where a table has it (the MIM suites' headline protocol); a
# metric no row of a table measured draws no bar there
PLOT_METRICS = (*HEADLINE_METRICS, "finetune/top1")


def plot(tables: list[Table], out: Path, stem: str, metrics: tuple[str, ...] = PLOT_METRICS,
         on_figure=None) -> list[Path]:
    """One PNG per table: horizontal bars of ``metrics`` where measured (mean, 95% CI whiskers), one row per
    (method, backbone) sorted by the first metric, random-init rows hatched; beside it the
    alignment/uniformity scatter, each point numbered as its bar row and named in a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = {c.metric: c.header for c in columns()}
    paths = []
    tables = [t for t in tables if any(f"{m}/n" in t.frame and t.frame[f"{m}/n"].max() > 0 for m in metrics)]
    for i, t in enumerate(tables):    # a table without any headline metric has no bars to draw: no PNG
        shown = [m for m in metrics if f"{m}/n" in t.frame and t.frame[f"{m}/n"].max() > 0]
        f = t.frame.sort_values(f"{shown[0]}/mean" if shown else "method", ascending=True,
                                na_position="first").reset_index(drop=True)
        n = len(f)
        has_au = "align/n" in f and bool(((f["align/n"] > 0) & np.isfinite(f["align/mean"].astype(float))
                                          & np.isfinite(f["uniform/mean"].astype(float))).any())
        fig, axes = plt.subplots(1, 2 if has_au else 1, figsize=(15 if has_au else 8, max(3.5, 1.2 + 0.32 * n)),
                                 squeeze=False, gridspec_kw={"width_ratios": [1.15, 1]} if has_au else None)
        ax = axes[0][0]
        y = np.arange(n)
        height = 0.8 / max(1, len(shown))
        rand = (f["method"] == RANDOM_INIT).to_numpy()
        for j, m in enumerate(shown):
            mean = f[f"{m}/mean"].to_numpy(float)
            err = f[f"{m}/ci"].to_numpy(float)
            off = (j - (len(shown) - 1) / 2) * height
            bars = ax.barh(y + off, mean, height=height, color=f"C{j}")
            ok = np.isfinite(err) & np.isfinite(mean)   # no whisker for single-seed cells (no interval)
            if ok.any():
                ax.errorbar(mean[ok], (y + off)[ok], xerr=err[ok], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
            for b, r, v in zip(bars, rand, mean):
                if r:   # the floor: random-init rows hatched, in the metric's colour
                    b.set_facecolor("white")
                    b.set_edgecolor(f"C{j}")
                    b.set_hatch("///")
                if np.isfinite(v):   # the value on its bar (inside, left of the whisker)
                    ax.text(b.get_x() + 1.0, b.get_y() + b.get_height() / 2, f"{v:.1f}", va="center", ha="left",
                            fontsize=max(5.5, min(8.0, 60 * height / max(1, n) ** 0.5)),
                            color="black" if r else "white", fontweight="bold", clip_on=True,
                            bbox=dict(facecolor="white", edgecolor="none", pad=0.5) if r else None)
        labels = [f"{n - k}. {_label(r)}" for k, (_, r) in enumerate(f.iterrows())]   # rank 1 = best, at the top
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_ylim(-0.6, n - 0.4)
        lo = np.nanmin([f[f"{m}/mean"].min() for m in shown]) if shown else np.nan
        hi = np.nanmax([(f[f"{m}/mean"] + f[f"{m}/ci"].fillna(0)).max() for m in shown]) if shown else np.nan
        if np.isfinite(lo) and np.isfinite(hi):
            ax.set_xlim(0.0, min(100.0, hi + 3))   # bars start at zero: lengths compare honestly
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("top-1 accuracy (%), mean over seeds with 95% CI")
        n_max = int(max((f[f"{m}/n"].max() for m in shown), default=0))
        ax.set_title(f"{t.dataset}, budget {t.budget}" + (f" (n <= {n_max} seeds)" if n_max > 1 else " (1 seed: no CI)"),
                     fontsize=10)
        handles = [Patch(color=f"C{j}", label=names.get(m, m)) for j, m in enumerate(shown)]
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="///", label="random init (floor)"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=3.6,
                  ncol=len(handles), fontsize=8, frameon=False)   # below the axis label (in points): never over a bar
        if has_au:
            ax2 = axes[0][1]
            markers = "osD^vP*Xh<>"
            pts = [(n - k, r) for k, (_, r) in enumerate(f.iterrows())
                   if r["align/n"] > 0 and np.isfinite(r["align/mean"]) and np.isfinite(r["uniform/mean"])]
            # axes fit the trained encoders; a random-init point far outside is pinned to the border and noted
            core = [r for _, r in pts if r["method"] != RANDOM_INIT] or [r for _, r in pts]
            (x0, x1), (y0, y1) = ((min(r[c] for r in core), max(r[c] for r in core)) for c in ("uniform/mean", "align/mean"))
            px, py = 0.12 * (x1 - x0 or 1.0), 0.12 * (y1 - y0 or 1.0)
            xlim, ylim = (x0 - px, x1 + px), (y0 - py, y1 + py)
            ax2.set_xlim(*xlim)
            ax2.set_ylim(*ylim)
            off_scale, placed = [], []
            for rank, r in pts:
                u, a = r["uniform/mean"], r["align/mean"]
                inside = xlim[0] <= u <= xlim[1] and ylim[0] <= a <= ylim[1]
                if not inside:
                    off_scale.append(f"{rank}. {_label(r)} at ({u:.2f}, {a:.3f})")
                    u, a = min(max(u, xlim[0]), xlim[1]), min(max(a, ylim[0]), ylim[1])
                k = n - rank
                ax2.scatter(u, a, s=45, marker=markers[k % len(markers)], facecolors="none" if not inside else None,
                            color="0.45" if r["method"] == RANDOM_INIT else f"C{k % 10}", label=f"{rank}. {_label(r)}",
                            clip_on=False)
                placed.append((rank, u, a))
            _place_labels(ax2, placed)
            if off_scale:
                # below the axis label, one line per point: never over a point, never past the axes' width
                ax2.annotate("off scale (pinned to the border): " + "\n".join(off_scale), (0.0, 0.0),
                             xycoords="axes fraction", xytext=(0, -38), textcoords="offset points", fontsize=7,
                             va="top", annotation_clip=False)
            handles, leg = ax2.get_legend_handles_labels()
            order = sorted(range(len(leg)), key=lambda q: int(leg[q].split(".")[0]))
            ax2.legend([handles[q] for q in order], [leg[q] for q in order], fontsize=7, loc="upper left",
                       bbox_to_anchor=(1.01, 1.0), frameon=False, ncol=1 + len(leg) // 30)
            ax2.set_xlabel("uniformity (lower is better)")
            ax2.set_ylabel("alignment (lower is better)")
            ax2.grid(alpha=0.3)
            ax2.set_title("alignment vs uniformity (Wang & Isola, 2020); numbers = bar rank", fontsize=10)
        fig.tight_layout()
        fig.sslbench_bar_axis = ax   # the bar axis, for tests that read the drawn figure
        if on_figure:
            on_figure(fig)
        p = out / f"{stem}{f'-{i}' if len(tables) > 1 else ''}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
