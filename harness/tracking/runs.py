"""One MLflow run: params, tags, metrics and artifacts, and how it ends."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness.tracking.keys import from_mlflow_key, to_mlflow_key
from harness.tracking.store import client, experiment_id


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
        from mlflow.entities import Param  # mlflow is imported when first used (seconds), not by --help

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
