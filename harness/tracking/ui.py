"""The MLflow UI and the team tracking server: one ``mlflow server`` process against a store.

``sslbench ui`` is that server on 127.0.0.1 for one person; ``sslbench server`` is the same for a team:
any interface (``--host 0.0.0.0``), a database backend (SQLite by default; PostgreSQL or MySQL through
MLflow's own support, which needs the driver package, e.g. ``psycopg2-binary``) and an artifact root
the server stores uploads in (``--artifacts-destination``), so clients need no shared file system:
they set ``MLFLOW_TRACKING_URI=http://HOST:PORT`` (or ``tracking.uri=``) and everything goes through it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness.core.errors import SSLBenchError
from harness.tracking.store import artifact_root, client, tracking_uri


def start_ui(uri: str | None, host: str, port: int, artifacts: str | None = None, workers: int = 1):
    """Start ``mlflow server`` on host:port against the store; returns the Popen.

    Without ``artifacts`` a local SQLite store's artifacts stay beside it (``--default-artifact-root``, as
    the runs logged directly write them); with it the server proxies uploads into that root
    (``--artifacts-destination``), the way a team server works."""
    uri = tracking_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(int(workers))]
    root = artifact_root(uri)
    if artifacts:
        dest = artifacts if "://" in artifacts else Path(artifacts).expanduser().resolve().as_uri()
        cmd += ["--serve-artifacts", "--artifacts-destination", dest]
    elif root:
        cmd += ["--default-artifact-root", root]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def stop_ui(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL after 15 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)


def serve_ui(uri: str | None, port: int, start_timeout: float = 60.0, duration: float = 0.0) -> None:
    """Start the UI on 127.0.0.1:``port``, wait until ``/health`` answers, print its address, and serve
    until Ctrl-C (or for ``duration`` seconds); the server is stopped on every way out."""
    serve(uri, "127.0.0.1", port, start_timeout=start_timeout, duration=duration)


def serve(uri: str | None, host: str, port: int, artifacts: str | None = None, workers: int = 1,
          start_timeout: float = 60.0, duration: float = 0.0, label: str = "MLflow UI") -> None:
    """Start ``mlflow server`` on host:port, wait until ``/health`` answers, print its address (and, for a
    team server, the line clients set), and serve until Ctrl-C / SIGTERM (or for ``duration`` seconds)."""
    if not 1 <= port <= 65535:
        raise SSLBenchError(f"--port {port} is not a TCP port; use 1..65535 (e.g. 5000)")
    if workers < 1:
        raise SSLBenchError(f"--workers {workers} must be >= 1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:   # another server there would answer /health
        # as the server itself binds: a port in TIME_WAIT (a server just restarted) is free, a listener is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise SSLBenchError(f"port {port} on {host} is not free or not this machine's ({e.strerror}); "
                                "pass another --port or --host") from None
    uri = tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        raise SSLBenchError(f"{uri} is a server, not a database; give the server a database: "
                            "--backend-store-uri sqlite:///PATH.db or postgresql://USER:PASS@HOST/DB")
    client(uri)  # creates the store's schema (and checks the database) before the server opens it
    proc = start_ui(uri, host, port, artifacts, workers)
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}"
    health = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    try:
        deadline = time.time() + start_timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise SSLBenchError(f"the MLflow UI exited at start ({err[-1] if err else 'no message'}); is port {port} free?")
            try:
                with urllib.request.urlopen(health + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise SSLBenchError(f"the MLflow UI did not answer on {url} within {start_timeout:.0f}s")
            time.sleep(0.5)
        print(f"{label}: {url} (store {uri}); Ctrl-C to stop", flush=True)
        if label != "MLflow UI":
            print(f"clients: export MLFLOW_TRACKING_URI={url}   (or tracking.uri={url} on any sslbench command)",
                  flush=True)
        try:
            if duration:
                time.sleep(duration)
            else:
                proc.wait()
        except KeyboardInterrupt:
            pass
    finally:
        stop_ui(proc)
