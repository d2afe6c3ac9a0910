"""SimSiam (Chen & He, 2021), "Exploring Simple Siamese Representation Learning".

Two augmented views x1, x2 of an image pass through one shared encoder f (backbone +
projection MLP), z_v = f(x_v), and a prediction MLP h turns one view's output into a
prediction of the other's, p_v = h(z_v). With the negative cosine similarity

    D(p, z) = - p / ||p|| . z / ||z||

and the stop-gradient sg(.) on the target branch, the loss is symmetrised (eq. 2):

    L = 1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1))

(``methods.losses.simsiam_loss``; minimum -1). There are no negatives and no momentum
encoder: the paper's finding is that the stop-gradient alone prevents the collapse that the
loss would otherwise admit. ``z_std``, the per-dimension standard deviation of the
L2-normalised z over the batch, is logged as the paper's collapse monitor (Fig. 2: near 0 on
collapse, near 1/sqrt(d) when healthy).

Architecture (paper defaults): the projector is 3 layers, Linear-BN-ReLU x 2 then
Linear-BN (the output BN without affine), 2048-d throughout; the predictor is a 2-layer
bottleneck, Linear(2048, 512)-BN-ReLU-Linear(512, 2048), with no BN on its output.

Optimisation: SGD, base LR 0.05 x batch/256, momentum 0.9, weight decay 1e-4, cosine decay
of the LR, except for the predictor, whose LR is kept fixed at the base LR (the paper's
Table 1: "pred. fixed lr" works slightly better). Its parameter groups carry ``fixed_lr``,
which the trainer honours (no warm-up, no decay). Augmentation: MoCo v2's (crop 0.2-1,
jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale 0.2, blur, flip). ``encoder()`` is the backbone.
The CIFAR variant of the paper uses a 2-layer projector (``proj_layers=2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import Method, OptimDefaults, ViewRecipe, at_least, mlp, register_method
from methods.losses import simsiam_loss


@dataclass
class SimSiamConfig:
    proj_hidden: int = 2048
    proj_dim: int = 2048
    proj_layers: int = at_least(3, 2)   # 3 on ImageNet, 2 in the paper's CIFAR experiments
    pred_hidden: int = 512        # the bottleneck of the predictor
    fix_pred_lr: bool = True      # predictor LR not decayed
    blur: bool = True


def split_decay(params) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights with decay, biases/norms without), trainable parameters only."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


@register_method("simsiam", family="self-distillation", paper="Chen & He, 2021 (SimSiam)",
                 venue="CVPR 2021, arXiv:2011.10566")
class SimSiam(Method):
    Config = SimSiamConfig
    optim = OptimDefaults("sgd", base_lr=0.05, weight_decay=1e-4)

    def __init__(self, backbone, cfg: SimSiamConfig, info):
        super().__init__(backbone, cfg, info)
        self.projector_head = mlp(backbone.num_features, cfg.proj_hidden, cfg.proj_dim, layers=cfg.proj_layers,
                                  last_bn=True)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, layers=2)

    def view_recipe(self, info):
        return ViewRecipe.moco_v2(info.image_size, blur=self.cfg.blur)

    def training_step(self, batch, step):
        x1, x2 = batch.views.images[:2]
        z1 = self.projector_head(self.backbone(x1))
        z2 = self.projector_head(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = simsiam_loss(p1, p2, z1, z2)
        with torch.no_grad():
            z_std = F.normalize(z1.float(), dim=1).std(dim=0).mean()
        return {"loss": loss, "z_std": z_std}

    def param_groups(self):
        pred = {id(p) for p in self.predictor.parameters()}
        rest_decay, rest_no = split_decay(p for p in self.parameters() if id(p) not in pred)
        pred_decay, pred_no = split_decay(self.predictor.parameters())
        fixed = {"fixed_lr": True} if self.cfg.fix_pred_lr else {}
        groups = [{"params": rest_decay}, {"params": rest_no, "weight_decay": 0.0, "lars_exclude": True},
                  {"params": pred_decay, **fixed}, {"params": pred_no, "weight_decay": 0.0, "lars_exclude": True, **fixed}]
        return [g for g in groups if g["params"]]

    def projector(self):
        return nn.Sequential(self.backbone, self.projector_head)
