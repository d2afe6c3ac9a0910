"""Tracking: the only module that imports MLflow.

Store: ``tracking.uri`` from the config, else ``$MLFLOW_TRACKING_URI``, else an embedded
SQLite database ``results/mlflow.db`` with artifacts in ``results/mlartifacts`` (relative
to the working directory), never ``./mlruns``.

One experiment per suite; one run per (method, backbone, dataset, budget, seed).
Params = the resolved config flattened; tags = git commit, dirty flag, package versions,
device; metrics under stable names (``knn/top1@20``, ``linear/top1``, ``align``, ...);
artifacts = the resolved config and the evaluation report.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness.errors import SSLBenchError

DEFAULT_DIR = Path("results")
SQLITE_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import logging

    import mlflow

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def tracking_uri(configured: str | None = None) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / SQLITE_NAME).resolve()}"


def artifact_root(uri: str) -> str | None:
    """For a local SQLite store, artifacts go beside the database."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / ARTIFACT_DIR).resolve().as_uri()
    return None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status == 200:
                return
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise SSLBenchError(f"MLflow tracking server {uri} is unreachable ({reason}); start it "
                            "(e.g. 'sslbench ui') or unset MLFLOW_TRACKING_URI to use the local SQLite store") from None
    raise SSLBenchError(f"MLflow tracking server {uri} answered /health with an error; check the server")


def client(uri: str | None = None):
    mlflow = _mlflow()
    uri = tracking_uri(uri)
    check_reachable(uri)
    return mlflow.tracking.MlflowClient(tracking_uri=uri), uri


def experiment_id(cl, uri: str, name: str) -> str:
    exp = cl.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return cl.create_experiment(name, artifact_location=_exp_artifacts(uri, name))
    except Exception:  # created concurrently by another process
        exp = cl.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _exp_artifacts(uri: str, name: str) -> str | None:
    root = artifact_root(uri)
    return f"{root}/{name}" if root else None


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, str]:
    """The commit and dirty flag of the checkout, read ONCE per process: a process runs the code it
    imported at its start, so a suite that runs for an hour while someone commits keeps
    reporting the commit it started from."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"git.commit": "unknown", "git.dirty": "unknown"}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"git.commit": commit.stdout.strip(), "git.dirty": str(bool(dirty.stdout.strip())).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


def environment_tags(device: str) -> dict[str, str]:
    import torch

    from harness import __version__

    tags = {"sslbench.version": __version__, "torch.version": torch.__version__, "python.version": platform.python_version(),
            "device": device, "host.cpu_count": str(os.cpu_count())}
    try:
        import timm

        tags["timm.version"] = timm.__version__
    except ImportError:
        pass
    try:
        import faiss

        tags["faiss.version"] = getattr(faiss, "__version__", "unknown")
    except ImportError:
        tags["faiss.version"] = "not installed"
    if device.startswith("cuda"):
        tags["device.name"] = torch.cuda.get_device_name(0)
    else:
        tags["device.name"] = platform.processor() or platform.machine()
    tags.update(git_info())
    return tags


def to_mlflow_key(name: str) -> str:
    """MLflow keys may not contain '@' or '%': ``knn/top1@20`` is stored as ``knn/top1_k20``,
    ``linear@1%/top1`` as ``linear_1pct/top1``."""
    name = re.sub(r"@(\d+)$", r"_k\1", name)
    return re.sub(r"@([\d.]+)%", r"_\1pct", name)


def from_mlflow_key(key: str) -> str:
    key = re.sub(r"^(knn/top\d+)_k(\d+)$", r"\1@\2", key)
    return re.sub(r"^(\w+)_([\d.]+)pct/", r"\1@\2%/", key)


def _param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s[:6000]


class TrackedRun:
    """One MLflow run; use as a context manager so a crash marks it FAILED."""

    def __init__(self, experiment: str, run_name: str, uri: str | None = None, run_id: str | None = None,
                 params: dict[str, Any] | None = None, tags: dict[str, str] | None = None):
        self.client, self.uri = client(uri)
        self.experiment_name = experiment
        self.experiment_id = experiment_id(self.client, self.uri, experiment)
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            r = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags or {})
            self.run_id = r.info.run_id
        if params:
            self.log_params(params)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def conflicting_params(self, params: dict[str, Any]) -> list[str]:
        """Keys of ``params`` this run already holds with another value (MLflow params are immutable)."""
        existing = self.client.get_run(self.run_id).data.params
        return sorted(k for k, v in params.items() if k in existing and existing[k] != _param_value(v))

    def fork(self, run_name: str, params: dict[str, Any], extra_tags: dict[str, str]) -> "TrackedRun":
        """A new run in the same experiment carrying this run's tags, ``params`` and its ``pretrain/``
        metrics: a re-evaluation under other knobs is a new record, never an edit of the old one."""
        old = self.client.get_run(self.run_id).data
        tags = {k: v for k, v in old.tags.items() if not k.startswith("mlflow.")}
        new = TrackedRun(self.experiment_name, run_name, self.uri, params=params,
                         tags={**tags, **extra_tags, "evaluation_of": self.run_id})
        new.log_metrics({from_mlflow_key(k): v for k, v in old.metrics.items() if k.startswith("pretrain/")})
        return new

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(to_mlflow_key(k), float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_dict(self, obj: Any, name: str) -> None:
        self.client.log_dict(self.run_id, obj, name)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
        self.ended = status

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if getattr(self, "ended", None):
            return False
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            try:
                self.set_tags({"error": f"{exc_type.__name__}: {str(exc)[:400]}"})
            finally:
                self.end("FAILED")
        return False


def fetch_runs(experiments: list[str] | None = None, uri: str | None = None, status: str = "FINISHED"):
    """All runs of the given experiments (all when None) as a pandas DataFrame:
    one row per run; columns ``params.*``, ``metrics.*``, ``tags.*``, plus run_id, experiment, status."""
    import pandas as pd

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
    cl, _ = client(uri)
    return [(m.step, m.value) for m in cl.get_metric_history(run_id, to_mlflow_key(key))]


def start_ui(uri: str | None, host: str, port: int):
    """Start ``mlflow server`` (one worker) on host:port against the same store; returns the Popen."""
    uri = tracking_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
