"""Image folders larger than memory: over ``data.memory_cap_mb`` a folder is streamed from disk (decoded in
``data.workers`` processes, batches in the order of ``batch_indices``) and gives exactly what the same folder held
in memory gives: pixels, statistics, fingerprint (so the run's identity), per-step losses, evaluation; a resumed
streaming run equals an uninterrupted one."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.core.errors import ConfigError, DataError
from harness.data.sources import imagefolder, load_dataset
from harness.data.store import FolderImages, iter_batches, take
from harness.run.pretrain import pretrain
from harness.tracking.query import metric_history
from harness.train.build import trajectory_diff
from harness.train.config import resolve, to_dict
from harness.train.trainer import Trainer

STREAM = {"data.memory_cap_mb": 0.01, "data.workers": 2}   # the folder below decodes to 0.117 MB


def write_folder(root: Path, per_class: int = 64, val: int = 16, size: int = 16) -> Path:
    """An ImageNet-style folder: 2 classes x ``per_class`` train / ``val`` val RGB PNGs of ``size`` px."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for c, colour in enumerate(((180, 40, 40), (40, 40, 180))):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = (rng.integers(0, 80, (size, size, 3)) + np.array(colour)).clip(0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("streaming") / "tiny")


def config(folder: Path, **over):
    return resolve({"method": "simclr", "backbone": "cnn4", "data.name": "imagefolder", "data.data_dir": str(folder),
                    "budget.kind": "steps", "budget.value": 6, "optim.batch_size": 16, "train.progress": False,
                    "train.precision": "fp32", "train.device": "cpu", "method_cfg.proj_hidden": 32,
                    "method_cfg.proj_dim": 16, "eval.protocols": ["knn", "align_uniform"], "eval.knn_k": [5, 20],
                    "eval.au_pairs": 24, "eval.batch_size": 32, **over})


def test_a_streamed_folder_reads_the_same_pixels_statistics_and_fingerprint(folder, capsys):
    mem = imagefolder(str(folder))
    assert "held in memory (decoded 0.117 MB <= data.memory_cap_mb=4096)" in capsys.readouterr().err
    disk = imagefolder(str(folder), memory_cap_mb=0.01, workers=2)
    err = capsys.readouterr().err
    assert "128 train / 32 val images" in err and err.count("\n") == 1
    assert "streamed from disk by 2 worker processes (decoded 0.117 MB > data.memory_cap_mb=0.01)" in err
    assert isinstance(disk.x_train, FolderImages) and disk.streamed and not mem.streamed
    assert tuple(disk.x_train.shape) == tuple(mem.x_train.shape) == (128, 3, 16, 16) and len(disk.x_test) == 32
    assert (disk.mean, disk.std) == (mem.mean, mem.std)                  # exact: integer sums, any chunking
    assert disk.fingerprint() == mem.fingerprint()                       # the same dataset, for run identity too
    idx = torch.tensor([5, 127, 0, 64])
    assert torch.equal(disk.x_train[idx], mem.x_train[idx]) and torch.equal(disk.x_test[3, 1], mem.x_test[3, 1])
    got = [(k.tolist(), x) for k, x in iter_batches(disk.x_train, [idx, slice(10, 14)])]   # in order, by workers
    assert got[0][0] == idx.tolist() and torch.equal(got[0][1], mem.x_train[idx])
    assert got[1][0] == [10, 11, 12, 13] and torch.equal(got[1][1], mem.x_train[10:14])
    sub_disk, sub_mem = disk.subset(20, 8, seed=3), mem.subset(20, 8, seed=3)
    assert sub_disk.streamed and sub_disk.fingerprint() == sub_mem.fingerprint()     # a subset stays on disk
    assert torch.equal(sub_disk.materialised().x_train, sub_mem.x_train)
    assert isinstance(take(disk.x_test, torch.tensor([1, 2])), FolderImages)
    with pytest.raises(DataError, match="not resized after loading"):
        disk.resized(8)


