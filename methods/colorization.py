"""Colorful Image Colorization (Zhang, Isola & Efros, 2016).

The network sees only the lightness L of an image in CIE Lab and predicts, at every location of
its output map, a distribution Ẑ over the Q quantised ab colours (10-unit bins of the ab plane
restricted to the sRGB gamut, ``harness.ab_gamut_bins``: computed, not downloaded). Colour
prediction is multimodal (a ball may be red or blue), so it is classification, not regression:

    target Z: the true ab of each location soft-encoded over its 5 nearest bins with a Gaussian
              kernel, sigma = 5 (``harness.soft_encode``);
    L = -sum_{h,w} v(Z_hw) sum_q Z_hwq log Ẑ_hwq

where v rebalances the classes, since desaturated colours dominate natural images: with p~ the
empirical bin distribution of the training set smoothed by a Gaussian (sigma 5),
w ∝ ((1 - lambda) p~ + lambda / Q)^-1 normalised so E_p~[w] = 1, lambda = 0.5, and
v(Z_hw) = w at the nearest bin of the true colour. p~ is measured in one pass over the training set
before the first step (inside the budget; the buffer ``prior`` is saved with the checkpoint).

The prediction is made at the resolution of the backbone's last feature map (``harness.feature_map``:
cnn4 and ResNets) by a 1x1-conv head; targets are the ab values average-pooled to that resolution
(the paper predicts at 1/4 resolution and upsamples; with 32-px images the map is 4 x 4).

Colour is the target, so grayscale data is refused before training (one-line error).
``encoder()`` is the backbone behind a fixed lightness front end: RGB (normalised) -> L -> the
network's input (L / 50 - 1 in every input channel), as the colorization network was trained, so
the evaluator scores the features of the L channel of each test image (as the paper's ImageNet
linear evaluation does). Paper defaults: Adam, LR 3e-5, betas (0.9, 0.99), weight decay 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    ConfigError,
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    ab_gamut_bins,
    at_least,
    between,
    feature_map,
    has_feature_map,
    rebalancing_weights,
    register_method,
    rgb_to_lab,
    smoothed_prior,
    soft_encode,
)
from methods.losses import weighted_soft_cross_entropy


@dataclass
class ColorizationConfig:
    neighbours: int = at_least(5, 1)             # soft-encoding: k nearest bins
    sigma: float = between(5.0, 0, 1e3, open_lo=True)
    rebalance_lambda: float = between(0.5, 0, 1)  # 1: uniform weights; 0: the full inverse prior
    head_hidden: int = at_least(256, 1)
    crop_min_scale: float = between(0.5, 0, 1, open_lo=True)


def lightness_input(lab: torch.Tensor, channels: int) -> torch.Tensor:
    """Lab (B, 3, H, W) -> the network's input: L / 50 - 1 in [-1, 1], repeated over ``channels``."""
    return (lab[:, :1] / 50.0 - 1.0).expand(-1, channels, -1, -1)


def bin_lookup(bins: torch.Tensor, grid: float = 10.0, reach: int = 13) -> torch.Tensor:
    """A (2*reach+1)^2 table from the 10-unit grid cell of an ab value to its nearest in-gamut bin,
    so the nearest bin of every training pixel costs one index (cells outside the gamut map to the
    nearest in-gamut centre)."""
    g = torch.arange(-reach, reach + 1, dtype=torch.float32) * grid
    cells = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).view(-1, 2)
    return torch.cdist(cells, bins).argmin(1)


def nearest_bin(ab: torch.Tensor, lut: torch.Tensor, grid: float = 10.0, reach: int = 13) -> torch.Tensor:
    """ab values (N, 2) -> the index of their nearest in-gamut bin (N,)."""
    q = torch.round(ab / grid).long().clamp(-reach, reach) + reach
    return lut.to(ab.device)[q[:, 0] * (2 * reach + 1) + q[:, 1]]


class LightnessEncoder(nn.Module):
    """What the evaluator scores: normalised RGB -> Lab lightness -> the colorization backbone."""

    def __init__(self, backbone: nn.Module, info):
        super().__init__()
        self.backbone = backbone
        self.info = info
        self.num_features = backbone.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = self.info.denormalize(x.float()).clamp(0, 1)
        return self.backbone(lightness_input(rgb_to_lab(rgb), x.shape[1]).to(x.dtype))


@register_method("colorization", family="pretext", paper="Zhang, Isola & Efros, 2016 (Colorful Image Colorization)",
                 venue="ECCV 2016, arXiv:1603.08511")
class Colorization(Method):
    Config = ColorizationConfig
    requires = Requirements(color=True, convnet=True)   # per-location colours: a spatial feature map
    optim = OptimDefaults("adamw", base_lr=3e-5, weight_decay=1e-3, betas=(0.9, 0.99))

    def __init__(self, backbone, cfg: ColorizationConfig, info):
        super().__init__(backbone, cfg, info)
        if not has_feature_map(backbone):
            raise ConfigError("colorization predicts colours per location: it needs a backbone with a spatial "
                              "feature map (cnn4, cnn4_wide, resnet18_cifar, resnet50_cifar or a timm ResNet)")
        bins = ab_gamut_bins(10.0)
        self.register_buffer("bins", bins.clone(), persistent=False)
        self.register_buffer("lut", bin_lookup(bins), persistent=False)
        q = len(bins)
        self.register_buffer("counts", torch.zeros(q, dtype=torch.float64))   # training-set histogram of bins
        self.register_buffer("weights", torch.ones(q))                          # rebalancing weights w
        d = backbone.num_features
        self.head = nn.Sequential(nn.Conv2d(d, cfg.head_hidden, 1, bias=False), nn.BatchNorm2d(cfg.head_hidden),
                                  nn.ReLU(inplace=True), nn.Conv2d(cfg.head_hidden, q, 1))

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    # ------------------------------------------------------------- the colour prior
    def wants_prepare_pass(self) -> bool:
        return True

    def prepare_batch(self, batch) -> None:
        rgb = self.info.denormalize(batch.views.source.float()).clamp(0, 1)
        ab = rgb_to_lab(rgb)[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2)
        idx = nearest_bin(ab, self.lut)
        self.counts += torch.bincount(idx, minlength=len(self.bins)).double()
        prior = smoothed_prior(self.counts, self.bins, self.cfg.sigma)
        self.weights.copy_(rebalancing_weights(prior, self.cfg.rebalance_lambda))

    # ------------------------------------------------------------- training
    def training_step(self, batch, step):
        x = batch.views.images[0]
        lab = rgb_to_lab(self.info.denormalize(x.float()).clamp(0, 1))
        fmap = feature_map(self.backbone, lightness_input(lab, x.shape[1]).to(x.dtype))
        logits = self.head(fmap)                                              # (B, Q, h, w)
        h, w = logits.shape[-2:]
        ab = F.adaptive_avg_pool2d(lab[:, 1:], (h, w)).permute(0, 2, 3, 1).reshape(-1, 2)
        target = soft_encode(ab, self.bins, self.cfg.neighbours, self.cfg.sigma)
        v = self.weights[nearest_bin(ab, self.lut)]
        flat = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        loss = weighted_soft_cross_entropy(flat, target, v)
        acc = (flat.detach().argmax(1) == target.argmax(1)).float().mean()
        return {"loss": loss, "bin_acc": acc}

    def encoder(self) -> nn.Module:
        return LightnessEncoder(self.backbone, self.info)
