"""Bad input, every command: exit status 2, one line ``sslbench: error: ...`` that says what to do,
no traceback, and nothing already written changed (a finished run, its store and its leaderboard
are hashed before and after each case).

The cases run in-process through ``harness.cli.main`` (the console script's entry point), so an
unexpected exception would surface here as a test error, not as a printed traceback."""

import gzip
import hashlib
import os
import pickle
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main

SYN = ["data.name=synthetic", "budget.kind=steps", "budget.value=2", "optim.batch_size=32", "train.progress=false",
       "train.precision=fp32", "eval.protocols=[knn]", "eval.knn_k=[5]"]


B3 = [a if a != "budget.value=2" else "budget.value=3" for a in SYN]
B4 = [a if a != "budget.value=2" else "budget.value=4" for a in SYN]


def _write_idx(path: Path, arr: np.ndarray, truncate: int | None = None) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(raw[:truncate] if truncate is not None else raw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A working directory with a finished run (store, run folder, leaderboard) and crafted bad files."""
    root = tmp_path_factory.mktemp("world")
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/store/mlflow.db"
    try:
        assert main(["pretrain", *SYN, "out_dir=runs"]) == 0
        assert main(["pretrain", *B3, "out_dir=runs", "--no-eval"]) == 0   # finished, not evaluated: resumable
        assert main(["pretrain", *B4, "out_dir=runs", "--no-eval"]) == 0
        assert main(["leaderboard", "--out", "board"]) == 0
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    f = root / "files"
    f.mkdir()
    ckpt = next((root / "runs").glob("*/*-2steps-*/checkpoint.pt"))   # the intact run (3 and 4 steps get broken below)
    (f / "ckpt_path.txt").write_text(str(ckpt))
    state = torch.load(ckpt, weights_only=True)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/sslbench_bad_inputs_pwned",))

    torch.save({"model": {}, "payload": Evil()}, f / "evil.pt")
    (f / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, f / "no_optimizer.pt")
    torch.save({k: v for k, v in state.items() if k != "config"}, f / "no_config.pt")
    bad = dict(state)
    bad["model"] = {k: v[..., :1] if v.ndim > 1 else v for k, v in state["model"].items()}
    torch.save(bad, f / "misshaped.pt")
    for budget, broken in (("3steps", {k: v for k, v in state.items() if k != "optimizer"}), ("4steps", bad)):
        target = next((root / "runs").glob(f"*/*-{budget}-*/checkpoint.pt"))
        torch.save({**broken, "config": torch.load(target, weights_only=True)["config"]}, target)
    (f / "empty.csv").write_text("")
    (f / "nocols.csv").write_text("a,b\n1,2\n")
    (f / "notes.txt").write_text("just text\n")
    (f / "bad.yaml").write_text("a: [unclosed\n")
    (f / "list.yaml").write_text("- 1\n- 2\n")
    (f / "suite_unknown_key.yaml").write_text("name: x\nmethods: [simclr]\nbogus: 1\n")
    (f / "suite_no_methods.yaml").write_text("name: x\nmethods: []\n")
    (f / "baseline_cols.csv").write_text("method,value\nsimclr,1\n")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
    np.savez(f / "labels_range.npz", x_train=x, y_train=np.r_[np.zeros(39), [-1]].astype(np.int64), x_test=x[:8],
             y_test=np.zeros(8, np.int64))
    np.savez(f / "labels_absurd.npz", x_train=x, y_train=np.r_[np.zeros(39), [10**9]].astype(np.int64), x_test=x[:8],
             y_test=np.zeros(8, np.int64))
    np.savez(f / "labels_float.npz", x_train=x, y_train=np.zeros(40) + 0.5, x_test=x[:8], y_test=np.zeros(8))
    np.savez(f / "missing_keys.npz", x_train=x, y_train=np.zeros(40, np.int64))
    np.savez(f / "gray.npz", x_train=x[..., :1], y_train=np.arange(40) % 4, x_test=x[:8, ..., :1], y_test=np.arange(8) % 4)
    (f / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    for name, trunc in (("idx_header", 6), ("idx_body", 40)):
        d = f / name
        d.mkdir()
        imgs, labels = rng.integers(0, 255, (10, 28, 28), dtype=np.uint8), np.arange(10, dtype=np.uint8)
        for stem, arr in (("train-images-idx3-ubyte", imgs), ("train-labels-idx1-ubyte", labels),
                          ("t10k-images-idx3-ubyte", imgs), ("t10k-labels-idx1-ubyte", labels)):
            _write_idx(d / stem, arr, trunc if stem.startswith("train-images") else None)
    evil_cifar = f / "cifar-10-batches-py"
    evil_cifar.mkdir()
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (evil_cifar / n).write_bytes(pickle.dumps(Evil()))
    folder = f / "folder_no_val" / "train" / "a"
    folder.mkdir(parents=True)
    (f / "a_file").write_text("x")
    ro = f / "readonly"
    ro.mkdir()
    immutable = subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode == 0 and not os.access(ro, os.W_OK)
    (f / "immutable.txt").write_text(str(immutable))
    gz = f / "idx_gz_bad"
    gz.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (gz / f"{stem}.gz").write_bytes(gzip.compress(b"\x00\x00\x08")[:-4])
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    yield root, busy.getsockname()[1]
    busy.close()
    if immutable:
        subprocess.run(["chattr", "-i", str(ro)])
    shutil.rmtree(root, ignore_errors=True)


def snapshot(root: Path) -> dict[str, str]:
    """Every file's hash (lock files aside: they name their current owner, they hold no record)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name.endswith(".lock"):
            continue
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def F(name):  # a crafted file of the world
    return f"@{name}"


CKPT = "@ckpt"
CASES = [
    # pretrain: names, values, data, checkpoints, filesystem, tracking
    (["pretrain", "method=simclx", *SYN], "unknown method 'simclx'"),
    (["pretrain", "backbone=resnet19", *SYN], "unknown backbone 'resnet19'"),
    (["pretrain", *SYN, "data.name=cifar11"], "unknown dataset 'cifar11'"),
    (["pretrain", *SYN, "optim.lr=-0.1"], "'optim.lr': must be > 0"),
    (["pretrain", *SYN, "budget.value=nan"], "'budget.value': must be a number"),
    (["pretrain", *SYN, "budget.value=-5"], "'budget.value': must be > 0"),
    (["pretrain", *SYN, "budget.kind=minutes"], "valid choices: epochs, steps"),
    (["pretrain", *SYN, "budget.value=2.5"], "a steps budget must be a whole number"),
    (["pretrain", *SYN, "data.train_subset=-3"], "'data.train_subset': must be > 0"),
    (["pretrain", *SYN, "data.test_subset=0"], "'data.test_subset': must be > 0"),
    (["pretrain", *SYN, "data.image_size=0"], "'data.image_size': must be > 0"),
    (["pretrain", *SYN, "eval.knn_k=[100000]"], "more neighbours than the 512 training images"),
    (["pretrain", *SYN, "eval.label_fractions=[1.5]"], "'eval.label_fractions': must be <= 1"),
    (["pretrain", *SYN, "eval.holdout_fraction=1.0"], "'eval.holdout_fraction': must be < 1"),
    (["pretrain", *SYN, "eval.protocols=[knn,bogus]"], "bad value 'bogus' in 'eval.protocols'"),
    (["pretrain", *SYN, "tracking.experiment=../x"], "'tracking.experiment': use letters, digits"),
    (["pretrain", *SYN, "data.label=a/b"], "'data.label': use letters, digits"),
    (["pretrain", *SYN, "tracking.uri=foo://bar"], "has an unknown scheme"),
    (["pretrain", *SYN, "tracking.uri=http://127.0.0.1:9"], "is unreachable"),
    (["pretrain", *SYN, "out_dir=@a_file"], "exists and is not a folder"),
    (["pretrain", *SYN, "out_dir=@readonly/runs"], "is not writable"),
    (["pretrain", *SYN, "tracking.uri=sqlite:///@readonly/m.db"], "is not writable"),
    (["pretrain", *SYN, "optim.batch_size=100000"], "exceeds the 512 training images; pass a smaller batch, e.g. optim.batch_size=128"),
    (["pretrain", *SYN, "foo=1"], "unknown config key 'foo'"),
    (["pretrain", *SYN, "optim.name=rmsprop"], "valid choices: sgd, lars, adamw"),
    (["pretrain", *SYN, "train.device=cuda"], "no CUDA GPU is available"),
    (["pretrain", *SYN, "preset=tiny"], "unknown preset 'tiny'"),
    (["pretrain", *SYN, "justatoken"], "bad override 'justatoken': write key=value"),
    (["pretrain", *SYN, "method_cfg.temperature=-1"], "'method_cfg.temperature': must be > 0"),
    (["pretrain", *SYN, "method_cfg.bogus=1"], "unknown config key 'method_cfg.bogus'"),
    (["pretrain", *SYN, "train.precision=fp16"], "valid choices: auto, bf16, fp32"),
    (["pretrain", *SYN, "train.threads=0"], "'train.threads': must be > 0"),
    (["pretrain", *SYN, "--config", "@missing.yaml"], "not found"),
    (["pretrain", *SYN, "--config", "@bad.yaml"], "not valid YAML"),
    (["pretrain", *SYN, "--config", "@list.yaml"], "expected a mapping at the top level"),
    (["pretrain", *SYN, "data.name=npz"], "needs data.data_dir=FILE.npz"),
    (["pretrain", *SYN, "data.name=cifar10", "data.data_dir=/nonexistent/x"], "cifar10 not found"),
    (["pretrain", *SYN, "data.name=npz", "data.data_dir=@corrupt.npz"], "corrupt or unreadable .npz"),
    (["pretrain", *SYN, "data.name=npz", "data.data_dir=@missing_keys.npz"], ".npz lacks x_test, y_test"),
    (["pretrain", *SYN, "data.name=npz", "data.data_dir=@labels_range.npz"], "train labels span -1..0"),
    (["pretrain", *SYN, "data.name=npz", "data.data_dir=@labels_absurd.npz"], "is not a class count"),
    (["pretrain", *SYN, "data.name=npz", "data.data_dir=@labels_float.npz"], "must hold integer class indices"),
    (["pretrain", *SYN, "data.name=mnist", "data.data_dir=@idx_header"], "truncated IDX header"),
    (["pretrain", *SYN, "data.name=mnist", "data.data_dir=@idx_body"], "truncated IDX file"),
    (["pretrain", *SYN, "data.name=mnist", "data.data_dir=@idx_gz_bad"], "unreadable"),
    (["pretrain", *SYN, "data.name=cifar10", "data.data_dir=@cifar-10-batches-py"], "refusing to load"),
    (["pretrain", *SYN, "data.name=imagefolder", "data.data_dir=@folder_no_val"], "expected sub-folders train/ and val/"),
    (["pretrain", *SYN, "method=mae"], "needs a ViT backbone"),
    (["pretrain", *B3, "out_dir=runs", "--resume"], "not a complete sslbench checkpoint (missing optimizer)"),
    (["pretrain", *B4, "out_dir=runs", "--resume"], "weights do not match"),
    (["pretrain", *SYN, "method=cpc_v2"], "too few rows to predict"),
    # eval
    (["eval", "@missing.pt"], "not found"),
    (["eval", "@evil.pt"], "refusing to load"),
    (["eval", "@trunc.pt"], "corrupt or truncated checkpoint"),
    (["eval", "@no_config.pt"], "not a complete sslbench checkpoint (missing config)"),
    (["eval", "@misshaped.pt", "data.name=synthetic"], "weights do not match"),
    (["eval", CKPT, "data.name=npz", "data.data_dir=@gray.npz"], "trained on 3-channel images"),
    (["eval", "resnet19", *SYN[:1]], "unknown backbone 'resnet19'"),
    (["eval", "cnn4", *SYN[:1], "--protocols", "knn,bogus"], "bad value 'bogus' in 'eval.protocols'"),
    (["eval", CKPT, "tracking.experiment=a/b"], "'tracking.experiment': use letters"),
    # run
    (["run", "nosuchsuite"], "config file 'nosuchsuite' not found"),
    (["run", "cifar10_cpuu"], "(did you mean 'cifar10_cpu'?); built-in suites: atari_cpu, ci, cifar10_10min"),
    (["run", "default", "--seeds", "a,b"], "--seeds takes comma-separated integers"),
    (["run", "default", "--methods", "simclx"], "unknown method 'simclx'"),
    (["run", "@suite_unknown_key.yaml"], "unknown suite key(s) bogus"),
    (["run", "@suite_no_methods.yaml"], "a suite needs a non-empty 'methods' list"),
    (["run", "default", "optim.lr=-1"], "'optim.lr': must be > 0"),
    # leaderboard
    (["leaderboard", "--experiment", "nope", "--out", "board"], "no finished, evaluated runs in experiment 'nope'"),
    (["leaderboard", "--budget", "minutes=3", "--out", "board"], "kind must be one of"),
    (["leaderboard", "--replot", "@missing.csv"], "no such file"),
    (["leaderboard", "--replot", "@nocols.csv"], "not a leaderboard CSV"),
    (["leaderboard", "--tracking-uri", "foo://x"], "has an unknown scheme"),
    (["leaderboard", "--out", "@a_file/sub"], "cannot write the leaderboard"),
    # compare
    (["compare", "@empty.csv", "@nocols.csv"], "not a readable runs CSV"),
    (["compare", "@missing.csv", "@nocols.csv"], "no such CSV"),
    (["compare", "@nocols.csv", "@nocols.csv"], "not a runs CSV (missing columns"),
    (["compare", "experiment:nope", "experiment:nope2"], "no finished runs for experiment 'nope'"),
    (["compare", "@notes.txt", "@nocols.csv"], "not a runs CSV"),
    # check
    (["check", "--seeds", "a,b"], "--seeds takes comma-separated integers"),
    (["check", "--baseline", "@missing.csv"], "no CI baseline at"),
    (["check", "--methods", "simclx"], "unknown method 'simclx'"),
    (["check", "--baseline", "@baseline_cols.csv"], "not a CI baseline"),
    # ui
    (["ui", "--port", "0"], "is not a TCP port"),
    (["ui", "--port", "@busy"], "is not free"),
    (["ui", "--port", "abc"], "invalid int value"),
    # the CLI itself
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["methods", "--bogus"], "unrecognized arguments: --bogus"),
]


