"""Representation Learning by Learning to Count (Noroozi, Pirsiavash & Favaro, 2017).

A feature phi(x) counts visual primitives: the counts of an image must equal the sum of the counts
of its parts. With the image x, its 2x downsampled version D∘x (the same content at the tiles'
resolution), its four 2x2 tiles T_1..T_4∘x (``harness.split_tiles``) and another image y of the
batch (the batch rolled by one), the loss (``methods.losses.counting_loss``, eq. 5) is

    L = ||phi(D∘x) - sum_i phi(T_i∘x)||^2 + max(0, c - ||phi(D∘y) - sum_i phi(T_i∘x)||^2)

The second, contrastive term keeps phi away from the trivial all-zero counter. phi is the backbone
followed by a linear counting layer and a ReLU (counts are non-negative; the paper's 1000-d
output after AlexNet's fc layers). Downsampling is 2x2 average pooling (an anti-aliased bilinear
resize). Paper defaults: c = 10, SGD, LR 1e-4 x batch/256 (the paper: LR 1e-4, batch ~ 256).

``encoder()`` is the backbone, applied by the evaluator to whole images (the counting layer is
discarded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import Method, OptimDefaults, ViewRecipe, at_least, between, check_input_size, register_method, split_tiles
from methods.losses import counting_loss


@dataclass
class CountingConfig:
    margin: float = at_least(10.0, 0)            # c
    count_dim: int = at_least(1000, 1)
    crop_min_scale: float = between(0.5, 0, 1, open_lo=True)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """D: 2x downsampling by 2x2 average pooling."""
    return F.avg_pool2d(x, 2)


@register_method("counting", family="pretext", paper="Noroozi, Pirsiavash & Favaro, 2017 (Learning to Count)",
                 venue="ICCV 2017, arXiv:1708.06734")
class Counting(Method):
    Config = CountingConfig
    optim = OptimDefaults("sgd", base_lr=1e-4, weight_decay=1e-4)

    def __init__(self, backbone, cfg: CountingConfig, info):
        super().__init__(backbone, cfg, info)
        check_input_size(backbone, info.channels, info.image_size // 2, "counting: tiles (half the image side)")
        self.counter = nn.Sequential(nn.Linear(backbone.num_features, cfg.count_dim), nn.ReLU())

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return self.counter(self.backbone(x))

    def training_step(self, batch, step):
        x = batch.views.images[0]
        b = x.shape[0]
        tiles = split_tiles(x, 2)                                         # (B, 4, C, H/2, W/2)
        d = downsample(x)                                                 # (B, C, H/2, W/2)
        # one encoder pass over the 4 tiles and the downsampled image (all at the tiles' resolution)
        out = self.phi(torch.cat([tiles.flatten(0, 1), d], dim=0))
        phi_tiles, phi_d = out[:4 * b].view(b, 4, -1), out[4 * b:]
        phi_dy = phi_d.roll(1, dims=0)                                    # y: another image of the batch
        loss = counting_loss(phi_d, phi_tiles, phi_dy, self.cfg.margin)
        with torch.no_grad():
            gap = (phi_d.float() - phi_tiles.float().sum(1)).pow(2).sum(1).mean()
        return {"loss": loss, "count_gap": gap}
