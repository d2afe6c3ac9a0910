"""The CLI end to end, in subprocesses: one-line errors, SIGKILL + --resume."""

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def sslbench(*args, cwd, env_extra=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(r, fragment):
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("sslbench: error:"), r.stderr
    assert fragment in lines[0], lines[0]


def _bad_inputs(tmp: Path):
    corrupt = tmp / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    evil_dir = tmp / "evilcifar" / "cifar-10-batches-py"
    evil_dir.mkdir(parents=True)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp / "pwned"),))

    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"labels": [0, 1], b"data": rng.integers(0, 255, (2, 3072)).astype(np.uint8)}
        if name == "test_batch":
            d[b"x"] = Evil()
        (evil_dir / name).write_bytes(pickle.dumps(d))
    evil_ckpt = tmp / "evil.pt"
    torch.save({"model": {}, "x": Evil()}, evil_ckpt)
    return [
        (["pretrain", "method=simclx"], "unknown method 'simclx'"),
        (["pretrain", "backbone=resnet19"], "unknown backbone 'resnet19'"),
        (["pretrain", f"data.data_dir={tmp / 'missing'}"], "fashion_mnist not found"),
        (["pretrain", "budget.value=-3"], "'budget.value': must be > 0"),
        (["pretrain", "budget.kind=fortnights"], "valid choices: epochs, steps, samples, seconds"),
        (["pretrain", "data.name=npz", f"data.data_dir={corrupt}"], "corrupt or unreadable .npz"),
        (["pretrain", "data.name=cifar10", f"data.data_dir={tmp / 'evilcifar'}"], "carries a pickle payload"),
        (["eval", str(evil_ckpt)], "carries a pickle payload"),
        (["eval", "cnn4", "eval.protocols=[knn,bogus]"], "valid choices: knn, knn_lightly, linear, linear_lbfgs, finetune, semisup, align_uniform"),
    ]


def test_bad_inputs_give_one_line_errors(tmp_path):
    cases = _bad_inputs(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    procs = []
    for args, frag in cases:  # two at a time keeps this quick on 2 cores
        procs.append((subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), frag, args))
        if len(procs) % 3 == 0:
            procs[-3][0].wait()
    for p, frag, args in procs:
        out, err = p.communicate(timeout=120)
        _one_line_error(subprocess.CompletedProcess(args, p.returncode, out, err), frag)
    assert not (tmp_path / "pwned").exists()


def test_help_everywhere(tmp_path):
    for cmd in (["--help"], ["pretrain", "--help"], ["eval", "--help"], ["run", "--help"], ["leaderboard", "--help"],
                ["methods", "--help"], ["ui", "--help"]):
        r = sslbench(*cmd, cwd=tmp_path)
        assert r.returncode == 0 and "usage: sslbench" in r.stdout, (cmd, r.stderr)


def test_methods_lists_family_and_paper(tmp_path):
    r = sslbench("methods", cwd=tmp_path)
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("simclr"))
    assert "contrastive" in line and "Chen et al., 2020" in line


