"""Backbones: any timm model name, plus small-image variants.

``build_backbone(name, in_chans, img_size)`` returns an ``nn.Module`` mapping images
(B, C, H, W) to pooled features (B, D) with ``.num_features == D``; it is never pretrained
(``pretrained=True`` is never a default, nothing is downloaded).

Small-image variants registered here:

* ``resnet18_cifar`` / ``resnet50_cifar``: timm ResNets with the CIFAR stem (3x3 stride-1
  first conv, no max-pool), as in SimCLR's CIFAR experiments.
* ``vit_tiny_p4`` (192-d, 12 blocks) / ``vit_mini_p4`` (128-d, 6 blocks): timm
  VisionTransformers with 4x4 patches for 28-32 px images.
* ``cnn4`` (32-64-128-256) / ``cnn4_wide`` (64-128-256-512): 4-block conv nets for
  minute-scale CPU budgets.
* ``convvit_mini`` / ``convvit_base``: ConvMAE's hybrid (convolution stages, then Transformer
  blocks; ``harness.models.hybrid``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from harness.core.errors import ConfigError, did_you_mean
from harness.core.registry import Registry

BACKBONES: Registry = Registry("backbone")


def _timm():
    import timm

    return timm


@BACKBONES.register("resnet18_cifar")
def resnet18_cifar(in_chans: int = 3, img_size: int = 32) -> nn.Module:
    return _cifar_resnet("resnet18", in_chans)


@BACKBONES.register("resnet50_cifar")
def resnet50_cifar(in_chans: int = 3, img_size: int = 32) -> nn.Module:
    return _cifar_resnet("resnet50", in_chans)


def _cifar_resnet(name: str, in_chans: int) -> nn.Module:
    m = _timm().create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    m.conv1 = nn.Conv2d(in_chans, m.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


def _vit(img_size: int, in_chans: int, dim: int, depth: int, heads: int, patch: int = 4) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    if img_size % patch:
        raise ConfigError(f"a ViT with {patch}x{patch} patches needs an image size divisible by {patch}, got {img_size}")
    return VisionTransformer(img_size=img_size, patch_size=patch, in_chans=in_chans, num_classes=0,
                             embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=4.0, global_pool="avg")


@BACKBONES.register("vit_tiny_p4")
def vit_tiny_p4(in_chans: int = 3, img_size: int = 32) -> nn.Module:
    return _vit(img_size, in_chans, 192, 12, 3)


@BACKBONES.register("vit_mini_p4")
def vit_mini_p4(in_chans: int = 3, img_size: int = 32) -> nn.Module:
    return _vit(img_size, in_chans, 128, 6, 4)


@BACKBONES.register("convvit_mini")
def convvit_mini(in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """ConvMAE's hybrid for 28-32 px: stride-2 conv stages of 64 and 96 channels (1 block each), then 4
    Transformer blocks of 128-d on the 4-px grid (the same 8x8 grid as vit_mini_p4 at 32 px)."""
    from harness.models.hybrid import ConvViT

    return ConvViT(in_chans, img_size, widths=(64, 96, 128), depths=(1, 1, 4), strides=(2, 2, 1), heads=4)


@BACKBONES.register("convvit_base")
def convvit_base(in_chans: int = 3, img_size: int = 224) -> nn.Module:
    """ConvMAE-Base: strides 4, 2, 2; widths 256, 384, 768; depths 2, 2, 11; 12 heads."""
    from harness.models.hybrid import ConvViT

    return ConvViT(in_chans, img_size, widths=(256, 384, 768), depths=(2, 2, 11), strides=(4, 2, 2), heads=12)


class ConvNet4(nn.Module):
    """Four conv-BN-ReLU blocks, each followed by 2x2 max-pool (the last by global average pool)."""

    def __init__(self, in_chans: int = 3, widths=(64, 128, 256, 512)):
        super().__init__()
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


@BACKBONES.register("cnn4")
def cnn4(in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """The CPU preset backbone: 32-64-128-256 channels, 256-d features (~930 img/s for two
    32 px SimCLR views in bf16 on 2 cores)."""
    return ConvNet4(in_chans, (32, 64, 128, 256))


@BACKBONES.register("cnn4_wide")
def cnn4_wide(in_chans: int = 3, img_size: int = 32) -> nn.Module:
    return ConvNet4(in_chans, (64, 128, 256, 512))


def is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def is_convnet(model: nn.Module) -> bool:
    return not is_vit(model) and any(isinstance(m, nn.Conv2d) for m in model.modules())


def check_input_size(backbone: nn.Module, channels: int, size: int, what: str) -> None:
    """Refuse, with one clear error, inputs of ``size`` px that the backbone cannot take (a convnet
    whose pooling runs out of pixels on small tiles); a forward pass of two blank inputs in eval
    mode (running statistics untouched)."""
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(2, channels, size, size))
    except (RuntimeError, ValueError, AssertionError) as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what} of {size} px are too small for the backbone {type(backbone).__name__} ({first}); "
                          "enlarge them (e.g. method_cfg.view_size) or choose another backbone") from None
    finally:
        backbone.train(was)


def build_backbone(name: str, in_chans: int, img_size: int) -> nn.Module:
    """Our registry first, then any timm model name (random init, ``num_classes=0``)."""
    if name in BACKBONES:
        model = BACKBONES.get(name)(in_chans=in_chans, img_size=img_size)
    else:
        timm = _timm()
        if not timm.is_model(name):
            known = BACKBONES.names() + timm.list_models()
            raise ConfigError(
                f"unknown backbone '{name}'{did_you_mean(name, known)}; use one of {', '.join(BACKBONES.names())} "
                "or any timm model name (timm.list_models())"
            )
        kwargs = {"pretrained": False, "num_classes": 0, "in_chans": in_chans}
        try:
            model = timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError:  # convnets take no img_size
            model = timm.create_model(name, **kwargs)
    if not hasattr(model, "num_features"):
        with torch.no_grad():
            model.num_features = model(torch.zeros(2, in_chans, img_size, img_size)).shape[1]
    return model


# ----------------------------------------------------------------------------- spatial feature maps (dense methods)


def _is_timm_resnet(backbone: nn.Module) -> bool:
    try:
        from timm.models.resnet import ResNet
    except ImportError:  # pragma: no cover
        return False
    return isinstance(backbone, ResNet)


def has_feature_map(backbone: nn.Module) -> bool:
    return isinstance(backbone, ConvNet4) or _is_timm_resnet(backbone)


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last spatial feature map (B, D, h, w), before global pooling.

    Supported: ``ConvNet4`` (cnn4, cnn4_wide) and timm ResNets (resnet18_cifar, resnet50_cifar,
    any timm ``resnet*``), via ``forward_features``. Anything else is refused: ViTs, and models
    whose ``forward_features`` layout differs (e.g. channels-last Swin), would need their own rule.
    """
    if isinstance(backbone, ConvNet4):
        return backbone.features(x)
    if _is_timm_resnet(backbone):
        return backbone.forward_features(x)
    raise ConfigError(f"pixel-level methods need a backbone with a spatial feature map (cnn4, cnn4_wide, resnet18_cifar, "
                      f"resnet50_cifar or a timm ResNet); got {type(backbone).__name__}")
