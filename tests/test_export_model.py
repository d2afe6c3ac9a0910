"""`sslbench export`: the encoder leaves sslbench as a plain state dict that timm (or build_backbone) loads
back, offline, to the very features the harness scores."""

import json
import socket

import numpy as np
import pytest
import torch

from harness.models.backbones import build_backbone
from harness.run.export_model import export
from harness.train.build import load_trained_method

TINY = ["method=simclr", "budget.kind=steps", "budget.value=2", "optim.batch_size=16", "train.progress=false",
        "train.precision=fp32", "method_cfg.proj_hidden=32", "method_cfg.proj_dim=16", "--no-eval"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny pretrained checkpoints, made once per backbone/data on demand: runs(backbone, channels)."""
    from harness.cli import main

    root = tmp_path_factory.mktemp("export")
    made = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("HF_HUB_OFFLINE", "1")

        def make(backbone: str, channels: int = 3):
            if (backbone, channels) not in made:
                if channels == 3:
                    data = ["data.name=synthetic"]
                else:   # grayscale, as Fashion-MNIST: an .npz of 1-channel 16 px images
                    rng = np.random.default_rng(0)
                    npz = root / "gray.npz"
                    np.savez(npz, x_train=rng.integers(0, 256, (64, 1, 16, 16), dtype=np.uint8), y_train=np.arange(64) % 4,
                             x_test=rng.integers(0, 256, (32, 1, 16, 16), dtype=np.uint8), y_test=np.arange(32) % 4)
                    data = ["data.name=npz", f"data.data_dir={npz}"]
                out = root / f"runs-{backbone}-{channels}"
                assert main(["pretrain", *TINY, *data, f"backbone={backbone}", f"out_dir={out}"]) == 0
                made[backbone, channels] = next(out.rglob("checkpoint.pt"))
            return made[backbone, channels]

        yield make


@pytest.fixture
def offline(monkeypatch):
    """No network at all while a user's load runs: any connection attempt fails the test."""
    def refuse(*a, **k):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _user_loads_with_timm(card_path):
    """What the JSON tells a timm user to run (the weights file beside it)."""
    import timm

    card = json.loads(card_path.read_text())
    t = card["timm"]
    return card, timm.create_model(t["model_name"], pretrained=True, **t["kwargs"],
                                   pretrained_cfg_overlay=dict(file=str(card_path.parent / card["weights"]),
                                                               **t["pretrained_cfg_overlay"]))


def _features(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("backbone,channels", [("vit_mini_p4", 3), ("vit_mini_p4", 1), ("resnet18", 3),
                                               ("vit_tiny_patch16_224", 3)])   # a timm ViT by name: its img_size kept
def test_timm_loads_the_export_offline_to_the_harness_features(runs, tmp_path, offline, backbone, channels, capsys):
    ckpt = runs(backbone, channels)
    res = export(ckpt, tmp_path / "exp")
    assert res["warnings"] == [] and "sslbench: warning" not in capsys.readouterr().err
    card, model = _user_loads_with_timm(tmp_path / "exp" / "encoder.json")
    assert card["architecture"] == "timm" and card["backbone"] == backbone and card["finished"] is True
    assert card["input_size"] == [channels, 16, 16] and len(card["mean"]) == len(card["std"]) == channels
    method, _, state = load_trained_method(ckpt)
    assert card["mean"] == pytest.approx(list(state["data_info"]["mean"]))
    x = torch.randn(4, channels, 16, 16, generator=torch.Generator().manual_seed(1))
    want = _features(method.encoder(), x)
    assert want.shape == (4, card["features"])
    torch.testing.assert_close(_features(model, x), want, rtol=1e-4, atol=1e-5)
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)   # timm's preprocessing is this encoder's
    assert list(cfg["input_size"]) == card["input_size"] and list(cfg["mean"]) == pytest.approx(card["mean"])
    assert list(cfg["std"]) == pytest.approx(card["std"]) and cfg["crop_pct"] == 1.0


def test_timm_loads_the_export_strictly(runs, tmp_path, offline):
    """A file that lacks a weight is an error, not a silently random-initialised layer."""
    export(runs("vit_mini_p4"), tmp_path / "exp")
    weights = tmp_path / "exp" / "encoder.pth"
    sd = torch.load(weights, weights_only=True)
    sd.pop("blocks.0.norm1.weight")
    torch.save(sd, weights)
    with pytest.raises(RuntimeError, match="Missing key"):
        _user_loads_with_timm(tmp_path / "exp" / "encoder.json")


def test_own_architecture_says_so_and_loads_with_build_backbone(runs, tmp_path):
    ckpt = runs("cnn4")
    res = export(ckpt)                                       # default: export/ beside the checkpoint
    out = ckpt.parent / "export"
    assert res["card"] == out / "encoder.json" and (out / "encoder.pth").is_file()
    card = json.loads((out / "encoder.json").read_text())
    assert card["architecture"] == "sslbench" and "timm" not in card
    assert card["load"].startswith("cnn4 is sslbench's own architecture (timm cannot create it)")
    assert card["sslbench"]["args"] == ["cnn4", 3, 16]
    model = build_backbone(*card["sslbench"]["args"])
    model.load_state_dict(torch.load(out / card["weights"], weights_only=True))
    method, _, _ = load_trained_method(ckpt)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(_features(model, x), _features(method.encoder(), x), rtol=1e-4, atol=1e-5)


def test_a_run_folder_is_accepted_and_an_unfinished_run_is_exported_with_a_warning(runs, tmp_path, capsys):
    ckpt = runs("cnn4")
    state = torch.load(ckpt, weights_only=True)
    state["finished"] = False
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(state, folder / "checkpoint.pt")
    res = export(folder, tmp_path / "exp")                 # the run folder, not the file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslbench: warning:") and "unfinished run" in err[0]
    card = json.loads(res["card"].read_text())
    assert card["finished"] is False and card["step"] == state["step"]
    assert card["source_checkpoint"] == str((folder / "checkpoint.pt").resolve())


def test_a_front_end_before_the_backbone_is_named():
    """Colorization scores its backbone behind RGB -> Lab lightness: the export says so, not silently."""
    from harness.method.contract import DataInfo
    from harness.run.export_model import scored_backbone
    from harness.train.build import build_method
    from harness.train.config import resolve

    info = DataInfo("x", 3, 32, 100, 4, (0.5,) * 3, (0.25,) * 3)
    for method, wrapped in (("colorization", True), ("byol", False)):
        m = build_method(resolve({"method": method, "backbone": "cnn4"}), info)
        module, note = scored_backbone(m)
        assert module is m.backbone
        assert bool(note) == wrapped and (not wrapped or "LightnessEncoder" in note and "bare backbone" in note)


# --- through the CLI (`sslbench export`, wired in harness/cli.py) ------------------------------------


def test_cli_export_and_its_one_line_errors(runs, tmp_path, capsys):
    from harness.cli import main

    assert main(["export", str(runs("cnn4")), "--out", str(tmp_path / "exp")]) == 0
    assert "load with:" in capsys.readouterr().out
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    for bad, says in ((tmp_path / "nope.pt", "no such checkpoint"), (text, "not a checkpoint (not a file torch.save wrote)"),
                      (tmp_path / "exp" / "encoder.pth", "not an sslbench checkpoint")):   # the export itself
        assert main(["export", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sslbench: error:") and says in err[0], err
