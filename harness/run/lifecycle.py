"""A run's directory and record over its whole life: one owner at a time, clean after a kill,
and an MLflow record that always ends (FINISHED, FAILED or KILLED, with the reason).

* :class:`RunDir` owns ``out_dir/<experiment>/<run name>/`` through an exclusive ``flock`` on its
  ``.lock`` file (the kernel drops it when the owner dies, even by SIGKILL), records the owner's
  pid in it, and sweeps the partial ``checkpoint.pt.*.tmp`` files a killed save left behind.
* :func:`recorded` wraps the work of a tracked run: any exception ends the run FAILED with
  ``error``; Ctrl-C and SIGTERM (the CLI turns it into KeyboardInterrupt) end it KILLED.
  A SIGKILL leaves the run RUNNING; its ``sslbench.pid`` / ``sslbench.host`` tags make it
  recognisable as stale (:func:`harness.tracking.query.stale_runs`) and leaderboards read
  FINISHED runs only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from harness.core.errors import SSLBenchError, TrainingDiverged
from harness.tracking.runs import TrackedRun


class RunBusy(Exception):
    """Another process owns the run directory."""

    def __init__(self, path: Path, owner: str):
        super().__init__(f"{path} is owned by {owner}")
        self.path, self.owner = path, owner


def ensure_dir(path: Path, what: str = "out_dir", create: bool = False) -> Path:
    """Check that ``path`` is (or can be created as) a writable folder, one clear error otherwise;
    ``create`` makes it (with parents). Without ``create`` nothing is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SSLBenchError(f"{what} {path} exists and is not a folder; choose another {what}=...")
    probe = path
    while not probe.exists():              # the nearest existing ancestor decides whether it can be created
        probe = probe.parent
    if not probe.is_dir():
        raise SSLBenchError(f"{what} {path}: {probe} is not a folder; choose another {what}=...")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SSLBenchError(f"{what} {path} is not writable ({probe} is read-only); choose a writable {what}=...")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SSLBenchError(f"cannot create {what} {path} ({e.strerror}); choose a writable {what}=...") from None
    return path


class RunDir:
    """``with RunDir(path) as d:`` owns the folder until the block ends (raises :class:`RunBusy`)."""

    LOCK = ".lock"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def __enter__(self) -> "RunDir":
        ensure_dir(self.path, "run folder", create=True)
        fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                owner = (self.path / self.LOCK).read_text().strip() or "another process"
                raise RunBusy(self.path, owner) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        for tmp in self.path.glob("*.tmp"):      # partial files of a save that was killed
            tmp.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextmanager
def recorded(run: TrackedRun | None):
    """End ``run`` FAILED / KILLED with the reason if the block raises (then re-raise)."""
    try:
        yield run
    except KeyboardInterrupt:
        if run is not None:
            _end(run, "KILLED", "interrupted (Ctrl-C or SIGTERM)")
        raise
    except BaseException as e:
        if run is not None:
            reason = str(e) if isinstance(e, (SSLBenchError, TrainingDiverged)) else f"{type(e).__name__}: {e}"
            _end(run, "FAILED", reason)
        raise


def _end(run: TrackedRun, status: str, reason: str) -> None:
    """End the record with its reason; a store that cannot be reached then (the reason itself, often)
    leaves the record as it is and never hides the error that ended the run."""
    try:
        run.set_tags({"error": reason[:400]})
    except Exception:   # noqa: BLE001 - the store is gone: the original error is what the user must see
        pass
    try:
        run.end(status)
    except Exception:   # noqa: BLE001
        pass
