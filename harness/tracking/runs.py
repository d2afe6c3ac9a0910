"""One MLflow run: params, tags, metrics and artifacts, and how it ends."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from harness.core.errors import SSLBenchError
from harness.core.identity import param_text
from harness.core.interrupts import protected
from harness.tracking.keys import from_mlflow_key, to_mlflow_key
from harness.tracking.store import client, experiment_id

KIND_TAG = "sslbench.kind"      # a run that holds files, not results (a leaderboard export): never a row nor RUNNING
LEADERBOARD_KIND = "leaderboard"
PARENT_TAG = "mlflow.parentRunId"   # MLflow's nesting: a child run (a search's trial) under its parent run


def one_line(e: BaseException) -> str:
    """An exception as one short line (the store's, the disk's or the network's)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f" ({e.filename})" if e.filename else "")
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}"[:240] if text else type(e).__name__


def recorded_params(uri: str | None, run_id: str) -> dict[str, str] | None:
    """The params of run ``run_id`` in the store, or None when the store has no such run."""
    cl, _ = client(uri)
    try:
        return dict(cl.get_run(run_id).data.params)
    except Exception:   # MlflowException: RESOURCE_DOES_NOT_EXIST
        return None


def conflicts(existing: dict[str, str], params: dict[str, Any]) -> list[str]:
    """Keys of ``params`` a run already holds with another value (MLflow params are immutable)."""
    return sorted(k for k, v in params.items() if k in existing and existing[k] != param_text(v))


def tag_run(uri: str | None, run_id: str, tags: dict[str, str]) -> None:
    """Add ``tags`` to a recorded run without reopening it (its status stays as it is)."""
    from mlflow.entities import RunTag

    cl, _ = client(uri)
    with protected():
        cl.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def owner_tags() -> dict[str, str]:
    """Which process is recording the run: a RUNNING run whose process is gone is stale (killed)."""
    return {"sslbench.pid": str(os.getpid()), "sslbench.host": socket.gethostname()}