def _resolve(arg: str, root: Path, port: int) -> str:
    files = root / "files"
    if arg == CKPT:
        return (files / "ckpt_path.txt").read_text()
    if arg == "@busy":
        return str(port)
    if "@" in arg:
        head, _, name = arg.partition("@")
        return head + str(files / name)
    return arg


def test_enough_distinct_cases():
    assert len(CASES) >= 60 and len({tuple(a) for a, _ in CASES}) == len(CASES)
    assert {a[0] for a, _ in CASES} >= {"pretrain", "eval", "run", "leaderboard", "compare", "check", "ui", "methods"}


@pytest.mark.parametrize("args, fragment", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(world, args, fragment, capsys, monkeypatch):
    root, port = world
    if "@readonly" in " ".join(args) and (root / "files" / "immutable.txt").read_text() != "True":
        pytest.skip("cannot make a read-only folder here (needs chattr +i as root on ext4)")
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/store/mlflow.db")
    before = snapshot(root)
    capsys.readouterr()
    try:
        code = main([_resolve(a, root, port) for a in args])
    except SystemExit as e:     # argparse exits itself
        code = e.code
    out, err = capsys.readouterr()
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("sslbench: error:"), err
    assert fragment in lines[0], lines[0]
    assert snapshot(root) == before, "a failing command changed what was already written"
    assert not os.path.exists("/tmp/sslbench_bad_inputs_pwned")
