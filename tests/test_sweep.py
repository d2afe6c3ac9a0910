"""Sweeps: content-hashed run specs, submitit's local executor into one tracking server, a killed
sweep resubmitted finishes only what was missing, and the Slurm array job's sbatch script."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.core.errors import ConfigError
from harness.run import sweep
from harness.run.suites import load_suite

pytest.importorskip("submitit")   # a dev dependency: CI has it

TINY = {"data.name": "synthetic", "budget.kind": "steps", "budget.value": 4, "optim.batch_size": 32,
        "train.progress": False, "eval.protocols": ["knn"], "train.threads": 1}
SUITE = {"name": "sweeptest", "methods": ["simclr", "byol", "rotnet"], "seeds": [0, 1], "common": TINY}


def test_specs_are_content_hashed_and_idempotent(tmp_path):
    spec = {**SUITE, "grid": {"budget.value": [4, 8]}}
    a = sweep.sweep_specs(spec, {"out_dir": str(tmp_path / "a")})
    b = sweep.sweep_specs(spec, {"out_dir": str(tmp_path / "b"), "tracking.uri": "sqlite:////tmp/other.db"})
    # 3 methods x 2 budgets x 2 seeds, then random init once per (backbone, seed): budgets do not change it
    assert [s.kind for s in a].count("pretrain") == 12 and [s.kind for s in a].count("random_init") == 2
    assert len({s.id for s in a}) == len(a)
    # where runs are written or logged is not part of a run: the same specs
    assert [s.id for s in a] == [s.id for s in b]
    # a changed spec is a new run; random init does not depend on the optimiser
    c = sweep.sweep_specs(spec, {"optim.lr": 0.123})
    pre = lambda specs: {s.id for s in specs if s.kind == "pretrain"}   # noqa: E731
    rnd = lambda specs: {s.id for s in specs if s.kind == "random_init"}   # noqa: E731
    assert not pre(a) & pre(c) and rnd(a) == rnd(c)
    # a spec is self-contained: its config rebuilds the run exactly
    s0 = a[0]
    assert sweep.RunSpec(**json.loads(json.dumps(s0.to_json()))).cfg == s0.cfg


def test_grid_and_per_method_settings(tmp_path):
    spec = {**SUITE, "methods": ["simclr", "mae"], "seeds": [0], "per_method": {"mae": {"backbone": "vit_mini_p4"}},
            "grid": {"backbone": ["cnn4", "resnet18_cifar"]}}
    specs = sweep.sweep_specs(spec, {})
    pairs = {(s.config["method"], s.config["backbone"]) for s in specs if s.kind == "pretrain"}
    # a method's own constraint wins over the grid, and the duplicate it makes is kept once
    assert pairs == {("simclr", "cnn4"), ("simclr", "resnet18_cifar"), ("mae", "vit_mini_p4")}
    # two folders of one loader are two datasets: neither the runs nor their floors collapse into one
    two = sweep.sweep_specs({**SUITE, "methods": ["simclr"], "seeds": [0],
                             "common": {**TINY, "data.name": "npz"}, "grid": {"data.data_dir": ["/a.npz", "/b.npz"]}}, {})
    assert [s.kind for s in two].count("pretrain") == 2 and [s.kind for s in two].count("random_init") == 2
    with pytest.raises(ConfigError, match="grid"):
        load_suite({**SUITE, "grid": {"backbone": []}})
    with pytest.raises(ConfigError, match="KEY=V1"):
        sweep.grid_overrides(["budget.value"])
    assert sweep.grid_overrides(["budget.value=60,240", "backbone=cnn4"]) == {"budget.value": [60, 240],
                                                                              "backbone": ["cnn4"]}


def test_slurm_array_script_is_built_without_a_cluster(tmp_path):
    specs = sweep.sweep_specs({**SUITE, "random_init": False}, {"out_dir": str(tmp_path)})
    opts = sweep.SlurmOptions(partition="gpu", gpus_per_node=2, cpus_per_task=8, mem_gb=32, time_min=90,
                              account="ssl", setup=("source ~/sslbench/.venv/bin/activate",))
    text = sweep.slurm_script(specs, opts, max_parallel=2)
    lines = set(text.splitlines())
    for want in ("#SBATCH --array=0-5%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
                 "#SBATCH --time=90", "#SBATCH --account=ssl", "#SBATCH --nodes=1",
                 "#SBATCH --signal=USR2@120",           # submitit's preemption / timeout signal: checkpoint + requeue
                 "source ~/sslbench/.venv/bin/activate"):
        assert want in lines, f"{want!r} not in the sbatch script:\n{text}"
    assert re.search(r"srun .*-m submitit\.core\._submit .*\.sweep/jobs", text), text
    # the job is requeued through its checkpoint: SpecJob is submitit's Checkpointable and resubmits its spec
    import submitit

    job = sweep.SpecJob()
    assert isinstance(job, submitit.helpers.Checkpointable)
    again = job.checkpoint(specs[0].to_json())
    assert again.args == (specs[0].to_json(),)
    # the CLI's dry run prints the same script and every spec
    out = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(_suite_file(tmp_path, random_init=False)),
                          f"out_dir={tmp_path}", "--executor", "slurm", "--dry-run", "--partition", "gpu",
                          "--max-parallel", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "6 run specs" in out.stdout and out.stdout.count("[new]") == 6 and "#SBATCH --array=0-5%2" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(_suite_file(tmp_path)), "--max-parallel", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("sslbench: error:") and "max-parallel" in bad.stderr


def _suite_file(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "sweeptest.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **extra}))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """``sslbench server`` on 127.0.0.1 with a SQLite database and an artifact root, as a team would run it."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "server", "--port", str(port), "--backend-store-uri",
                             f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()   # printed once /health answers
    assert f"http://127.0.0.1:{port}" in line, proc.stderr.read() if proc.poll() is not None else line
    assert "MLFLOW_TRACKING_URI=" in proc.stdout.readline()
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def _evaluated(runs: Path) -> int:
    return sum(1 for p in runs.rglob("run.json") if json.loads(p.read_text()).get("evaluated"))


