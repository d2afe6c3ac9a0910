"""MoCo v3 (Chen, Xie & He, 2021), "An Empirical Study of Training Self-Supervised Vision
Transformers".

MoCo without the queue. Two crops x1, x2 of each image are encoded by a query encoder f_q
(backbone, projection MLP, and a prediction MLP) into q1, q2, and by a momentum encoder f_k
(backbone and projection MLP, no predictor) into k1, k2. The momentum encoder is an EMA of
the query encoder's backbone and projector (``harness.EMATeacher``),

    theta_k <- m theta_k + (1 - m) theta_q,   m from 0.99 to 1 by a cosine over training,

updated after each optimiser step. The keys of the same batch are the dictionary: the
positive of q1 is k2 of the same image and the negatives are the keys of the other images
(gathered from every process under DDP). The loss is the symmetrised InfoNCE of Algorithm 1,
scaled by 2 tau as in the paper's code (``methods.losses.moco_v3_loss``):

    L = 2 tau [ctr(q1, k2) + ctr(q2, k1)],
    ctr(q, k) = 1/N sum_i -log( exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau) )

Instability of ViTs: the paper freezes the randomly initialised patch projection (the
first layer) of a ViT backbone, which removes the loss spikes ("random patch projection");
``freeze_patch_embed`` does this for timm ViTs and is ignored for convnets.

Architecture (paper): projector MLP hidden 4096, output 256, every layer with BN, the output
BN without affine; 2 layers for ResNet, 3 for ViT (``proj_layers = 0`` picks by backbone);
predictor 2 layers, hidden 4096. Augmentation: BYOL's (blur 1.0 / 0.1, solarisation 0 /
0.2). Defaults: tau = 0.2 (the ViT setting; the ResNet-50 recipe uses tau = 1.0); ResNet:
LARS, LR 0.6 x batch/256 (class defaults here), weight decay 1e-6; ViT: AdamW, LR 1.5e-4 x
batch/256, weight decay 0.1 (set in configs). ``encoder()`` is the query backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness import (
    EMATeacher,
    Method,
    OptimDefaults,
    ViewRecipe,
    at_least,
    between,
    gather,
    gather_with_grad,
    is_vit,
    mlp,
    momentum_schedule,
    ordered,
    positive,
    register_method,
)
from methods.losses import moco_v3_loss


@dataclass
class MoCoV3Config:
    temperature: float = positive(0.2)
    proj_hidden: int = 4096
    proj_dim: int = 256
    proj_layers: int = at_least(0, 0)   # 0: 2 for convnets, 3 for ViTs (paper)
    pred_hidden: int = 4096
    base_momentum: float = between(0.99, 0, 1)   # cosine to final_momentum
    final_momentum: float = between(1.0, 0, 1)
    freeze_patch_embed: bool = True  # ViT only: keep the random patch projection fixed
    blur: bool = True

    checks = (ordered("base_momentum", "final_momentum"),)


@register_method("moco_v3", family="contrastive", paper="Chen, Xie & He, 2021 (MoCo v3)",
                 venue="ICCV 2021, arXiv:2104.02057")
class MoCoV3(Method):
    Config = MoCoV3Config
    optim = OptimDefaults("lars", base_lr=0.6, weight_decay=1e-6)

    def __init__(self, backbone, cfg: MoCoV3Config, info):
        super().__init__(backbone, cfg, info)
        vit = is_vit(backbone)
        if vit and cfg.freeze_patch_embed:
            for p in backbone.patch_embed.proj.parameters():
                p.requires_grad_(False)
        layers = cfg.proj_layers or (3 if vit else 2)
        self.projector_head = mlp(backbone.num_features, cfg.proj_hidden, cfg.proj_dim, layers=layers, last_bn=True)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, layers=2)
        self.momentum_encoder = EMATeacher(self._base())

    def _base(self) -> nn.Sequential:
        # built on the fly (not a registered submodule), so weights are not listed twice
        return nn.Sequential(self.backbone, self.projector_head)

    def view_recipe(self, info):
        return ViewRecipe.byol(info.image_size, blur=self.cfg.blur)

    def momentum(self, progress: float) -> float:
        return momentum_schedule(progress, self.cfg.base_momentum, self.cfg.final_momentum)

    def training_step(self, batch, step):
        x1, x2 = batch.views.images[:2]
        base = self._base()
        q1, q2 = self.predictor(base(x1)), self.predictor(base(x2))
        with torch.no_grad():
            k1, k2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        loss = moco_v3_loss(gather_with_grad(q1), gather_with_grad(q2), gather(k1), gather(k2), self.cfg.temperature)
        return {"loss": loss, "momentum": torch.tensor(self.momentum(step.progress))}

    @torch.no_grad()
    def on_step_end(self, step):
        self.momentum_encoder.update(self._base(), self.momentum(step.progress))

    def projector(self):
        return self._base()
