"""SimCLR (Chen, Kornblith, Norouzi & Hinton, 2020), "A Simple Framework for Contrastive
Learning of Visual Representations".

Two views of each image pass through the shared encoder f and projector g; z = g(f(x)).
The NT-Xent loss treats the other view of the same image as the positive and the other
2(N-1) views in the batch as negatives. Paper defaults: projector 2048-128 (hidden = encoder
width), tau = 0.5 on CIFAR (0.1-0.2 on ImageNet), LARS with base LR 0.3 x batch/256, WD 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.distributed import gather_with_grad
from harness.method import Method
from harness.nn import mlp
from harness.registry import register_method
from harness.views import ViewRecipe
from methods.losses import nt_xent


@dataclass
class SimCLRConfig:
    temperature: float = 0.1
    proj_hidden: int = 2048
    proj_dim: int = 128
    blur: bool = True
    jitter_strength: float = 1.0
    crop_min_scale: float = 0.08   # random-resized-crop scale range (crop_min_scale, 1)


@register_method("simclr", family="siamese", paper="Chen et al., 2020 (SimCLR)")
class SimCLR(Method):
    Config = SimCLRConfig
    base_lr = 0.3
    weight_decay = 1e-6
    optimizer = "lars"

    def __init__(self, backbone, cfg: SimCLRConfig, info):
        super().__init__(backbone, cfg, info)
        self.projector_head = mlp(backbone.num_features, cfg.proj_hidden, cfg.proj_dim, layers=2)

    def view_recipe(self, info):
        return ViewRecipe.simclr(info.image_size, blur=self.cfg.blur, strength=self.cfg.jitter_strength,
                                 min_scale=self.cfg.crop_min_scale)

    def training_step(self, batch, step):
        x1, x2 = batch.views.images
        z1 = self.projector_head(self.backbone(x1))
        z2 = self.projector_head(self.backbone(x2))
        loss = nt_xent(gather_with_grad(z1), gather_with_grad(z2), self.cfg.temperature)
        return {"loss": loss}

    def projector(self):
        import torch.nn as nn

        return nn.Sequential(self.backbone, self.projector_head)
