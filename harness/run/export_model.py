"""``sslbench export CHECKPOINT``: a pretrained encoder for downstream use, outside sslbench.

Writes, under ``--out`` (default ``export/`` beside the checkpoint):

* ``encoder.pth``: a plain ``state_dict`` of the scored backbone (tensors only: loadable with
  ``torch.load(weights_only=True)``, and by timm's local-file loader);
* ``encoder.json``: how to build the model, its input size, channels and normalisation, where the
  weights came from, and a one-line ``load`` recipe.

Backbones timm builds (any timm model name; our ``vit_*_p4``, which are timm ``VisionTransformer`` s
with small patches) load with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=..., ...), **kwargs)``:
the overlay names the local file (nothing is downloaded), ``num_classes=0`` (so timm loads the file
strictly instead of dropping a classifier and ignoring missing keys) and the input size, mean and std
(so ``timm.data.resolve_data_config(model=model)`` gives this encoder's preprocessing). sslbench's own
architectures (``cnn4``, the CIFAR-stem ResNets, the hybrid ConvViTs) say so and load with
``harness.models.backbones.build_backbone``.

Every recipe written is checked before it is written: the model it builds, with the file loaded, must
give the exported module's features on a fixed input (``verified`` in the JSON). A checkpoint of an
unfinished run is exported with a warning (and ``finished: false`` in the JSON): its weights are what
they are, a crashed long run's are often still worth a probe.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.core.errors import CheckpointError, SSLBenchError
from harness.models.backbones import BACKBONES, build_backbone
from harness.run.plugins import load_plugins
from harness.train.build import file_sha256, load_trained_method

FORMAT = "sslbench-encoder/1"
WEIGHTS, CARD = "encoder.pth", "encoder.json"
# the timm name a registered ViT is written under; its kwargs (read off the module) override the whole architecture
VIT_BASE_NAME = "vit_tiny_patch16_224"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder holding ``checkpoint.pt``."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / "checkpoint.pt").is_file():
        return p / "checkpoint.pt"
    if not p.is_file():
        raise SSLBenchError(f"{path}: no such checkpoint; give a checkpoint.pt written by 'sslbench pretrain' "
                            "(or its run folder)")
    with open(p, "rb") as f:
        head = f.read(4)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":   # torch.save's zip format, or a legacy pickle
        raise CheckpointError(f"{path}: not a checkpoint (not a file torch.save wrote); give a checkpoint.pt "
                              "written by 'sslbench pretrain'")
    return p


def _first_line(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


def scored_backbone(method: nn.Module) -> tuple[nn.Module, str]:
    """The backbone module to export, and a note when the method scores it behind a front end
    (e.g. Colorization's RGB -> Lab lightness): then the weights are the bare backbone's."""
    enc, bb = method.encoder(), method.backbone
    if enc is bb or (type(enc) is type(bb) and set(enc.state_dict()) == set(bb.state_dict())):
        return enc, ""
    what = _first_line(type(enc)) or type(enc).__name__
    return bb, (f"{type(method).name} scores this backbone behind {type(enc).__name__} ({what}); the exported "
                "weights are the bare backbone's: apply that front end to your inputs to get the scored features")


def _vit_kwargs(backbone: nn.Module, in_chans: int, size: int) -> dict[str, Any] | None:
    """timm ``create_model`` kwargs that rebuild one of our registered ViTs, read off the module."""
    from timm.models.vision_transformer import VisionTransformer

    if type(backbone) is not VisionTransformer:
        return None
    patch = backbone.patch_embed.patch_size
    block = backbone.blocks[0]
    return {"img_size": size, "in_chans": in_chans, "patch_size": int(patch[0]) if patch[0] == patch[1] else list(patch),
            "embed_dim": int(backbone.embed_dim), "depth": len(backbone.blocks), "num_heads": int(block.attn.num_heads),
            "mlp_ratio": block.mlp.fc1.out_features / backbone.embed_dim, "global_pool": backbone.global_pool,
            "num_classes": 0}


def _same_features(a: nn.Module, b: nn.Module, in_chans: int, size: int) -> tuple[bool, float]:
    """Whether the two modules give the same features on one fixed input (eval mode, fp32 tolerance),
    and the largest absolute difference."""
    x = torch.randn(2, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fa, fb = a.eval()(x), b.eval()(x)
    if fa.shape != fb.shape:
        return False, float("inf")
    diff = float((fa - fb).abs().max())
    return diff <= 1e-5 + 1e-4 * float(fb.abs().max()), diff


def timm_model(name: str, kwargs: dict[str, Any], overlay: dict[str, Any]) -> nn.Module:
    """What a user's ``timm.create_model`` call from the JSON builds (the file is local: nothing is downloaded)."""
    import timm

    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def _timm_recipe(cfg_backbone: str, backbone: nn.Module, weights: Path, in_chans: int, size: int,
                 mean: list[float], std: list[float]) -> tuple[dict[str, Any] | None, str]:
    """The verified timm recipe ({model_name, kwargs, pretrained_cfg_overlay}) or None, and why not."""
    # num_classes=0 matches the file (no head), so timm loads it strictly: a missing key is an error, not random init;
    # input size, mean, std and crop_pct=1 make timm.data.resolve_data_config(model=...) this encoder's preprocessing
    overlay = {"num_classes": 0, "input_size": [in_chans, size, size], "crop_pct": 1.0,
               **({"mean": mean, "std": std} if mean else {})}
    if cfg_backbone in BACKBONES:
        kw = _vit_kwargs(backbone, in_chans, size)
        if kw is None:
            return None, ""
        candidates = [(VIT_BASE_NAME, kw)]
    else:   # a timm model name: built as build_backbone builds it (img_size where the model takes one)
        base = {"num_classes": 0, "in_chans": in_chans}
        candidates = [(cfg_backbone, {**base, "img_size": size}), (cfg_backbone, base)]
    why = ""
    for name, kw in candidates:
        try:
            model = timm_model(name, kw, {**overlay, "file": str(weights)})
        except TypeError:          # a convnet takes no img_size: the next candidate
            continue
        except (RuntimeError, KeyError, ValueError) as e:
            why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            break
        same, diff = _same_features(model, backbone, in_chans, size)
        if same:
            return {"model_name": name, "kwargs": kw, "pretrained_cfg_overlay": overlay,
                    "verified": f"timm.create_model with this file gives the exported features (max |diff| {diff:.1e})"}, ""
        why = f"its features differ from the exported encoder's (max |diff| {diff:.3g})"
        break
    return None, why


def _write(path: Path, write) -> None:
    """``write(file)`` into ``path`` atomically (a temp file beside it, then a rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        raise SSLBenchError(f"cannot write the export under {path.parent} ({e.strerror or e}); choose another --out") from None


def export(checkpoint: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write ``encoder.pth`` + ``encoder.json`` for ``checkpoint`` under ``out`` (default: ``export/``
    beside it); returns the card plus ``weights`` / ``card`` (the two paths) and ``warnings``."""
    path = resolve_checkpoint(checkpoint)
    load_plugins()   # the checkpoint's method may be a third-party plugin
    method, cfg, state = load_trained_method(path)
    warnings = []
    finished = bool(state.get("finished", False))
    if not finished:
        warnings.append(f"{path} is the checkpoint of an unfinished run (step {state.get('step')}); exporting its "
                        "current weights (encoder.json says finished: false)")
    info = state["data_info"]
    in_chans, size = int(info["channels"]), int(info["image_size"])
    mean, std = [float(v) for v in info.get("mean") or ()], [float(v) for v in info.get("std") or ()]
    backbone, front_end = scored_backbone(method)
    if front_end:
        warnings.append(front_end)
    out_dir = Path(out).expanduser() if out else path.parent / "export"
    weights_path = (out_dir / WEIGHTS).resolve()
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    card: dict[str, Any] = {
        "format": FORMAT, "weights": WEIGHTS, "backbone": cfg.backbone, "method": cfg.method, "seed": cfg.seed,
        "dataset": info.get("name"), "source_checkpoint": str(path.resolve()), "source_sha256": file_sha256(path),
        "finished": finished, "step": state.get("step"),
        "input_size": [in_chans, size, size], "channels": in_chans, "mean": mean, "std": std,
        "normalise": "x = (pixels / 255 - mean) / std per channel, pixels uint8 in [0, 255], NCHW" if mean else
                     "unknown: this checkpoint predates recorded statistics",
        "features": int(getattr(backbone, "num_features", 0)) or None,
        "output": "pooled features (batch, features); no classifier head (num_classes=0)",
    }
    if front_end:
        card["front_end"] = front_end
    _write(out_dir / WEIGHTS, lambda f: torch.save(tensors, f))   # first: the timm recipe is checked against the file
    recipe, why = _timm_recipe(cfg.backbone, backbone, weights_path, in_chans, size, mean, std)
    if recipe:
        card["architecture"] = "timm"
        card["timm"] = recipe
        overlay = {"file": str(weights_path), **recipe["pretrained_cfg_overlay"]}
        card["load"] = (f"import timm; model = timm.create_model({recipe['model_name']!r}, pretrained=True, "
                        f"pretrained_cfg_overlay={overlay!r}, **{recipe['kwargs']!r})")
    else:
        if why:
            warnings.append(f"timm cannot rebuild {cfg.backbone} from the exported file ({why}); "
                            "encoder.json gives the build_backbone recipe instead")
        frames = int(info.get("frames", 1))                 # clips: a video backbone is built for its frames
        own = build_backbone(cfg.backbone, in_chans, size, frames=frames)
        own.load_state_dict(tensors)
        same, diff = _same_features(own, backbone, in_chans, size)
        if not same:
            raise CheckpointError(f"{path}: the exported {cfg.backbone} does not reproduce the checkpoint's features "
                                  f"(max |diff| {diff:.3g}); this is a bug, please report it")
        doc = _first_line(BACKBONES.get(cfg.backbone)) if cfg.backbone in BACKBONES else ""
        card["architecture"] = "sslbench"
        card["sslbench"] = {"builder": "harness.models.backbones.build_backbone",
                            "args": [cfg.backbone, in_chans, size, *([frames] if frames != 1 else [])],
                            **({"about": doc} if doc else {}),
                            "verified": f"build_backbone + load_state_dict gives the exported features (max |diff| {diff:.1e})"}
        card["load"] = (f"{cfg.backbone} is sslbench's own architecture (timm cannot create it): "
                        f"import torch; from harness.models.backbones import build_backbone; "
                        f"model = build_backbone({cfg.backbone!r}, {in_chans}, {size}"
                        f"{f', frames={frames}' if frames != 1 else ''}); "
                        f"model.load_state_dict(torch.load({str(weights_path)!r}, weights_only=True))")
    _write(out_dir / CARD, lambda f: f.write((json.dumps(card, indent=2) + "\n").encode()))
    for w in warnings:
        print(f"sslbench: warning: {w}", file=sys.stderr, flush=True)
    return {**card, "weights": out_dir / WEIGHTS, "card": out_dir / CARD, "warnings": warnings}
