"""`sslbench ui` starts the MLflow UI on 127.0.0.1, serves the runs, and stops cleanly."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from harness.tracking.runs import TrackedRun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_runs_and_stops(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with TrackedRun("ui-test", "r1", uri, params={"method": "simclr"}) as run:
        run.log_metrics({"knn/top1@20": 42.0})
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()  # printed once /health answers
        assert f"http://127.0.0.1:{port}" in line, proc.stderr.read() if proc.poll() is not None else line
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-test")
        exp = json.load(urllib.request.urlopen(req, timeout=10))["experiment"]
        body = json.dumps({"experiment_ids": [exp["experiment_id"]]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
        runs = json.load(urllib.request.urlopen(req, timeout=10))["runs"]
        assert len(runs) == 1 and runs[0]["info"]["run_id"] == run.run_id
        assert {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}["knn/top1_k20"] == 42.0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    time.sleep(0.5)
    with socket.socket() as s:  # the server is gone: the port is free again
        assert s.connect_ex(("127.0.0.1", port)) != 0
