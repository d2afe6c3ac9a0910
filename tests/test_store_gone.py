"""A team server that goes away mid-run: training goes on, the checkpoint is written, the run stops
with one line; with the server back, ``--resume`` logs every kept point once and evaluates."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "server", "--port", str(port), "--backend-store-uri",
                             f"sqlite:///{db}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    line = proc.stdout.readline()   # printed once /health answers
    assert f"127.0.0.1:{port}" in line, proc.stderr.read() if proc.poll() is not None else line
    return proc


def _stop(proc: subprocess.Popen, port: int) -> None:
    """Gone at once, as a crashed or rebooted server: SIGKILL to `sslbench server` and to the `mlflow
    server` process group it started (its own session, so that Ctrl-C reaches it only through us)."""
    found = subprocess.run(["pgrep", "-f", f"mlflow server .*--port {port}"], capture_output=True, text=True)
    for pid in map(int, found.stdout.split()):
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for _ in range(100):                   # the port answers no more
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"the server on port {port} is still answering")


def test_a_server_gone_mid_run_loses_nothing(tmp_path):
    port, db = _free_port(), tmp_path / "team.db"
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "harness.cli", "pretrain", "method=simclr", "data.name=synthetic", "budget.kind=steps",
           "budget.value=60", "optim.batch_size=32", "train.progress=false", "eval.protocols=[knn]", "train.threads=1",
           "train.checkpoint_every_steps=5", f"out_dir={tmp_path / 'runs'}", f"tracking.uri={uri}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = _server(db, port)
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "runs").rglob("checkpoint.pt")) and time.time() < deadline and run.poll() is None:
            time.sleep(0.2)      # the first checkpoint: its steps' metrics went to the server
        _stop(server, port)
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    lines = [ln for ln in err.splitlines() if ln.startswith("sslbench: error:")]
    assert run.returncode == 2 and len(lines) == 1, err[-3000:]
    assert "unreachable" in lines[0] and "--resume" in lines[0], lines[0]
    assert "warning: the tracking store" in err and "training goes on" in err
    folder = next((tmp_path / "runs").rglob("checkpoint.pt")).parent
    kept = folder / "unlogged_metrics.jsonl"
    assert kept.exists() and kept.read_text().strip()
    import torch

    state = torch.load(folder / "checkpoint.pt", weights_only=True, map_location="cpu")
    assert state["step"] == 60 and state.get("finished"), "training finished while the server was away"

    server = _server(db, port)   # the same database, back
    try:
        again = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "metric points the last attempt kept" in again.stderr
        assert not kept.exists()
        from harness.tracking.store import client

        cl, _ = client(uri)
        exp = cl.get_experiment_by_name("sslbench")
        (rec,) = cl.search_runs([exp.experiment_id])
        assert rec.info.status == "FINISHED" and rec.data.metrics.get("knn/top1_k20") is not None
        steps = [m.step for m in cl.get_metric_history(rec.info.run_id, "train/loss")]
        assert steps == sorted(set(steps)), "every point once"
        assert steps[-1] == 60 and len(steps) >= 20, steps   # the curve has the steps trained while it was away
    finally:
        _stop(server, port)


def test_resending_kept_points_logs_each_once(tmp_path):
    """A request the store committed but whose answer was lost leaves its points both in the store and in
    the kept file: re-sending them (mid-run recovery or ``--resume``) logs every (key, step) once."""
    from harness.tracking.runs import MetricBuffer, TrackedRun, relog_unlogged

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run = TrackedRun("e", "r", uri)
    run.log_points([({"train/loss": 1.0}, 1), ({"train/loss": 0.9, "train/lr": 0.1}, 2)])   # arrived
    kept = tmp_path / "unlogged_metrics.jsonl"
    buf = MetricBuffer(run, kept)
    buf._spill([({"train/loss": 0.9, "train/lr": 0.1}, 2), ({"train/loss": 0.8, "train/lr": 0.1}, 3)])
    assert relog_unlogged(run, kept) == 2 and not kept.exists()
    hist = {k: [m.step for m in sorted(run.client.get_metric_history(run.run_id, k), key=lambda m: m.step)]
            for k in ("train/loss", "train/lr")}
    assert hist == {"train/loss": [1, 2, 3], "train/lr": [2, 3]}
    buf.failed_at = 0.0            # recovering mid-run: pending points the store already holds are skipped
    buf.pending = [({"train/loss": 0.8}, 3), ({"train/loss": 0.7}, 4)]
    buf._send()
    steps = sorted(m.step for m in run.client.get_metric_history(run.run_id, "train/loss"))
    assert steps == [1, 2, 3, 4] and buf.failed_at is None
