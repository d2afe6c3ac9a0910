"""The MLflow UI: a ``mlflow server`` process (one worker) against the same store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from harness.core.errors import SSLBenchError
from harness.tracking.store import artifact_root, client, tracking_uri


def start_ui(uri: str | None, host: str, port: int):
    """Start ``mlflow server`` (one worker) on host:port against the same store; returns the Popen."""
    uri = tracking_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    root = artifact_root(uri)
    if root:
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
    if not 1 <= port <= 65535:
        raise SSLBenchError(f"--port {port} is not a TCP port; use 1..65535 (e.g. 5000)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:   # another server there would answer /health
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as e:
            raise SSLBenchError(f"port {port} on 127.0.0.1 is not free ({e.strerror}); pass another --port") from None
    uri = tracking_uri(uri)
    client(uri)  # creates the store's schema (and checks a server URI) before the UI opens it
    proc = start_ui(uri, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + start_timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise SSLBenchError(f"the MLflow UI exited at start ({err[-1] if err else 'no message'}); is port {port} free?")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise SSLBenchError(f"the MLflow UI did not answer on {url} within {start_timeout:.0f}s")
            time.sleep(0.5)
        print(f"MLflow UI: {url} (store {uri}); Ctrl-C to stop", flush=True)
        try:
            if duration:
                time.sleep(duration)
            else:
                proc.wait()
        except KeyboardInterrupt:
            pass
    finally:
        stop_ui(proc)