def test_the_knobs_are_validated_and_a_subset_that_fits_is_held_in_memory(folder, capsys):
    for key in ("data.memory_cap_mb", "data.workers"):
        with pytest.raises(ConfigError, match=f"'{key}': must be >= 0"):
            config(folder, **{key: -1})
    ds = load_dataset(config(folder, **{**STREAM, "data.train_subset": 8, "data.memory_cap_mb": 0.1}).data)
    assert not ds.streamed and len(ds.x_train) == 8
    assert "the subsets (8 train / 32 test images, decoded 0.0293 MB) fit data.memory_cap_mb=0.1: held in memory" \
        in capsys.readouterr().err


def test_a_corrupt_image_met_while_streaming_is_one_line(tmp_path):
    root = write_folder(tmp_path / "bad", per_class=4, val=2)
    png = root / "train" / "c1" / "002.png"
    png.write_bytes(png.read_bytes()[:-40])                     # the header reads; the pixels do not
    with pytest.raises(DataError) as e:
        imagefolder(str(root), memory_cap_mb=0, workers=2)      # the statistics pass meets it, in a worker
    assert str(e.value).startswith(f"{png}: unreadable image") and "\n" not in str(e.value)


def test_a_streamed_run_trains_and_evaluates_exactly_as_the_cached_one(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = {}
    for mode, over in (("memory", {}), ("stream", STREAM)):
        cfg = config(folder, **over, **{"tracking.uri": uri, "out_dir": str(tmp_path / mode)})
        state = pretrain(cfg)
        losses = metric_history(state["run_id"], "train/loss", uri)
        out[mode] = (Path(state["checkpoint"]).parent.name, [v for _, v in sorted(losses)], state["metrics"])
    (name_m, loss_m, met_m), (name_s, loss_s, met_s) = out["memory"], out["stream"]
    assert name_m == name_s                        # the same identity: memory_cap_mb / workers are not part of it
    assert len(loss_m) == 6 and loss_s == loss_m   # every step, bit for bit
    for k in ("knn/top1@5", "knn/top1@20", "align", "uniform"):
        assert met_s[k] == met_m[k], k


def test_a_resumed_streaming_run_equals_an_uninterrupted_one(folder, tmp_path):
    cfg = config(folder, **STREAM, **{"train.checkpoint_every_steps": 1})
    ds = load_dataset(cfg.data)
    assert ds.streamed
    logged = {"full": [], "resumed": []}
    full = Trainer(cfg, ds, tmp_path / "a", log_fn=lambda m, s: logged["full"].append((s, m["train/loss"])))
    full.fit()
    Trainer(cfg, ds, tmp_path / "b", log_fn=lambda m, s: logged["resumed"].append((s, m["train/loss"]))).fit(stop_after=3)
    resumed = Trainer(cfg, ds, tmp_path / "b", log_fn=lambda m, s: logged["resumed"].append((s, m["train/loss"])))
    resumed.fit(resume=True)
    assert resumed.step == full.step == 6
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert logged["resumed"] == logged["full"]
    # streamed or held in memory is not the trajectory: a run may resume under another cap / worker count
    assert trajectory_diff(to_dict(cfg), to_dict(config(folder, **{"train.checkpoint_every_steps": 1}))) == []


def test_fine_tuning_on_a_streamed_folder_equals_the_cached_one(folder):
    from evals.finetune import finetune_eval
    from harness.models.backbones import build_backbone

    mem, disk = imagefolder(str(folder)), imagefolder(str(folder), memory_cap_mb=0, workers=2)
    torch.manual_seed(0)
    enc = build_backbone("cnn4", 3, 16)
    kw = dict(steps=3, batch_size=16, lrs=(0.01,), seed=0, precision="fp32", label_fraction=0.5)
    a = finetune_eval(enc, mem.x_train, mem.y_train, mem.x_test, mem.y_test, 2, mem.mean, mem.std, **kw)
    b = finetune_eval(enc, disk.x_train, disk.y_train, disk.x_test, disk.y_test, 2, disk.mean, disk.std, **kw)
    assert a == b