TRAIN = ["pretrain", "method=simclr", "backbone=cnn4", "data.name=synthetic", "budget.kind=steps", "budget.value=60",
         "optim.batch_size=32", "train.precision=fp32", "train.checkpoint_every_steps=2", "train.progress=false",
         "method_cfg.proj_hidden=64", "method_cfg.proj_dim=32", "--no-eval"]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    full = sslbench(*TRAIN, "out_dir=full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *TRAIN, "out_dir=killed"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill at a random step, chosen up front and watched for in the checkpoints (every 2 steps), not after a random
    # sleep: on a fast CPU the whole 60-step run can finish inside any fixed sleep, and the kill would land too late.
    target = random.randint(4, 40)
    deadline = time.time() + 120
    run_dirs = tmp_path / "killed"
    step = 0
    while time.time() < deadline and proc.poll() is None and step < target:
        found = list(run_dirs.glob("*/*/checkpoint.pt"))
        if found:  # written by os.replace, so a load never sees half a file
            step = torch.load(found[0], weights_only=True)["step"]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = list(run_dirs.glob("*/*/checkpoint.pt"))[0]
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < killed_at < 60, "the kill should land mid-run"
    res = sslbench(*TRAIN, "out_dir=killed", "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    a = torch.load(next((tmp_path / "full").glob("*/*/checkpoint.pt")), weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["step"] == b["step"] == 60 and b["finished"]
    assert a["last_loss"] == b["last_loss"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_run_leaderboard_follows_a_tracking_experiment_override(tmp_path):
    """`sslbench run SUITE tracking.experiment=X` logs to X, so its leaderboard is X's, not the suite name's."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text("name: tiny\nmethods: [simclr]\nseeds: [0]\ncommon:\n  backbone: cnn4\n  data.name: synthetic\n"
                     "  budget.kind: steps\n  budget.value: 2\n")
    r = sslbench("run", str(suite), "tracking.experiment=elsewhere", "eval.protocols=[knn]", "train.progress=false",
                 f"out_dir={tmp_path / 'runs'}", "--out", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    board = (tmp_path / "res" / "elsewhere" / "leaderboard.csv").read_text()
    assert "simclr" in board and "random_init" in board
    assert not (tmp_path / "res" / "tiny").exists()


def test_an_override_is_never_taken_for_the_suite_and_run_help_lists_the_suites(tmp_path, monkeypatch):
    import harness.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_run", lambda args: seen.update(suite=args.suite, overrides=args.overrides,
                                                                  methods=args.methods) or 0)
    assert cli.main(["run", "--methods", "simclr,byol", "budget.value=30", "seed=1"]) == 0
    assert seen == {"suite": "default", "overrides": ["budget.value=30", "seed=1"], "methods": "simclr,byol"}
    assert cli.main(["run", "ci", "budget.value=30"]) == 0 and seen["suite"] == "ci"
    r = sslbench("run", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for f in (ROOT / "harness" / "configs" / "suites").glob("*.yaml"):
        import yaml

        desc = yaml.safe_load(f.read_text())["description"]
        assert f"{f.stem}" in r.stdout and desc.split(",")[0] in r.stdout, f.stem


def test_the_store_is_spelled_one_way_on_every_command(tmp_path):
    from harness.cli import _one_flag_style

    assert _one_flag_style(["pretrain", "--tracking-uri", "sqlite:///a.db", "seed=1"]) == \
        ["pretrain", "tracking.uri=sqlite:///a.db", "seed=1"]
    assert _one_flag_style(["leaderboard", "tracking.uri=sqlite:///a.db"]) == ["leaderboard", "--tracking-uri", "sqlite:///a.db"]
    assert _one_flag_style(["compare", "tracking.uri=x", "a.csv", "b.csv"]) == ["compare", "--tracking-uri", "x", "a.csv", "b.csv"]
    # both spellings reach the store: an empty store named either way is the one the error names
    for args in (["leaderboard", f"tracking.uri=sqlite:///{tmp_path}/other.db"],
                 ["leaderboard", "--tracking-uri", f"sqlite:///{tmp_path}/other.db"]):
        r = sslbench(*args, cwd=tmp_path)
        _one_line_error(r, "other.db")


def test_eval_of_a_checkpoint_keeps_its_dataset_when_only_the_folder_is_given():
    """`sslbench eval CKPT data.data_dir=D` scores on the checkpoint's dataset (name, size) read from D;
    a key the user sets wins; paths never come from the checkpoint."""
    from harness.run.evaluate import evaluation_config
    from harness.train.config import resolve

    trained = resolve({"data.name": "imagefolder", "data.data_dir": "/trained/here", "data.image_size": 24})
    user = resolve({"data.data_dir": "/my/copy"})
    cfg = evaluation_config(trained, user, {"data.data_dir"})
    assert (cfg.data.name, cfg.data.data_dir, cfg.data.image_size) == ("imagefolder", "/my/copy", 24)
    cfg = evaluation_config(trained, resolve({"data.image_size": 32}), {"data.image_size"})
    assert (cfg.data.name, cfg.data.data_dir, cfg.data.image_size) == ("imagefolder", None, 32)
    cfg = evaluation_config(trained, resolve({"data.name": "cifar10"}), {"data"})
    assert (cfg.data.name, cfg.data.image_size) == ("cifar10", None)
