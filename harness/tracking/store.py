"""The MLflow store: where it is, a client for it, and its experiments.

A local SQLite store is created (or its schema checked) once per process, under a file lock
beside the database, before any run uses it: N processes started together on a new store wait
for the first to create it instead of racing MLflow's schema migrations. A store left
half-created by a process killed during that creation holds no run, so it is recreated (and
said so); a damaged store that holds runs is an error that says how to repair it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from harness.core.errors import SSLBenchError

DEFAULT_DIR = Path("results")


SQLITE_NAME = "mlflow.db"


ARTIFACT_DIR = "mlartifacts"


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # a server that is gone is said within ~15 s (MLflow's default retries with backoff wait ~4 min per call)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    import logging

    import mlflow

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")


def tracking_uri(configured: str | None = None) -> str:
    """The store URI: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``results/mlflow.db``."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(DEFAULT_DIR / SQLITE_NAME).resolve()}"
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in SCHEMES:
        raise SSLBenchError(f"tracking URI '{uri}' has an unknown scheme; use sqlite:///PATH.db (a local store), "
                            "http(s)://HOST:PORT (a team server) or another MLflow backend "
                            f"({', '.join(SCHEMES)})")
    return uri


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def artifact_root(uri: str) -> str | None:
    """For a local SQLite store, artifacts go beside the database."""
    db = sqlite_path(uri)
    return (db.parent / ARTIFACT_DIR).resolve().as_uri() if db is not None else None


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


_READY: set[str] = set()


def client(uri: str | None = None):
    """An MlflowClient for the store (created or checked once per process, see the module docstring)."""
    mlflow = _mlflow()
    uri = tracking_uri(uri)
    if uri not in _READY:
        check_reachable(uri)
        prepare_store(uri)
        _READY.add(uri)
    return mlflow.tracking.MlflowClient(tracking_uri=uri), uri


@contextmanager
def file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (released by the kernel if the holder is killed)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _runs_in(db: Path) -> int | None:
    """How many runs a SQLite store holds (None: it has no runs table, e.g. half-created)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return None


def _touch_schema(uri: str) -> None:
    """Make MLflow create the schema of a new store, or check an existing one's."""
    _mlflow().tracking.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def prepare_store(uri: str) -> None:
    db = sqlite_path(uri)
    if db is None:
        try:
            _touch_schema(uri)
        except Exception as e:
            raise SSLBenchError(f"the tracking store {uri} cannot be used ({_first_line(e)})") from None
        return
    folder = db.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SSLBenchError(f"cannot create the tracking store's folder {folder} ({e.strerror}); "
                            "pass tracking.uri=sqlite:///WRITABLE/PATH.db") from None
    if not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise SSLBenchError(f"the tracking store {db} is not writable (read-only folder or file); "
                            "pass tracking.uri=sqlite:///WRITABLE/PATH.db")
    with file_lock(folder / f".{db.name}.lock"):
        try:
            _touch_schema(uri)
            return
        except Exception as e:
            error = e
        runs = _runs_in(db) if db.exists() else None
        if runs:
            raise SSLBenchError(f"the tracking store {db} holds {runs} runs but MLflow cannot open it "
                                f"({_first_line(error)}); back it up, then run 'mlflow db upgrade {uri}'") from None
        # no run in it: created by a process that was killed before the schema was complete
        print(f"sslbench: the tracking store {db} was left half-created ({_first_line(error)}); "
              "it holds no run: recreating it", file=sys.stderr)
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        try:
            _touch_schema(uri)
        except Exception as e:
            raise SSLBenchError(f"cannot create the tracking store {db} ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


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