class TrackedRun:
    """One MLflow run; use as a context manager so a crash marks it FAILED."""

    def __init__(self, experiment: str, run_name: str, uri: str | None = None, run_id: str | None = None,
                 params: dict[str, Any] | None = None, tags: dict[str, str] | None = None):
        self.client, self.uri = client(uri)
        self.experiment_name = experiment
        self.experiment_id = experiment_id(self.client, self.uri, experiment)
        if run_id and not self._exists(run_id):
            print(f"sslbench: run {run_id} (from run.json) is not in the store {self.uri}; starting a new record",
                  file=sys.stderr)
            run_id, tags = None, tags or {}
        with protected():
            if run_id:
                self.run_id = run_id
                self.client.update_run(run_id, status="RUNNING")
                self.set_tags(owner_tags())
            else:
                r = self.client.create_run(self.experiment_id, run_name=run_name, tags={**(tags or {}), **owner_tags()})
                self.run_id = r.info.run_id
        if params:
            self.log_params(params)

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:   # MlflowException: RESOURCE_DOES_NOT_EXIST
            return False

    def log_params(self, params: dict[str, Any]) -> None:
        with protected():
            from mlflow.entities import Param  # mlflow is imported when first used (seconds), not by --help

            existing = self.client.get_run(self.run_id).data.params
            items = [Param(k, param_text(v)) for k, v in params.items() if k not in existing]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100])

    def params(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.params)

    @classmethod
    def evaluation_of(cls, old_run_id: str, experiment: str, run_name: str, uri: str | None,
                      params: dict[str, Any], extra_tags: dict[str, str]) -> "TrackedRun":
        """A new run carrying the old run's tags, trained params and ``pretrain/`` metrics, with ``params``
        on top: a re-evaluation under other knobs is a new record (tag ``evaluation_of``), never an edit
        of the old one (whose status is left as it is)."""
        cl, _ = client(uri)
        old = cl.get_run(old_run_id).data
        tags = {k: v for k, v in old.tags.items() if not k.startswith(("mlflow.", "sslbench.pid", "sslbench.host"))}
        kept = {k: v for k, v in old.params.items() if not k.startswith(("eval.", "eval/"))}   # what was trained
        new = cls(experiment, run_name, uri, params={**kept, **params},
                  tags={**tags, **extra_tags, "evaluation_of": old_run_id})
        new.log_metrics({from_mlflow_key(k): v for k, v in old.metrics.items() if k.startswith("pretrain/")})
        return new

    def set_tags(self, tags: dict[str, str]) -> None:
        with protected():
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        with protected():
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            items = [Metric(to_mlflow_key(k), float(v), ts, step) for k, v in metrics.items()]
            for i in range(0, len(items), 500):
                self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_points(self, points: list[tuple[dict[str, float], int]], skip_logged: bool = False) -> int:
        """Many steps' metrics in as few requests as MLflow allows (1000 metrics per batch); returns how many
        points were sent.

        ``skip_logged``: first ask the store which (key, step) points it already holds and send only the
        others. Used when re-sending points after a failure: a request the server committed but whose answer
        was lost (the server stopped mid-reply, or a retry of a request that did arrive) must not log its
        points twice, so delivery is exactly once from the store's side."""
        with protected():
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            items = [Metric(to_mlflow_key(k), float(v), ts, step) for metrics, step in points for k, v in metrics.items()]
            if skip_logged and items:
                held = {(m.key, m.step) for key in {i.key for i in items}
                        for m in self.client.get_metric_history(self.run_id, key)}
                items = [i for i in items if (i.key, i.step) not in held]
            for i in range(0, len(items), 1000):
                self.client.log_batch(self.run_id, metrics=items[i : i + 1000])
            return len(items)

    def log_dict(self, obj: Any, name: str) -> None:
        with protected():
            self.client.log_dict(self.run_id, obj, name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with protected():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def try_log_artifacts(self, files: list[Path], failed: dict[str, str] | None = None) -> dict[str, str]:
        """Log ``files`` as artifacts, best effort: returns {file name: one-line reason} for those that
        failed (an unreachable server, a full disk; plus ``failed``, what the caller could not even
        produce) and records them in the tag ``sslbench.artifact_error``, never raises for them. The
        run's record and the local files are left as they were (a failed upload leaves no partial
        artifact: MLflow's local store writes through a temp file)."""
        failed = dict(failed or {})
        for path in files:
            try:
                self.log_artifact(path)
            except Exception as e:   # noqa: BLE001 - MLflow, HTTP and OS errors alike: reported, not raised
                failed[Path(path).name] = one_line(e)
        if failed:
            try:
                self.set_tags({"sslbench.artifact_error": "; ".join(f"{k}: {v}" for k, v in failed.items())[:500]})
            except Exception:        # noqa: BLE001 - the store is gone: ending the run says so
                pass
        return failed

    def end(self, status: str = "FINISHED") -> None:
        with protected():
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


class StoreGone(SSLBenchError):
    """The tracking store went away during training and is still gone at its end."""


class MetricBuffer:
    """Training's metric log, robust to the store going away mid-run (a server restarted, a network
    cut): a write that fails keeps its points, appended to ``path`` (JSON lines beside the checkpoint),
    says so once, and training goes on; a later write (not sooner than ``retry_s`` after a failure)
    sends everything kept first. :meth:`flush` at the end of training raises :class:`StoreGone` if the
    store is still unreachable: the checkpoint is written by then, and ``--resume`` re-logs the file
    (:func:`relog_unlogged`) before anything else, so every point arrives exactly once."""

    def __init__(self, run: "TrackedRun", path: Path, retry_s: float = 60.0):
        self.run, self.path, self.retry_s = run, Path(path), retry_s
        self.pending: list[tuple[dict[str, float], int]] = []
        self.failed_at: float | None = None
        self.reason = ""

    def __call__(self, metrics: dict[str, float], step: int = 0) -> None:
        self.pending.append((dict(metrics), int(step)))
        if self.failed_at is not None:
            self._spill([self.pending[-1]])
            if time.time() - self.failed_at < self.retry_s:
                return
        try:
            self._send()
        except Exception as e:   # noqa: BLE001 - MLflow, HTTP and OS errors alike: kept, said once
            if self.failed_at is None:
                self._spill(self.pending)
                print(f"sslbench: warning: the tracking store {self.run.uri} failed ({one_line(e)}); training goes "
                      f"on, its metrics are kept in {self.path} and sent when the store answers again",
                      file=sys.stderr, flush=True)
            self.failed_at, self.reason = time.time(), one_line(e)

    def _spill(self, points) -> None:
        with open(self.path, "a") as f:
            for metrics, step in points:
                f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _send(self) -> None:
        if self.pending:   # after a failure, some of these may have reached the store: those are not sent again
            self.run.log_points(self.pending, skip_logged=self.failed_at is not None)
        self.pending = []
        if self.failed_at is not None:
            self.path.unlink(missing_ok=True)
            print(f"sslbench: the tracking store {self.run.uri} answers again; the kept metrics were sent",
                  file=sys.stderr, flush=True)
        self.failed_at = None

    def flush(self, checkpoint: Path) -> None:
        try:
            self._send()
        except Exception as e:   # noqa: BLE001
            raise StoreGone(f"the tracking store {self.run.uri} is unreachable ({one_line(e)}); training finished and "
                            f"its checkpoint is intact ({checkpoint}), {len(self.pending)} metric points wait in "
                            f"{self.path}: when the store is back, rerun the same command with --resume to log "
                            "them and evaluate") from None


def relog_unlogged(run: "TrackedRun", path: Path) -> int:
    """Send the points an earlier attempt kept in ``path`` (see :class:`MetricBuffer`), then delete it."""
    path = Path(path)
    if not path.exists():
        return 0
    points = []
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
            points.append((dict(d["metrics"]), int(d["step"])))
        except (ValueError, KeyError, TypeError):
            continue   # a line cut by a kill: its step is logged again by the resumed trainer
    run.log_points(points, skip_logged=True)   # a point whose request arrived before the answer was lost: once
    path.unlink(missing_ok=True)
    return len(points)


def ended_killed(uri: str | None, run_id: str, why: str) -> bool:
    """End a record a killed process left RUNNING as KILLED (tag ``error``: ``why``); a record that already
    ended, or is gone, is left as it is. Best effort: returns whether it was ended."""
    try:
        cl, _ = client(uri)
        if cl.get_run(run_id).info.status != "RUNNING":
            return False
        with protected():
            from mlflow.entities import RunTag

            cl.log_batch(run_id, tags=[RunTag("error", why[:400])])
            cl.set_terminated(run_id, status="KILLED")
        return True
    except Exception:   # noqa: BLE001 - MlflowException (no such run), an unreachable store: nothing to end
        return False


def log_files_run(experiment: str, run_name: str, files: list[Path], uri: str | None = None,
                  tags: dict[str, str] | None = None, kind: str = LEADERBOARD_KIND) -> tuple[str | None, dict[str, str]]:
    """A run of ``experiment`` that holds only ``files`` (e.g. a leaderboard export), tagged
    ``sslbench.kind=KIND`` so that no table, comparison or RUNNING count ever reads it as a result.

    Returns (its run id or None, {file or 'store': one-line reason} for what could not be logged); it never
    raises for the store or the disk. The run ends FINISHED when every file was logged, FAILED (with
    ``error``) otherwise, KILLED on Ctrl-C / SIGTERM (re-raised), and is never left RUNNING by an error."""
    try:
        run = TrackedRun(experiment, run_name, uri, tags={**(tags or {}), KIND_TAG: kind})
    except Exception as e:   # noqa: BLE001 - an unreachable or unwritable store: said, not raised
        return None, {"store": one_line(e)}
    try:
        failed = run.try_log_artifacts(files)
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    status = "FAILED" if failed else "FINISHED"
    try:
        if failed:
            run.set_tags({"error": "; ".join(f"{k}: {v}" for k, v in failed.items())[:400]})
    except Exception:        # noqa: BLE001 - ending the run below says what the store does
        pass
    try:
        run.end(status)
    except Exception as e:   # noqa: BLE001
        failed = {**failed, "store": one_line(e)}
    return run.run_id, failed
