"""Two ``sslbench run --resume`` of one suite into one out_dir train each run once: a run folder has
one owner, the other process skips it and says so, and no MLflow run merges two processes' metrics.
(8 processes on a brand-new store: tests/test_tracking_concurrency.py.)"""

import os
import subprocess
import sys
import time

from harness.tracking.query import fetch_runs, metric_history

TINY = ["data.name=synthetic", "budget.kind=steps", "budget.value=4", "optim.batch_size=32", "train.progress=false",
        "train.precision=fp32", "eval.protocols=[knn]", "eval.knn_k=[5]", "method_cfg.proj_hidden=32",
        "method_cfg.proj_dim=16"]


def _env(tmp):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/new/mlflow.db"}


def test_two_resumes_of_one_suite_train_each_run_once(tmp_path):
    suite = tmp_path / "pair.yaml"
    suite.write_text("name: pair\nmethods: [simclr, nce]\nseeds: [0]\nrandom_init: true\ncommon:\n"
                     + "".join(f"  {kv.split('=')[0]}: {kv.split('=', 1)[1]}\n" for kv in TINY if "method_cfg" not in kv)
                     + "  budget.value: 12\n  train.checkpoint_every_steps: 1\n"
                     + "per_method:\n  simclr: {method_cfg.proj_hidden: 32}\n  nce: {method_cfg.proj_hidden: 32}\n")
    cmd = [sys.executable, "-m", "harness.cli", "run", str(suite), "out_dir=runs", "--resume", "--out", "boards"]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=900) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[1][-2000:] for o in outs]
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    runs = fetch_runs(["pair"], uri=uri)
    assert sorted(runs["params.method"]) == ["nce", "random_init", "simclr"], runs["params.method"].tolist()
    for _, r in runs[runs["params.method"] != "random_init"].iterrows():
        steps = [s for s, _ in metric_history(r["run_id"], "train/loss", uri=uri)]
        assert len(steps) == len(set(steps)), f"{r['params.method']}: metrics of two processes merged: {steps}"
        assert r["metrics.pretrain/steps"] == 12
    assert fetch_runs(["pair"], uri=uri, status="RUNNING").empty
    said = outs[0][1] + outs[1][1]
    assert "skipped, another process is" in said or "already finished" in said or "already evaluated" in said
