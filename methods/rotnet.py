"""RotNet (Gidaris, Singh & Komodakis, 2018), "Unsupervised Representation Learning by
Predicting Image Rotations".

A pretext task: the network must recognise which of the K = 4 geometric transformations
g_y(X) = rotation of X by y * 90 degrees, y in {0, 1, 2, 3}, was applied to an image. These
rotations are the paper's choice because they are computed exactly (``torch.rot90``: a
transpose and a flip, no interpolation artefacts that would betray the label) and because
recognising them requires understanding the object's class, pose and location. The
ConvNet F(.) is the backbone followed by a K-way classifier; the loss is the average
cross-entropy over all four rotations of every image:

    L = -1/(4N) sum_i sum_{y=0}^{3} log F^y( g_y(X_i) )

As the paper recommends, all four rotated copies of each image are fed in the same batch
(batch 4N), which it found better than sampling one rotation per image. Images come from a
light crop + flip view (``ViewRecipe.light``); views are square, as rotations by 90 degrees
require. Paper defaults (CIFAR-10): SGD, momentum 0.9, LR 0.1, weight decay 5e-4.
``encoder()`` is the backbone (the rotation head is discarded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import ConfigError, Method, OptimDefaults, ViewRecipe, between, mlp, register_method
from methods.losses import rotation_targets


@dataclass
class RotNetConfig:
    head_hidden: int = 0            # 0: linear 4-way classifier on backbone features; > 0: MLP (BN, ReLU)
    crop_min_scale: float = between(0.2, 0, 1, open_lo=True)   # random-resized-crop scale range (crop_min_scale, 1)


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of a square batch (B, C, H, H), stacked [0, 90, 180, 270 degrees]
    (counter-clockwise), and their labels (4B,) in {0, 1, 2, 3}."""
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"rotnet needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    xs = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=0)
    return xs, rotation_targets(x.shape[0], 4, device=x.device)


@register_method("rotnet", family="pretext", paper="Gidaris et al., 2018 (RotNet)", venue="ICLR 2018, arXiv:1803.07728")
class RotNet(Method):
    Config = RotNetConfig
    optim = OptimDefaults("sgd", base_lr=0.1, weight_decay=5e-4)

    def __init__(self, backbone, cfg: RotNetConfig, info):
        super().__init__(backbone, cfg, info)
        d = backbone.num_features
        self.head = mlp(d, cfg.head_hidden, 4, layers=2) if cfg.head_hidden > 0 else nn.Linear(d, 4)

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def training_step(self, batch, step):
        xs, y = rotate_batch(batch.views.images[0])
        if batch.views.images[0].is_contiguous(memory_format=torch.channels_last):
            xs = xs.contiguous(memory_format=torch.channels_last)
        logits = self.head(self.backbone(xs))
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.detach().argmax(dim=1) == y).float().mean()
        return {"loss": loss, "rot_acc": acc}
