"""Reading runs back from the store, for leaderboards and comparisons."""

from __future__ import annotations

import os
import socket

import pandas as pd

from harness.tracking.keys import from_mlflow_key, to_mlflow_key
from harness.tracking.runs import KIND_TAG
from harness.tracking.store import client


def fetch_runs(experiments: list[str] | None = None, uri: str | None = None, status: str = "FINISHED",
               file_runs: bool = False):
    """All runs of the given experiments (all when None) as a pandas DataFrame:
    one row per run; columns ``params.*``, ``metrics.*``, ``tags.*``, plus run_id, experiment, status.
    Runs that hold only files (tag ``sslbench.kind``, e.g. a leaderboard export's) are no results and
    are left out (so never a table row, a comparison or a RUNNING count) unless ``file_runs``."""
    cl, uri = client(uri)
    exps = cl.search_experiments()
    if experiments:
        exps = [e for e in exps if e.name in experiments]
    rows = []
    for e in exps:
        page_token = None
        while True:
            res = cl.search_runs([e.experiment_id], max_results=1000, page_token=page_token,
                                 filter_string=f"attributes.status = '{status}'" if status else "")
            for r in res:
                if not file_runs and KIND_TAG in r.data.tags:
                    continue
                row = {"run_id": r.info.run_id, "experiment": e.name, "status": r.info.status,
                       "run_name": r.info.run_name, "start_time": r.info.start_time}
                row.update({f"params.{k}": v for k, v in r.data.params.items()})
                row.update({f"metrics.{from_mlflow_key(k)}": v for k, v in r.data.metrics.items()})
                row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
                rows.append(row)
            page_token = res.token
            if not page_token:
                break
    return pd.DataFrame(rows)


def metric_history(run_id: str, key: str, uri: str | None = None) -> list[tuple[int, float]]:
    """Every (step, value) logged for ``key``, in the order MLflow returns them."""
    cl, _ = client(uri)
    return [(m.step, m.value) for m in cl.get_metric_history(run_id, to_mlflow_key(key))]


def artifact_names(run_id: str, uri: str | None = None, path: str | None = None) -> list[str]:
    """The artifact paths of a run (under ``path``, not recursive)."""
    cl, _ = client(uri)
    return sorted(f.path for f in cl.list_artifacts(run_id, path))


def download_artifact(run_id: str, path: str, dst: str, uri: str | None = None) -> str:
    """Copy one artifact of a run into the folder ``dst``; returns the local path."""
    cl, _ = client(uri)
    return cl.download_artifacts(run_id, path, dst)


def running_runs(experiments: list[str] | None = None, uri: str | None = None) -> tuple[int, int]:
    """(runs recorded as RUNNING, of which stale): a RUNNING run whose recording process, on this host,
    is gone was killed (SIGKILL leaves no chance to end it); leaderboards read FINISHED runs only."""
    runs = fetch_runs(experiments, uri=uri, status="RUNNING")
    if runs.empty:
        return 0, 0
    host = socket.gethostname()
    stale = 0
    for _, r in runs.iterrows():
        pid, where = r.get("tags.sslbench.pid"), r.get("tags.sslbench.host")
        if isinstance(pid, str) and pid.isdigit() and where == host and not _alive(int(pid)):
            stale += 1
    return len(runs), stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def checkpoint_of(ref: str, seed: int, uri: str | None = None) -> str | None:
    """The checkpoint a run reference names, or None when ``ref`` is not a run reference:

    * an MLflow run id (32 hex digits): that run's ``checkpoint`` tag;
    * ``EXPERIMENT/METHOD``: the newest FINISHED run of METHOD in EXPERIMENT with the same ``seed``.

    A reference that names no finished run with a checkpoint raises ``ConfigError`` saying what to run."""
    from harness.core.errors import ConfigError

    ref = ref.strip()
    is_id = len(ref) == 32 and all(c in "0123456789abcdef" for c in ref)
    if not is_id and ref.count("/") != 1:
        return None
    if is_id:
        cl, _ = client(uri)
        try:
            run = cl.get_run(ref)
        except Exception:  # noqa: BLE001 - MLflow raises its own exception types
            raise ConfigError(f"no run {ref} in the store {uri or 'results/mlflow.db'}; pass a checkpoint path "
                              f"or a run id from `sslbench leaderboard`") from None
        path = run.data.tags.get("checkpoint")
        if run.info.status != "FINISHED":
            raise ConfigError(f"run {ref} is {run.info.status}, not FINISHED; finish it (sslbench run ... --resume) "
                              f"or name a finished run")
        if not path:
            raise ConfigError(f"run {ref} records no checkpoint (it predates the checkpoint tag); pass its "
                              f"checkpoint.pt path instead")
        return path
    experiment, method = ref.split("/")
    runs = fetch_runs([experiment], uri=uri)
    if not runs.empty:
        runs = runs[(runs.get("tags.method") == method) & (runs.get("tags.seed") == str(seed))]
        if "tags.checkpoint" in runs:
            runs = runs[runs["tags.checkpoint"].notna()]
        else:
            runs = runs.iloc[0:0]
    if runs.empty:
        raise ConfigError(f"no finished {method} run with seed {seed} and a recorded checkpoint in experiment "
                          f"'{experiment}'; train it first (sslbench run {experiment} --methods {method} --seeds {seed}), "
                          f"or pass its checkpoint.pt path (runs recorded before the checkpoint tag have none)")
    return str(runs.sort_values("start_time").iloc[-1]["tags.checkpoint"])
