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
* ``dqn_der`` / ``dqn_nature``: the conv torsos of data-efficient Rainbow (CURL's Atari encoder) and
  of the Nature DQN, for stacked 84x84 Atari frames (``data.name=atari``), flattened, not pooled.
* ``cut_encoder`` (64 base channels, 5 residual blocks: the first half of CUT's ``resnet_9blocks``
  generator) / ``cut_encoder_small`` (16 channels, 3 blocks, for CPU budgets): the encoder of the
  ResNet translation generator (``harness.models.translation``), averaged over a 4x4 grid of cells;
  what CUT trains and the evaluator scores.
* ``video_cnn`` (cnn4's widths) / ``video_cnn_small`` (16-32-64-128): video encoders for clips
  (``harness.data.video``: (B, T*C, H, W)): cnn4 on every frame, a temporal convolution over the
  frames' features, the mean over time (:class:`VideoCNN`). Built with the data's ``frames``; any
  other backbone on clips sees the frames as channels (early fusion).
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


@BACKBONES.register("cut_encoder")
def cut_encoder(in_chans: int = 3, img_size: int = 256) -> nn.Module:
    """CUT's G_enc: the ResNet generator's stem, two downsampling stages and 5 of its 9 residual blocks (256
    channels, pooled over a 4x4 grid: 4096-d)."""
    from harness.models.translation import ResnetEncoder

    return ResnetEncoder(in_chans, ngf=64, n_blocks=5)


@BACKBONES.register("cut_encoder_small")
def cut_encoder_small(in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """G_enc at CPU scale: 16 base channels, 3 residual blocks (64 channels, pooled over a 4x4 grid: 1024-d)."""
    from harness.models.translation import ResnetEncoder

    return ResnetEncoder(in_chans, ngf=16, n_blocks=3)


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


class AtariConv(nn.Module):
    """The convolutional torso of a DQN-family Atari agent on stacked 84x84 frames: conv-ReLU layers
    without padding or pooling, flattened (so the features keep where things are on the screen)."""

    def __init__(self, in_chans: int, img_size: int, layers: tuple[tuple[int, int, int], ...]):
        super().__init__()
        mods: list[nn.Module] = []
        c = in_chans
        for out, k, stride in layers:     # (channels, kernel, stride)
            mods += [nn.Conv2d(c, out, k, stride=stride), nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*mods)
        side = img_size
        for _, k, stride in layers:
            side = (side - k) // stride + 1
        if side < 1:
            raise ConfigError(f"the Atari conv encoder needs larger images than {img_size} px")
        self.num_features = c * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


@BACKBONES.register("dqn_der")
def dqn_der(in_chans: int = 4, img_size: int = 84) -> nn.Module:
    """The encoder of data-efficient Rainbow (van Hasselt et al., 2019), CURL's Atari encoder: 32 5x5
    stride-5 and 64 5x5 stride-5 convolutions, 576-d at 84 px."""
    return AtariConv(in_chans, img_size, ((32, 5, 5), (64, 5, 5)))


@BACKBONES.register("dqn_nature")
def dqn_nature(in_chans: int = 4, img_size: int = 84) -> nn.Module:
    """The Nature DQN encoder (Mnih et al., 2015): 32 8x8/4, 64 4x4/2, 64 3x3/1, 3136-d at 84 px."""
    return AtariConv(in_chans, img_size, ((32, 8, 4), (64, 4, 2), (64, 3, 1)))


class VideoCNN(nn.Module):
    """A small (2+1)D video encoder: ``ConvNet4`` on each frame (shared weights; spatial), then a
    residual temporal convolution (kernel 3, over the frames' pooled features) and the mean over time.
    Input: clips (B, T*C, H, W), frames stacked on the channel axis in time order; output (B, D).
    The temporal convolution makes the features depend on the frames' order (a per-frame network
    averaged over time could not tell a clip from its shuffled or reversed frames)."""

    def __init__(self, in_chans: int, frames: int, widths=(32, 64, 128, 256)):
        super().__init__()
        if frames < 1 or in_chans % frames:
            raise ConfigError(f"a video backbone needs channels divisible by the {frames} frames, got {in_chans}")
        self.frames, self.widths = frames, tuple(widths)
        self.frame_net = ConvNet4(in_chans // frames, widths)
        d = self.frame_net.num_features
        self.temporal = nn.Sequential(nn.Conv1d(d, d, 3, padding=1, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True))
        self.num_features = d

    def reshaped(self, channels_per_frame: int, frames: int) -> "VideoCNN":
        """A new encoder of the same widths for clips of ``frames`` frames of ``channels_per_frame``
        channels (another modality: optical flow, grayscale), initialised afresh."""
        return VideoCNN(channels_per_frame * frames, frames, self.widths)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T*C, H, W) -> the frames' features after the temporal convolution (B, D, T)."""
        b, tc, h, w = x.shape
        f = self.frame_net(x.reshape(b * self.frames, tc // self.frames, h, w)).view(b, self.frames, -1).transpose(1, 2)
        return f + self.temporal(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frame_features(x).mean(dim=2)


@BACKBONES.register("video_cnn")
def video_cnn(in_chans: int = 24, img_size: int = 32, frames: int = 8) -> nn.Module:
    """cnn4 (32-64-128-256) per frame + a temporal convolution: 256-d clip features."""
    return VideoCNN(in_chans, frames, (32, 64, 128, 256))


@BACKBONES.register("video_cnn_small")
def video_cnn_small(in_chans: int = 24, img_size: int = 32, frames: int = 8) -> nn.Module:
    """16-32-64-128 per frame + a temporal convolution: 128-d clip features (CPU minute-scale budgets)."""
    return VideoCNN(in_chans, frames, (16, 32, 64, 128))


VIDEO_BACKBONES = ("video_cnn", "video_cnn_small")   # their builders take the data's frames


def is_video(model: nn.Module) -> bool:
    return isinstance(model, VideoCNN)


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


def build_backbone(name: str, in_chans: int, img_size: int, frames: int = 1) -> nn.Module:
    """Our registry first, then any timm model name (random init, ``num_classes=0``). ``frames``: clips
    of that many frames stacked on the channel axis (a video backbone reads them as frames; any other
    sees ``in_chans`` channels)."""
    if name in VIDEO_BACKBONES:
        model = BACKBONES.get(name)(in_chans=in_chans, img_size=img_size, frames=frames)
    elif name in BACKBONES:
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
