"""``sslbench export CHECKPOINT``: a pretrained encoder for downstream use, outside sslbench.

Writes ``encoder.pth`` (a plain ``state_dict`` of the backbone: loadable with
``torch.load(weights_only=True)``) and ``encoder.json`` (how to build the model, its input size,
channels and normalisation). For backbones timm can build, the JSON holds the ``timm.create_model``
name and keyword arguments, and
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file="encoder.pth"), **kwargs)``
loads the weights (offline: the file is local). sslbench's own architectures (``cnn4``, the CIFAR-stem
ResNets, the hybrid ConvViTs) say so and name ``harness.models.backbones.build_backbone`` instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.core.errors import CheckpointError, SSLBenchError
from harness.models.backbones import BACKBONES, build_backbone
from harness.train.build import load_trained_method

# our registered ViTs, as timm builds them: (timm model name, keyword arguments beside img_size/in_chans)
TIMM_EQUIVALENT = {
    "vit_mini_p4": ("vit_tiny_patch16_224", {"patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4,
                                             "global_pool": "avg", "num_classes": 0}),
    "vit_tiny_p4": ("vit_tiny_patch16_224", {"patch_size": 4, "embed_dim": 192, "depth": 12, "num_heads": 3,
                                             "global_pool": "avg", "num_classes": 0}),
}


def _backbone_of(method, name: str, in_chans: int, size: int) -> torch.nn.Module:
    """The method's backbone module (the one ``build_backbone(name)`` makes, with trained weights)."""
    reference = set(build_backbone(name, in_chans, size).state_dict())
    for module in [method.encoder(), *method.modules()]:
        if set(module.state_dict()) == reference:
            return module
    raise CheckpointError(f"cannot find the {name} backbone inside this {type(method).__name__} checkpoint")


def export(checkpoint: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    path = Path(checkpoint)
    if not path.is_file():
        raise SSLBenchError(f"{path}: no such checkpoint; give a checkpoint.pt written by 'sslbench pretrain'")
    method, cfg, state = load_trained_method(path)
    if not state.get("finished", False):
        print(f"sslbench: warning: {path} is an unfinished run's checkpoint (step {state.get('step')}); "
              "exporting its current weights", flush=True)
    info = state["data_info"]
    in_chans, size = int(info["channels"]), int(info["image_size"])
    backbone = _backbone_of(method, cfg.backbone, in_chans, size)
    out_dir = Path(out) if out else path.parent / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "encoder.pth"
    torch.save({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, weights)
    card: dict[str, Any] = {
        "backbone": cfg.backbone, "method": cfg.method, "seed": cfg.seed, "source_checkpoint": str(path.resolve()),
        "input_size": [in_chans, size, size], "mean": list(info["mean"]), "std": list(info["std"]),
        "features": int(getattr(backbone, "num_features", 0)) or None, "weights": weights.name,
        "normalise": "x = (pixels / 255 - mean) / std, per channel",
    }
    if cfg.backbone in TIMM_EQUIVALENT:
        name, kw = TIMM_EQUIVALENT[cfg.backbone]
        card["timm"] = {"model_name": name, "kwargs": {**kw, "img_size": size, "in_chans": in_chans}}
    elif cfg.backbone not in BACKBONES:   # a timm model name used as the backbone
        card["timm"] = {"model_name": cfg.backbone, "kwargs": {"num_classes": 0, "in_chans": in_chans}}
    if "timm" in card:
        t = card["timm"]
        card["load"] = (f"timm.create_model({t['model_name']!r}, pretrained=True, pretrained_cfg_overlay=dict(file="
                        f"{str(weights)!r}), **{t['kwargs']!r})")
    else:
        card["load"] = (f"sslbench's own architecture: from harness.models.backbones import build_backbone; "
                        f"m = build_backbone({cfg.backbone!r}, {in_chans}, {size}); "
                        f"m.load_state_dict(torch.load({str(weights)!r}, weights_only=True))")
    (out_dir / "encoder.json").write_text(json.dumps(card, indent=2) + "\n")
    return {"weights": weights, "card": out_dir / "encoder.json", **card}
