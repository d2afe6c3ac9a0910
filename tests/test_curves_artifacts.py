"""Curves, not only end points, and artifacts in MLflow: dense train/* curves for every budget kind
(with the method's schedules), loss_curve.png and the optional checkpoint as run artifacts, the
leaderboard files logged to a `leaderboard` run that no table or RUNNING count reads, and artifact
failures that warn in one line without touching the run's record or checkpoint."""

import errno
import warnings

import pytest
import torch

from harness.cli import main
from harness.report.export import export_leaderboard
from harness.report.leaderboard import build
from harness.tracking.curves import draw_loss_curve
from harness.tracking.query import artifact_names, download_artifact, fetch_runs, metric_history, running_runs
from harness.train.trainer import CURVE_POINTS

PNG = b"\x89PNG\r\n\x1a\n"
# threads=1: on a shared 2-core machine two threads per step can be several times slower
TINY = ["data.name=synthetic", "backbone=cnn4", "optim.batch_size=16", "train.progress=false", "train.precision=fp32",
        "train.threads=1", "method_cfg.proj_hidden=32", "method_cfg.proj_dim=16"]
STEPS = ["budget.kind=steps", "budget.value=30"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def pretrain(env, experiment, *args):
    return main(["pretrain", "method=simclr", *TINY, f"out_dir={env / 'runs'}", f"tracking.experiment={experiment}",
                 *args])


def only_run(experiment):
    runs = fetch_runs([experiment])
    assert len(runs) == 1
    return runs.iloc[0]


def test_a_two_second_run_logs_a_curve_dense_enough_to_plot(env):
    assert pretrain(env, "secs", "budget.kind=seconds", "budget.value=2", "--no-eval") == 0
    run = only_run("secs")
    n = int(run["metrics.pretrain/steps"])
    loss = metric_history(run["run_id"], "train/loss")
    steps = [s for s, _ in loss]
    assert len(loss) >= 10, f"{len(loss)} train/loss points in {n} steps"
    assert len(loss) >= min(n, CURVE_POINTS) * 0.9                   # every step while there are few
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == n   # once each, ending at the last step
    rate = metric_history(run["run_id"], "train/img_per_s")
    lr = metric_history(run["run_id"], "train/lr")
    assert len(rate) == len(lr) == len(loss) and all(v > 0 for _, v in rate)


def test_a_30_step_run_logs_every_step_with_its_schedules(env):
    assert main(["pretrain", "method=byol", *TINY, *STEPS, f"out_dir={env / 'runs'}", "tracking.experiment=byol",
                 "--no-eval"]) == 0
    run = only_run("byol")
    loss = metric_history(run["run_id"], "train/loss")
    assert [s for s, _ in loss] == list(range(1, 31))
    tau = [v for _, v in sorted(metric_history(run["run_id"], "train/tau"))]   # BYOL's EMA momentum schedule
    assert len(tau) == 30 and tau == sorted(tau) and tau[0] < tau[-1] <= 1.0
    lr = [v for _, v in sorted(metric_history(run["run_id"], "train/lr"))]
    assert len(lr) == 30 and max(lr) > lr[-1] >= 0                    # warm-up, then cosine decay


def test_logging_density_does_not_change_the_result(synthetic, tmp_path, monkeypatch):
    import harness.train.trainer as trainer_mod
    from harness.train.config import resolve
    from harness.train.trainer import Trainer

    c = resolve({"method": "simclr", "backbone": "cnn4", "data.name": "synthetic", "optim.batch_size": 32,
                 "train.progress": False, "train.precision": "fp32", "method_cfg.proj_hidden": 64,
                 "method_cfg.proj_dim": 32, "budget.kind": "steps", "budget.value": 6})
    dense = Trainer(c, synthetic, tmp_path / "a")
    logged = []
    dense.log_fn = lambda m, s: logged.append(s)
    dense.fit()
    monkeypatch.setattr(trainer_mod, "CURVE_POINTS", 2)
    sparse = Trainer(c, synthetic, tmp_path / "b")
    sparse_logged = []
    sparse.log_fn = lambda m, s: sparse_logged.append(s)
    sparse.fit()
    assert logged == list(range(1, 7)) and len(sparse_logged) < len(logged)
    a, b = dense.method.state_dict(), sparse.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_loss_curve_is_a_png_artifact_and_the_checkpoint_only_when_asked(env):
    assert pretrain(env, "plain", *STEPS, "--no-eval") == 0
    run = only_run("plain")
    assert artifact_names(run["run_id"]) == ["config.json", "loss_curve.png"]      # the default: no checkpoint
    got = download_artifact(run["run_id"], "loss_curve.png", str(env / "dl"))
    data = open(got, "rb").read()
    assert data.startswith(PNG) and len(data) > 5000
    from PIL import Image

    with Image.open(got) as im:
        im.verify()
    assert list((env / "runs" / "plain").glob("*/loss_curve.png"))     # also kept in the run folder

    assert pretrain(env, "withckpt", *STEPS, "tracking.log_checkpoint=true", "--no-eval") == 0
    run = only_run("withckpt")
    assert "checkpoint.pt" in artifact_names(run["run_id"])
    from harness.core.checkpoint import load

    state = load(download_artifact(run["run_id"], "checkpoint.pt", str(env / "dl2")))   # weights_only=True
    assert state["finished"] and state["step"] == 30 and state["method"] == "simclr"
    # a logging knob: the same record identity (config_id) as without it
    assert run["tags.sslbench.config_id"] == only_run("plain")["tags.sslbench.config_id"]


def test_draw_loss_curve_warns_nothing_and_handles_empty_and_duplicate_steps(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = draw_loss_curve([(s, 5.0 / s) for s in range(1, 301)] + [(10, 0.5)],
                            [(s, 0.1 * s / 300) for s in range(1, 301)], "m / b / d / 1s / seed 0", tmp_path / "a.png")
        q = draw_loss_curve([], [], "empty", tmp_path / "b.png")
    assert p.read_bytes().startswith(PNG) and q.read_bytes().startswith(PNG)
    assert not list(tmp_path.glob("*.tmp"))


def test_an_artifact_store_failure_warns_in_one_line_and_keeps_the_record(env, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    real = MlflowClient.log_artifact

    def full(self, run_id, local_path, artifact_path=None):   # the disk fills up on the big copies
        if str(local_path).endswith(("loss_curve.png", "checkpoint.pt")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, run_id, local_path, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifact", full)
    assert pretrain(env, "full", *STEPS, "tracking.log_checkpoint=true", "eval.protocols=[knn]", "eval.knn_k=[5]") == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 2 and all(line.startswith("sslbench: warning: ") and "No space left" in line for line in err)
    run = only_run("full")                                           # FINISHED, evaluated, with its curve
    assert run["status"] == "FINISHED" and "metrics.knn/top1@5" in run
    assert len(metric_history(run["run_id"], "train/loss")) == 30
    assert "loss_curve.png" in run["tags.sslbench.artifact_error"] and "checkpoint.pt" in run["tags.sslbench.artifact_error"]
    from harness.core.checkpoint import load

    ckpt = next((env / "runs" / "full").glob("*/checkpoint.pt"))
    assert load(ckpt)["finished"]                                      # the run's own checkpoint is intact
    assert running_runs(["full"]) == (0, 0)


def test_the_leaderboard_files_go_to_a_leaderboard_run_that_is_no_row(env, capsys):
    for seed in (0, 1):
        assert pretrain(env, "lb", "budget.kind=steps", "budget.value=3", f"seed={seed}",
                        "eval.protocols=[knn]", "eval.knn_k=[20]") == 0          # the headline: a PNG is drawn
    tables, paths = export_leaderboard("lb", None, env / "out", command="sslbench leaderboard --experiment lb")
    assert "logged to the tracking store: experiment 'lb', run 'leaderboard'" in capsys.readouterr().out
    boards = fetch_runs(["lb"], file_runs=True)
    boards = boards[boards["tags.sslbench.kind"] == "leaderboard"]
    assert len(boards) == 1 and boards.iloc[0]["run_name"] == "leaderboard" and boards.iloc[0]["status"] == "FINISHED"
    names = artifact_names(boards.iloc[0]["run_id"])
    assert {p.name for p in paths if p.is_file()} == set(names) and {"leaderboard.md", "leaderboard.csv", "leaderboard.html",
                                                      "leaderboard.png", "runs.csv"} <= set(names)
    # never a row, never a run of the experiment, never counted RUNNING (even one left RUNNING by a kill)
    runs = fetch_runs(["lb"])
    assert len(runs) == 2 and set(runs["tags.method"]) == {"simclr"}
    assert [list(t.frame["method"]) for t in build(runs)] == [["simclr"]]
    from harness.tracking.runs import TrackedRun

    TrackedRun("lb", "leaderboard", tags={"sslbench.kind": "leaderboard"})   # left RUNNING, as by a SIGKILL
    assert running_runs(["lb"]) == (0, 0)
    tables, _ = export_leaderboard("lb", None, env / "out")               # a second export: a second run
    assert [list(t.frame["method"]) for t in tables] == [["simclr"]]
    assert len(fetch_runs(["lb"], file_runs=True, status="FINISHED")) == 4


def test_a_leaderboard_logging_failure_warns_and_never_leaves_a_run_running(env, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    assert pretrain(env, "lbf", "budget.kind=steps", "budget.value=2", "eval.protocols=[knn]", "eval.knn_k=[5]") == 0

    def full(self, run_id, local_path, artifact_path=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MlflowClient, "log_artifact", full)
    capsys.readouterr()
    _, paths = export_leaderboard("lbf", None, env / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslbench: warning: ") and "No space left" in err[0]
    assert all(p.is_file() for p in paths)                                 # the files are written either way
    boards = fetch_runs(["lbf"], file_runs=True, status="")
    boards = boards[boards["tags.sslbench.kind"] == "leaderboard"]
    assert list(boards["status"]) == ["FAILED"]
