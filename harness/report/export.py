"""``sslbench leaderboard``: tables from the store, printed and written under ``out/<experiment>/``."""

from __future__ import annotations

import sys
from pathlib import Path

from evals.protocols import HEADLINE
from harness.core.errors import SSLBenchError
from harness.core.schema import BudgetConfig
from harness.report.compare import runs_frame
from harness.report.leaderboard import Table, build, current_runs, provenance
from harness.report.plots import plot, plot_budget_curves
from harness.report.render import plain, tables_from_csv, write
from harness.tracking.query import fetch_runs, running_runs
from harness.tracking.runs import LEADERBOARD_KIND, log_files_run
from harness.tracking.store import tracking_uri


def export_leaderboard(experiment: str | None, uri: str | None, out: str | Path, dataset: str | None = None,
                       backbone: str | None = None, budget: str | None = None, sort: str = HEADLINE,
                       command: str = "") -> tuple[list[Table], list[Path]]:
    """Build the tables of ``experiment`` (all experiments when None), print them, and write
    Markdown/CSV/HTML/PNG plus ``runs.csv`` (the per-run rows the tables show, for ``compare``)."""
    runs = fetch_runs([experiment] if experiment else None, uri=uri)
    budget = BudgetConfig.parse(budget).text if budget else None
    tables = build(runs, dataset=dataset, backbone=backbone, budget=budget, sort=sort)
    if not tables:
        where = f"experiment '{experiment}'" if experiment else "the store"
        raise SSLBenchError(f"no finished, evaluated runs in {where} ({tracking_uri(uri)}); run 'sslbench run' first "
                            "(runs trained with --no-eval are scored by 'sslbench eval CHECKPOINT')")
    for t in tables:
        print()
        print(plain(t))
    running, stale = running_runs([experiment] if experiment else None, uri=uri)
    if running:
        print(f"\n{running} run(s) recorded as RUNNING are not in the tables" +
              (f" ({stale} stale: their process on this host is gone, e.g. killed; resume them with --resume)"
               if stale else ""))
    out_dir = Path(out) / (experiment or "all")
    runs = current_runs(runs, tables)   # provenance and runs.csv: the records the tables show
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = write(tables, out_dir, "leaderboard", command=command, title=experiment or "all experiments",
                      meta=provenance(runs))
        runs_frame(runs).to_csv(out_dir / "runs.csv", index=False)
    except OSError as e:
        raise SSLBenchError(f"cannot write the leaderboard under {out_dir} ({e.strerror or e}); choose another --out") from None
    paths.append(out_dir / "runs.csv")
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    log_export(experiment, uri, paths, command, {"dataset": dataset, "backbone": backbone, "budget": budget,
                                                  "sort": sort}, len(runs))
    return tables, paths


def log_export(experiment: str | None, uri: str | None, paths: list[Path], command: str,
               filters: dict[str, str | None], n_runs: int) -> str | None:
    """The written files, logged to the store as artifacts of a run named ``leaderboard`` (tag
    ``sslbench.kind=leaderboard``; one per export) in ``experiment`` (``all`` for the tables of every
    experiment, as their folder), so the MLflow UI shows them; no table, comparison or RUNNING count
    reads such a run. Best effort: the files are written either way, a failure is one warning line."""
    tags = {"sslbench.leaderboard.runs": str(n_runs), **({"command": command} if command else {}),
            **{f"sslbench.leaderboard.{k}": str(v) for k, v in filters.items() if v}}
    name = experiment or "all"
    run_id, failed = log_files_run(name, LEADERBOARD_KIND, [p for p in paths if p.is_file()], uri, tags)
    if failed:
        what = "; ".join(f"{k}: {v}" for k, v in failed.items())
        print(f"sslbench: warning: the leaderboard files were written but not all logged to the tracking store "
              f"({what}); they are intact under {paths[0].parent}", file=sys.stderr)
    else:
        print(f"logged to the tracking store: experiment '{name}', run '{LEADERBOARD_KIND}' ({run_id})")
    return run_id


def replot(csv: str | Path) -> list[Path]:
    """Redraw the PNGs of a written leaderboard from its ``leaderboard.csv`` (the same numbers; no store
    needed), beside it."""
    csv = Path(csv)
    if not csv.is_file():
        raise SSLBenchError(f"{csv}: no such file; give the leaderboard.csv that 'sslbench leaderboard' wrote")
    tables = tables_from_csv(csv)
    paths = plot(tables, csv.parent, csv.stem) + plot_budget_curves(tables, csv.parent, csv.stem)
    print("written: " + ", ".join(str(p) for p in paths))
    return paths