def test_a_killed_local_sweep_resubmitted_finishes_only_what_was_missing(tmp_path, server):
    runs = tmp_path / "runs"
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(_suite_file(tmp_path)), f"out_dir={runs}",
           "--executor", "local", "--max-parallel", "2", "--tables", str(tmp_path / "tables")]
    total = 8   # 3 methods x 2 seeds + random init x 2 seeds
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    deadline = time.time() + 300
    while _evaluated(runs) < 2 and time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)    # the sweep and every job it started
    first.wait(timeout=30)
    time.sleep(1)
    done_first = _evaluated(runs)
    assert 2 <= done_first < total, f"{done_first} runs finished before the kill\n{first.stderr.read()[-3000:]}"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = re.search(r"sweep: (\d+) runs: (.*)", second.stderr)
    assert summary, second.stderr[-2000:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) ([a-z-]+)", summary.group(2))}
    assert int(summary.group(1)) == total
    assert counts.get("trained", 0) == total - done_first and counts.get("skipped", 0) == done_first, summary.group(0)
    assert _evaluated(runs) == total

    # every run and its metrics arrived in the one server; none is left RUNNING
    from harness.tracking.store import client

    cl, _ = client(server)
    exp = cl.get_experiment_by_name("sweeptest")
    found = [r for r in cl.search_runs([exp.experiment_id]) if r.data.tags.get("sslbench.kind") != "leaderboard"]
    finished = [r for r in found if r.info.status == "FINISHED"]
    assert len(finished) == total and all(r.info.status != "RUNNING" for r in found), \
        [(r.info.run_name, r.info.status) for r in found]
    for r in finished:
        assert r.data.metrics.get("knn/top1_k20") is not None, r.info.run_name
        if r.data.tags.get("method") != "random_init":
            assert len(cl.get_metric_history(r.info.run_id, "train/loss")) >= 2, r.info.run_name
    # each run's log lies beside its checkpoint
    for marker in (runs / "sweeptest" / ".sweep").glob("*.json"):
        folder = Path(json.loads(marker.read_text())["run_dir"])
        assert (folder / sweep.LOG_NAME).stat().st_size > 0
        assert json.loads(marker.read_text())["status"] in ("trained", "skipped")
    assert (tmp_path / "tables" / "sweeptest" / "leaderboard.md").exists()
