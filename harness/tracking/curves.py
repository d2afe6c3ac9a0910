"""A run's training curves, read back from the store and drawn: ``loss_curve.png`` (train/loss vs
step, the learning rate on a second axis), logged as an artifact of the run at the end of training.

It lives in ``harness.tracking`` (it reads a run's metric history from the store) rather than in
``harness.report``: the run layer logs it, and ``harness.run`` and ``harness.report`` are independent
layers (``.importlinter``), so both can use a module here and neither could use one in the other.
Drawn with matplotlib's object API on the Agg canvas: no pyplot, no global backend switch, no GUI.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.tracking.query import metric_history

LOSS_CURVE = "loss_curve.png"


def _by_step(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    """One value per step (the last logged), in step order."""
    last = dict(points)
    steps = sorted(last)
    return steps, [last[s] for s in steps]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def draw_loss_curve(loss: list[tuple[int, float]], lr: list[tuple[int, float]], title: str, path: str | Path) -> Path:
    """Write ``path`` (PNG): train/loss vs step (a running mean over it when there are many points),
    the learning rate dashed on a second axis. Written atomically (a temp file, then renamed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps, values = _by_step(loss)
    handles = []
    if steps:
        many = len(steps) >= 40
        handles += ax.plot(steps, values, color="tab:blue", linewidth=1.0, alpha=0.45 if many else 1.0,
                           marker="" if len(steps) > 60 else "o", markersize=3, label="train/loss")
        if many:
            window = max(3, len(steps) // 25)
            handles += ax.plot(steps, _smooth(values, window), color="tab:blue", linewidth=2.0,
                               label=f"train/loss, running mean of {window} points")
    else:
        ax.text(0.5, 0.5, "no train/loss logged", transform=ax.transAxes, ha="center", va="center", color="grey")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("train/loss", color="tab:blue")
    ax.tick_params(axis="y", labelcolor="tab:blue")
    ax.grid(True, alpha=0.3)
    top = ax                                 # the legend goes on the axis drawn last, above every line
    lr_steps, lr_values = _by_step(lr)
    if lr_steps:
        ax2 = ax.twinx()
        handles += ax2.plot(lr_steps, lr_values, color="tab:orange", linestyle="--", linewidth=1.2,
                            label="learning rate")
        ax2.set_ylabel("learning rate", color="tab:orange")
        ax2.tick_params(axis="y", labelcolor="tab:orange")
        ax2.set_ylim(bottom=0)
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        top = ax2
    if handles:
        top.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def loss_curve(run_id: str, path: str | Path, title: str, uri: str | None = None) -> Path:
    """Draw run ``run_id``'s loss curve from the store (every step it logged, across resumes) into ``path``."""
    return draw_loss_curve(metric_history(run_id, "train/loss", uri), metric_history(run_id, "train/lr", uri),
                           title, path)
