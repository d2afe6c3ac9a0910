"""SIGKILL at any moment of a run never corrupts the store or the run: after ``--resume`` the run
equals an uninterrupted one bit for bit (weights, loss), its record is FINISHED with one metric
point per logged step, and ``sslbench leaderboard`` answers.

Each kill hits a fresh store. Targeted kills land while the store is being created, while a
checkpoint is being written and during evaluation; the others at random moments. The default
run makes 4 kills; ``-m slow`` makes 20 (``test_twenty_kills``)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.tracking.query import fetch_runs, metric_history

ARGS = ["pretrain", "method=simclr", "backbone=cnn4", "data.name=synthetic", "budget.kind=steps", "budget.value=24",
        "optim.batch_size=32", "train.precision=fp32", "train.checkpoint_every_steps=1", "train.progress=false",
        "method_cfg.proj_hidden=64", "method_cfg.proj_dim=32", "eval.protocols=[knn,align_uniform]", "eval.au_pairs=128",
        "out_dir=runs"]


def _env(root: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{root}/store/mlflow.db"}


def _wait_for(pred, timeout: float = 120.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "harness.cli", *ARGS], cwd=root, env=_env(root), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    state = torch.load(next((root / "runs").glob("*/*/checkpoint.pt")), weights_only=True)
    return state, time.time() - t0


def kill_and_resume(tmp: Path, reference, when: str, rng: random.Random, monkeypatch) -> str:
    ref_state, duration = reference
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *ARGS], cwd=tmp, env=_env(tmp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp / "store" / "mlflow.db"
    if when == "store":          # the schema is being created
        _wait_for(lambda: db.exists() or proc.poll() is not None)
    elif when == "checkpoint":   # a checkpoint is being written
        _wait_for(lambda: any((tmp / "runs").glob("*/*/checkpoint.pt.*.tmp")) or proc.poll() is not None)
    elif when == "evaluation":   # frozen features are being extracted
        _wait_for(lambda: (tmp / "runs" / "feature-cache").exists() or proc.poll() is not None)
    else:
        time.sleep(rng.uniform(0.0, duration))
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert main([*ARGS, "--resume"]) == 0
    state = torch.load(next((tmp / "runs").glob("*/*/checkpoint.pt")), weights_only=True)
    assert state["step"] == ref_state["step"] == 24 and state["finished"]
    assert state["last_loss"] == ref_state["last_loss"]
    assert all(torch.equal(state["model"][k], v) for k, v in ref_state["model"].items())
    runs = fetch_runs(None)
    assert len(runs) == 1 and runs["metrics.knn/top1@20"].notna().all()
    steps = [s for s, _ in metric_history(runs["run_id"].iloc[0], "train/loss")]
    assert len(steps) == len(set(steps)) and set(steps) >= {1, 24}, steps      # one point per logged step
    assert fetch_runs(None, status="RUNNING").empty
    assert main(["leaderboard", "--out", "board"]) == 0
    return "finished before the kill" if finished_first else when


def test_kills_at_the_critical_moments(tmp_path, reference, monkeypatch):
    rng = random.Random(0)
    hit = []
    for when in ("store", "checkpoint", "evaluation", "random"):
        (tmp_path / when).mkdir()
        hit.append(kill_and_resume(tmp_path / when, reference, when, rng, monkeypatch))
    assert hit[:3] == ["store", "checkpoint", "evaluation"], hit   # each targeted kill landed before the end


@pytest.mark.slow
def test_twenty_kills(tmp_path, reference, monkeypatch):
    rng = random.Random(20)
    moments = ["store", "checkpoint", "evaluation"] * 2 + ["random"] * 14
    for i, when in enumerate(moments):
        (tmp_path / str(i)).mkdir()
        kill_and_resume(tmp_path / str(i), reference, when, rng, monkeypatch)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_end_the_run_killed(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *ARGS], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: any((tmp_path / "runs").glob("*/*/checkpoint.pt")) or proc.poll() is not None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    runs = fetch_runs(None, uri=f"sqlite:///{tmp_path}/store/mlflow.db", status="KILLED")
    assert len(runs) == 1 and "interrupted" in runs["tags.error"].iloc[0]
