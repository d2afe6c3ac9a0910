"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny, 2021), "Barlow Twins: Self-Supervised
Learning via Redundancy Reduction".

Two distorted views Y^A, Y^B of a batch pass through one shared network (encoder +
projector), giving embeddings Z^A, Z^B (N x D). Each embedding dimension is standardised
along the batch, and the loss drives the cross-correlation matrix

    C_ij = sum_b z^A_bi z^B_bj / N        (z standardised: mean 0, variance 1 over the batch)

towards the identity (eq. 1):

    L = sum_i (1 - C_ii)^2  +  lambda * sum_i sum_{j != i} C_ij^2

The invariance term makes the embedding invariant to the distortions; the redundancy-
reduction term decorrelates its dimensions, which prevents collapse without negatives,
predictors, momentum encoders or stop-gradients (``methods.losses.barlow_twins_loss``).
Under DDP the embeddings are gathered with gradient (``harness.gather_with_grad``), so the batch
statistics and C are over the global batch, as in the paper (which all-reduces C).

Paper defaults: projector 3 layers of 8192 units (Linear-BN-ReLU x 2, then Linear),
lambda = 5e-3, BYOL's asymmetric augmentations (blur 1.0 / 0.1, solarisation 0 / 0.2),
LARS with LR 0.2 x batch/256 for the weights and 0.0048 x batch/256 for biases and BN
parameters (``base_lr_scale`` 0.024 on that group), weight decay 1.5e-6, cosine decay.
``encoder()`` is the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from harness import ConfigError, Method, OptimDefaults, ViewRecipe, at_least, gather_with_grad, mlp, positive, register_method
from methods.losses import barlow_twins_loss


@dataclass
class BarlowTwinsConfig:
    proj_hidden: int = 8192
    proj_dim: int = 8192
    proj_layers: int = at_least(3, 1)
    lambd: float = positive(5e-3, allow_zero=True)   # weight of the redundancy-reduction (off-diagonal) term
    bias_lr_scale: float = 0.024                     # biases/BN LR relative to the weights' (0.0048 / 0.2)
    blur: bool = True


@register_method("barlow_twins", family="redundancy reduction", paper="Zbontar et al., 2021 (Barlow Twins)",
                 venue="ICML 2021, arXiv:2103.03230")
class BarlowTwins(Method):
    Config = BarlowTwinsConfig
    optim = OptimDefaults("lars", base_lr=0.2, weight_decay=1.5e-6)

    def __init__(self, backbone, cfg: BarlowTwinsConfig, info):
        super().__init__(backbone, cfg, info)
        self.projector_head = mlp(backbone.num_features, cfg.proj_hidden, cfg.proj_dim, layers=cfg.proj_layers)

    def view_recipe(self, info):
        return ViewRecipe.byol(info.image_size, blur=self.cfg.blur)

    def training_step(self, batch, step):
        x1, x2 = batch.views.images[:2]
        z1 = self.projector_head(self.backbone(x1))
        z2 = self.projector_head(self.backbone(x2))
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        if z1.shape[0] < 2:
            raise ConfigError("barlow_twins needs at least 2 images per (global) batch to standardise embeddings")
        loss = barlow_twins_loss(z1, z2, self.cfg.lambd)
        return {"loss": loss}

    def param_groups(self):
        groups = super().param_groups()
        groups[1]["base_lr_scale"] = self.cfg.bias_lr_scale
        return groups

    def projector(self):
        return nn.Sequential(self.backbone, self.projector_head)
