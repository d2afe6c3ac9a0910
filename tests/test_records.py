"""Trustworthy records: run identity (no mixing in leaderboards or compare), stratified subsets,
evaluation of a checkpoint logged where it belongs, one owner per run folder, stale temp files,
failures that end their MLflow run, escaped HTML, and a full disk during a checkpoint write."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.cli import main
from harness.core.errors import CheckpointError, SSLBenchError
from harness.data.dataset import stratified_take
from harness.data.sources import load_dataset
from harness.report.compare import compare, load_selection, not_comparable
from harness.report.export import export_leaderboard
from harness.report.leaderboard import build
from harness.tracking.query import fetch_runs
from harness.tracking.runs import TrackedRun
from harness.train.config import resolve

TINY = ["budget.kind=steps", "budget.value=2", "optim.batch_size=16", "train.progress=false", "train.precision=fp32",
        "eval.protocols=[knn]", "eval.knn_k=[5]", "backbone=cnn4", "method_cfg.proj_hidden=32", "method_cfg.proj_dim=16"]


def image_folder(root: Path, name: str = "digits", size: int = 20, per_class: int = 12) -> Path:
    """A small ImageNet-style folder (train/ and val/, two classes), ordered by class on disk."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 6)):
        for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            d = root / name / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = (rng.integers(0, 60, (size, size, 3)) + np.array(colour)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root / name


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def test_subsets_are_stratified_seeded_and_exact():
    y = torch.arange(1000) // 100          # ordered by class, as an image folder is
    take = stratified_take(y, 50, seed=0)
    assert len(take) == 50 and torch.bincount(y[take], minlength=10).tolist() == [5] * 10
    assert torch.equal(take, stratified_take(y, 50, seed=0)) and not torch.equal(take, stratified_take(y, 50, seed=1))
    uneven = torch.tensor([0] * 7 + [1] * 3)
    assert torch.bincount(uneven[stratified_take(uneven, 5, 0)]).tolist() == [4, 1]   # largest remainder


def test_an_image_folder_subset_holds_every_class_and_its_name(env):
    folder = image_folder(env)
    cfg = resolve({"data.name": "imagefolder", "data.data_dir": str(folder), "data.image_size": 16,
                   "data.train_subset": 6})
    ds = load_dataset(cfg.data)
    assert ds.name == "digits" and len(ds.x_train) == 6 and sorted(ds.y_train.tolist()) == [0, 0, 0, 1, 1, 1]


def test_image_size_and_dataset_folder_stay_separate_and_refuse_to_pair(env):
    folder = image_folder(env)
    other = image_folder(env / "elsewhere", size=20)   # the same name and pixels ...
    (other / "train" / "class0" / "000.png").unlink()  # ... one image fewer: other contents
    base = ["pretrain", "method=simclr", "data.name=imagefolder", *TINY, f"out_dir={env / 'runs'}"]
    assert main([*base, f"data.data_dir={folder}", "data.image_size=16", "tracking.experiment=a"]) == 0
    assert main([*base, f"data.data_dir={folder}", "data.image_size=24", "tracking.experiment=b"]) == 0
    assert main([*base, f"data.data_dir={other}", "data.image_size=16", "tracking.experiment=c"]) == 0
    assert main([*base, f"data.data_dir={folder}", "data.image_size=16", "tracking.experiment=d"]) == 0  # = a
    runs = fetch_runs(None)
    assert set(runs["tags.dataset"]) == {"digits"}                    # the folder's name, not 'imagefolder'
    assert all("-digits-" in n for n in runs["run_name"])
    tables = build(runs)
    assert len(tables) == 3, [t.dataset for t in tables]               # 16 px / 24 px / the other folder
    assert all(len(t.frame) == 1 for t in tables) and all(t.notes for t in tables)
    assert all("digits (data " in t.dataset for t in tables)
    # compare: different image size or folder never pairs; the same configuration does
    a, b, c, d = (load_selection(f"experiment:{x}") for x in "abcd")
    with pytest.raises(SSLBenchError, match="measured the same way"):
        compare(a, b, ["knn/top1@5"], 1.0)
    with pytest.raises(SSLBenchError, match="measured the same way"):
        compare(a, c, ["knn/top1@5"], 1.0)
    assert "not compared" in not_comparable(a, b)[0]
    rows = compare(a, d, ["knn/top1@5"], 1.0)
    assert len(rows) == 1 and rows[0].verdict == "insufficient seeds (n=1)"


def test_one_configuration_two_ways_in_one_table_is_said_not_mixed(env):
    base = ["pretrain", "method=simclr", "data.name=synthetic", *TINY, f"out_dir={env / 'runs'}"]
    assert main(base) == 0
    assert main([*base, "method_cfg.temperature=0.5"]) == 0      # another configuration, same name/budget/seed
    tables = build(fetch_runs(None))
    assert len(tables) == 1 and len(tables[0].frame) == 2
    assert any("2 configurations" in n and "temperature" in n for n in tables[0].notes)
    # the two live in two run folders (their configuration is part of the folder name)
    assert len(list((env / "runs" / "sslbench").glob("simclr-cnn4-synthetic-2steps-s0-*"))) == 2


def test_a_rerun_supersedes_its_older_record_only(env):
    base = ["pretrain", "method=simclr", "data.name=synthetic", *TINY, f"out_dir={env / 'runs'}"]
    assert main(base) == 0 and main(base) == 0                   # a rerun of the same configuration
    runs = fetch_runs(None)
    assert len(runs) == 2
    t = build(runs)
    assert len(t) == 1 and len(t[0].frame) == 1 and len(t[0].run_ids) == 1


def test_eval_of_a_checkpoint_logs_to_its_experiment_and_writes_only_where_the_user_says(env):
    assert main(["pretrain", "method=simclr", "data.name=synthetic", *TINY, "tracking.experiment=mine",
                 f"out_dir={env / 'runs'}", "--no-eval"]) == 0
    ckpt = next((env / "runs").glob("mine/*/checkpoint.pt"))
    state = torch.load(ckpt, weights_only=True)
    state["config"]["out_dir"] = str(env / "evil")                # a crafted checkpoint: paths of its own
    state["config"]["data"]["data_dir"] = str(env / "evil-data")
    torch.save(state, ckpt)
    assert main(["eval", str(ckpt), "eval.protocols=[knn]", "eval.knn_k=[5]", f"out_dir={env / 'evalout'}"]) == 0
    assert not (env / "evil").exists() and (env / "evalout" / "feature-cache").exists()
    runs = fetch_runs(["mine"])
    assert len(runs) == 1 and runs["metrics.knn/top1@5"].notna().all()     # the checkpoint's own record
    assert not fetch_runs(["sslbench"]).shape[0]


def test_a_failure_during_evaluation_ends_the_run_failed(env, monkeypatch):
    import harness.run.pretrain as pre

    def broken(*a, **k):
        raise IndexError("labels out of range")

    monkeypatch.setattr(pre, "evaluate_encoder", broken)
    with pytest.raises(IndexError):
        pre.pretrain(resolve({"method": "simclr", "data.name": "synthetic", "budget.kind": "steps", "budget.value": 2,
                              "optim.batch_size": 16, "train.progress": False, "out_dir": str(env / "runs")}))
    runs = fetch_runs(None, status="FAILED")
    assert len(runs) == 1 and "labels out of range" in runs["tags.error"].iloc[0]
    assert fetch_runs(None, status="RUNNING").empty


def test_a_run_folder_has_one_owner_and_stale_temp_files_are_swept(env):
    from harness.run.lifecycle import RunBusy, RunDir

    folder = env / "runs" / "x"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt.abc123.tmp").write_bytes(b"partial")
    code = "import sys, time; from harness.run.lifecycle import RunDir\nwith RunDir(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not (folder / "checkpoint.pt.abc123.tmp").exists()
        with pytest.raises(RunBusy, match=f"pid {holder.pid}"):
            RunDir(folder).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with RunDir(folder):     # the kernel dropped the dead owner's lock
        pass


def test_the_html_leaderboard_escapes_store_content(env):
    hostile = "<script>alert(1)</script>"
    with TrackedRun("x" + hostile, "r", params={"method": "m", "backbone": hostile, "data.name": "d", "seed": 0,
                                                "budget.kind": "steps", "budget.value": 1.0},
                    tags={"dataset": hostile, "command": f"sslbench {hostile}"}) as run:
        run.log_metrics({"knn/top1@20": 50.0})
    _, paths = export_leaderboard(None, None, env / "out", command=hostile)
    page = next(p for p in paths if p.suffix == ".html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from harness.core import checkpoint as ckpt

    path = tmp_path / "checkpoint.pt"
    ckpt.save_atomic({"model": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def full_disk(obj, f):
        real_save(obj, f)   # a partial write ...
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        ckpt.save_atomic({"model": {"w": torch.zeros(3)}}, path)
    assert torch.equal(ckpt.load(path)["model"]["w"], torch.ones(3))
    assert list(tmp_path.glob("*.tmp")) == []


def test_compare_with_one_seed_gives_no_verdict(tmp_path):
    import pandas as pd

    a = pd.DataFrame({"method": ["m"], "dataset": ["d"], "backbone": ["b"], "budget": ["steps=1.0"], "seed": ["0"],
                      "config_id": ["c"], "protocol": ["p"], "knn/top1@20": [50.0]})
    b = a.assign(**{"knn/top1@20": [48.9]})
    rows = compare(a, b, ["knn/top1@20"], 1.0)
    assert rows[0].verdict == "insufficient seeds (n=1)"
    a2 = pd.concat([a, a.assign(seed="1", **{"knn/top1@20": [50.2]})])
    b2 = pd.concat([b, b.assign(seed="1", **{"knn/top1@20": [49.0]})])
    assert compare(a2, b2, ["knn/top1@20"], 1.0)[0].verdict == "regression"


def test_runs_json_state_survives_garbage(env):
    """A run.json left unreadable (e.g. a full disk) counts as absent: the run starts over, no traceback."""
    base = ["pretrain", "method=simclr", "data.name=synthetic", *TINY, f"out_dir={env / 'runs'}"]
    assert main(base) == 0
    (next((env / "runs").glob("*/*/run.json"))).write_text("{not json")
    assert main([*base, "--resume"]) == 0
    assert json.loads(next((env / "runs").glob("*/*/run.json")).read_text())["evaluated"] is True


def test_no_traceback_when_the_store_folder_is_a_file(env):
    (env / "blocker").write_text("x")
    with pytest.raises(SSLBenchError, match="cannot create the tracking store's folder"):
        TrackedRun("e", "r", uri=f"sqlite:///{env}/blocker/sub/m.db")
    assert os.path.isfile(env / "blocker")


def test_seconds_spent_on_other_hardware_never_share_a_row_nor_a_resume(env, monkeypatch):
    import harness.train.trainer as trainer_mod

    steps = ["pretrain", "method=simclr", "data.name=synthetic", *TINY, f"out_dir={env / 'runs'}"]
    secs = [a if a != "budget.kind=steps" else "budget.kind=seconds" for a in steps]
    secs = [a if a != "budget.value=2" else "budget.value=0.5" for a in secs]
    assert main([*steps, "tracking.experiment=steps"]) == 0      # a step budget: the hardware is no part of it
    assert "params.train.resolved.hardware" not in fetch_runs(["steps"]) or \
        fetch_runs(["steps"])["params.train.resolved.hardware"].isna().all()
    for chip in ("CPU A, 2 threads", "CPU B, 2 threads"):
        monkeypatch.setattr(trainer_mod, "hardware", lambda device, processes, chip=chip: chip)
        assert main([*secs, "tracking.experiment=secs", f"out_dir={env / chip[:5]}"]) == 0
    runs = fetch_runs(["secs"])
    assert sorted(runs["params.train.resolved.hardware"]) == ["CPU A, 2 threads", "CPU B, 2 threads"]
    tables = build(runs)
    assert len(tables) == 1 and len(tables[0].frame) == 2          # two rows: the same seconds bought other work
    assert any("train.resolved.hardware" in n for n in tables[0].notes)
    # resuming a seconds budget on other hardware is refused in one line (the record stays as it was)
    folder = next((env / "CPU B").rglob("run.json")).parent
    state = json.loads((folder / "run.json").read_text())
    state["evaluated"] = False
    (folder / "run.json").write_text(json.dumps(state))
    monkeypatch.setattr(trainer_mod, "hardware", lambda device, processes: "CPU C, 2 threads")
    assert main([*secs, "tracking.experiment=secs", f"out_dir={env / 'CPU B'}", "--resume"]) == 2


def test_curves_are_dense_enough_to_plot_for_every_budget_kind(env):
    from harness.tracking.query import metric_history
    from harness.train.trainer import CURVE_POINTS

    base = ["pretrain", "method=simclr", "data.name=synthetic", *TINY, f"out_dir={env / 'runs'}", "--no-eval"]
    steps = [a if a != "budget.value=2" else "budget.value=30" for a in base]
    assert main([*steps, "tracking.experiment=steps"]) == 0
    secs = [a if a != "budget.kind=steps" else "budget.kind=seconds" for a in base]
    secs = [a if a != "budget.value=2" else "budget.value=4" for a in secs] + ["train.threads=1"]
    assert main([*secs, "tracking.experiment=secs"]) == 0
    for exp in ("steps", "secs"):
        run = fetch_runs([exp]).iloc[0]
        n = int(run["metrics.pretrain/steps"])
        loss = metric_history(run["run_id"], "train/loss")
        rate = metric_history(run["run_id"], "train/img_per_s")
        assert len(loss) == len(rate) and all(v > 0 for _, v in rate)
        if exp == "steps":
            assert [s for s, _ in loss] == list(range(1, 31))                # 30 steps: every one
        else:
            assert len(loss) >= min(n, CURVE_POINTS) * 0.9 and len(loss) >= 2, (len(loss), n)   # every step when few


def test_a_random_init_floor_is_one_row_whatever_the_captions_and_zero_shot_knobs():
    """Captions are read by training only, and the zero-shot class names follow from the dataset: a
    suite with clip (templated captions) and cmc gets one random-init row, in the same table as both."""
    import pandas as pd

    from harness.core.identity import identity
    from harness.report.leaderboard import _protocol_key

    floor = {"method": "random_init", "backbone": "cnn4", "seed": "0", "data.name": "cifar10", "data.image_size": "None"}
    assert identity(floor) == identity({**floor, "data.captions": "templated", "data.caption_template": "x {class}"})
    trained = {"method": "clip", "backbone": "cnn4", "seed": "0", "data.name": "cifar10"}
    assert identity(trained) != identity({**trained, "data.captions": "templated"})   # training reads them
    row = {"params.eval/protocols": "knn,zero_shot", "params.eval/knn_k": "[20]"}
    assert _protocol_key(pd.Series(row)) == _protocol_key(pd.Series({**row, "params.eval/zero_shot_class_names": "dataset"}))
    assert _protocol_key(pd.Series(row)) != _protocol_key(pd.Series({**row, "params.eval/knn_k": "[10]"}))


def test_background_augmentation_rows_say_so_beside_the_plain_rows(env):
    """views.background changes the result: its runs are their own row, labelled with the mode."""
    base = ["pretrain", "method=simclr", "data.name=synthetic", *TINY, f"out_dir={env / 'runs'}"]
    assert main(base) == 0 and main([*base, "views.background=random"]) == 0
    (table,) = build(fetch_runs(None))
    labels = sorted(m.split(" [")[0] + (" +bg:random" if "+bg:random" in m else "") for m in table.frame["method"])
    assert labels == ["simclr", "simclr +bg:random"], list(table.frame["method"])
    # the random-init floor of a suite run with the option trains nothing: one unlabelled row
    floor = ["eval", "cnn4", "data.name=synthetic", "eval.protocols=[knn]", "eval.knn_k=[5]", "train.progress=false",
             f"out_dir={env / 'floor'}"]
    assert main(floor) == 0 and main([*floor, "views.background=random"]) == 0
    tables = build(fetch_runs(None))
    floors = [m for t in tables for m in t.frame["method"] if m.startswith("random_init")]
    assert floors == ["random_init"], floors


def test_an_unset_key_is_the_same_identity_whether_none_text_or_absent():
    """MLflow stores None as 'None': a config key added later (unset) must not split new runs from older
    records that lack it, nor the run-time identity from the one a leaderboard recomputes from the store."""
    from harness.core.identity import identity

    old = {"method": "simclr", "seed": "0", "data.name": "cifar10"}
    assert identity({**old, "data.validation": "None", "data.game": None}) == identity(old)
    assert identity({**old, "data.validation": "5000"}) != identity(old)
