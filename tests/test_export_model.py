"""`sslbench export`: the encoder leaves sslbench as a plain state dict that timm (or build_backbone) loads back."""

import json

import pytest
import torch

from harness.cli import main
from harness.train.build import load_trained_method

TINY = ["method=simclr", "data.name=synthetic", "budget.kind=steps", "budget.value=2", "optim.batch_size=16",
        "train.progress=false", "train.precision=fp32", "method_cfg.proj_hidden=32", "method_cfg.proj_dim=16", "--no-eval"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _pretrain(env, backbone):
    assert main(["pretrain", *TINY, f"backbone={backbone}", "out_dir=runs"]) == 0
    return next((env / "runs").rglob("checkpoint.pt"))


@pytest.mark.parametrize("backbone", ["vit_mini_p4", "resnet18", "cnn4"])
def test_exported_encoder_loads_back_and_gives_the_same_features(env, backbone, capsys):
    ckpt = _pretrain(env, backbone)
    assert main(["export", str(ckpt), "--out", "exp"]) == 0
    assert "load with:" in capsys.readouterr().out
    card = json.loads((env / "exp" / "encoder.json").read_text())
    assert card["input_size"] == [3, 16, 16] and len(card["mean"]) == 3 and card["backbone"] == backbone
    method, _, _ = load_trained_method(ckpt)
    x = torch.randn(4, 3, 16, 16)
    want = method.encoder().eval()(x)
    if "timm" in card:                       # as a timm user would load it, offline
        import timm

        t = card["timm"]
        model = timm.create_model(t["model_name"], pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(env / "exp" / "encoder.pth")), **t["kwargs"])
    else:
        from harness.models.backbones import build_backbone

        assert "sslbench's own architecture" in card["load"]
        model = build_backbone(backbone, 3, 16)
        model.load_state_dict(torch.load(env / "exp" / "encoder.pth", weights_only=True))
    torch.testing.assert_close(model.eval()(x), want, rtol=1e-4, atol=1e-5)
    assert backbone != "cnn4" or "timm" not in card


def test_export_of_a_missing_checkpoint_is_one_line(env, capsys):
    assert main(["export", str(env / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslbench: error:") and "no such checkpoint" in err[0]
