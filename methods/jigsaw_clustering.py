"""Jigsaw Clustering (Chen, Liu & Jia, 2021), "Jigsaw Clustering for Unsupervised Visual
Representation Learning" (JigClu).

Each image of a batch (one augmented view per image) is cut into m x m tiles
(``harness.split_tiles``); the B * m^2 tiles are shuffled *across the batch* and put back together
(``harness.assemble``) into B montage images, each made of tiles of different images at random
positions. One encoder pass over the montages gives a feature map; the region of the map under each
tile, average-pooled, is that tile's feature. Two losses train it:

* clustering: tiles cut from the same source image are positives, every other tile a negative:
  a supervised-contrastive loss (``methods.losses.supervised_contrastive``) on the MLP-projected,
  normalised tile features, temperature tau;
* location: an m^2-way classifier predicts each tile's position in its *original* image.

    L = L_cluster + L_location

The montage bookkeeping (``make_montages``): ``source[j]`` and ``position[j]`` are the image and the
original position of the tile placed at slot j (montage j // m^2, position j % m^2).
Paper defaults: m = 2, tau = 0.2 (MoCo-style), SGD LR 0.03 x batch/256, weight decay 1e-4, a
2-layer MLP projector (2048-d hidden, 128-d out).

Needs a backbone with a spatial feature map (cnn4 at 32 px: 4 x 4, each tile a 2 x 2 region).
``encoder()`` is the backbone, applied by the evaluator to whole (un-shuffled) images.
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
    assemble,
    at_least,
    between,
    feature_map,
    has_feature_map,
    mlp,
    register_method,
    split_tiles,
)
from methods.losses import supervised_contrastive


@dataclass
class JigsawClusteringConfig:
    grid: int = between(2, 2, 8)                  # m
    temperature: float = between(0.2, 0, 10, open_lo=True)
    proj_hidden: int = at_least(2048, 1)
    proj_dim: int = at_least(128, 1)
    location_weight: float = at_least(1.0, 0)
    blur: bool = True


def make_montages(x: torch.Tensor, m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffle the m x m tiles of a batch (B, C, H, W) across the batch into B montages.

    Returns the montages (B, C, H, W) and, for each tile slot j in 0..B*m^2-1 (montage j // m^2,
    position j % m^2), the source image ``source[j]`` and the tile's original position ``position[j]``."""
    b = x.shape[0]
    k = m * m
    tiles = split_tiles(x, m).flatten(0, 1)                                  # (B*k, C, t, t), index = img*k + pos
    perm = torch.randperm(b * k, generator=gen, device=x.device)             # slot j holds tile perm[j]
    montages = assemble(tiles[perm].view(b, k, *tiles.shape[1:]))
    return montages, perm // k, perm % k


def region_features(fmap: torch.Tensor, m: int) -> torch.Tensor:
    """(B, D, h, w) -> (B*m^2, D): the average of the map under each of the m x m tile regions, in slot order.

    Adaptive pooling: when m does not divide the map's side (cnn4 at 28 px: 3 x 3), neighbouring
    regions share the middle row/column of cells."""
    b, d, h, w = fmap.shape
    pooled = F.adaptive_avg_pool2d(fmap, m)                                  # (B, D, m, m)
    return pooled.permute(0, 2, 3, 1).reshape(b * m * m, d)


@register_method("jigsaw_clustering", family="pretext", paper="Chen et al., 2021 (Jigsaw Clustering)",
                 venue="CVPR 2021, arXiv:2104.00323")
class JigsawClustering(Method):
    Config = JigsawClusteringConfig
    requires = Requirements(convnet=True)   # tile regions pooled from a spatial feature map
    optim = OptimDefaults("sgd", base_lr=0.03, weight_decay=1e-4)

    def __init__(self, backbone, cfg: JigsawClusteringConfig, info):
        super().__init__(backbone, cfg, info)
        if not has_feature_map(backbone):
            raise ConfigError("jigsaw_clustering pools tile regions of the feature map: it needs a backbone with a spatial "
                              "feature map (cnn4, cnn4_wide, resnet18_cifar, resnet50_cifar or a timm ResNet)")
        if info.image_size % cfg.grid:
            raise ConfigError(f"jigsaw_clustering: {info.image_size}-px images do not split into {cfg.grid}x{cfg.grid} tiles")
        d = backbone.num_features
        self.proj = mlp(d, cfg.proj_hidden, cfg.proj_dim, layers=2)
        self.locator = nn.Linear(d, cfg.grid * cfg.grid)

    def view_recipe(self, info):
        return ViewRecipe.simclr(info.image_size, n=1, blur=self.cfg.blur, min_scale=0.2)

    def training_step(self, batch, step):
        x = batch.views.images[0]
        m = self.cfg.grid
        montages, source, position = make_montages(x, m, step.generator)
        if x.is_contiguous(memory_format=torch.channels_last):
            montages = montages.contiguous(memory_format=torch.channels_last)
        f = region_features(feature_map(self.backbone, montages), m)           # (B*m^2, D), slot order
        cluster = supervised_contrastive(self.proj(f), source, self.cfg.temperature)
        logits = self.locator(f)
        location = F.cross_entropy(logits.float(), position)
        loss = cluster + self.cfg.location_weight * location
        acc = (logits.detach().argmax(1) == position).float().mean()
        return {"loss": loss, "cluster_loss": cluster.detach(), "location_loss": location.detach(), "loc_acc": acc}
