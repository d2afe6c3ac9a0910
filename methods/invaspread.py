"""Invariant and Spreading Instance Feature (Ye, Zhang, Yuen & Chang, 2019), "Unsupervised
Embedding Learning via Invariant and Spreading Instance Feature".

Instance discrimination without a memory bank: two augmented views of each of the N images of
a batch go through the encoder and a linear embedding layer to 128-d L2-normalised features
(the paper's ResNet with its classifier replaced by a 128-d FC layer). Features are compared
within the batch -- the positive of a view is the other view of its image (invariance), the
views of the other N - 1 images are negatives (spreading). With P_ik the softmax over the other
views of view i (temperature tau = 0.1), the loss (``methods.losses.invaspread_loss``) treats
"recognised as instance i" as independent binary events, as in Wu et al.'s NCE:

    P_ik = exp(z_i . z_k / tau) / sum_{l != i} exp(z_i . z_l / tau)
    L = -1/(2N) sum_i [ log P_{i,p(i)} + sum_{k not in {i, p(i)}} log(1 - P_ik) ]

Paper defaults: tau = 0.1, 128-d features, SGD (momentum 0.9, LR 0.03 at batch 128, weight
decay 5e-4), InstDisc's augmentation (random resized crop, colour jitter 0.4, random grayscale
0.2, flip; no blur). Batches are gathered across processes with gradient. ``encoder()`` is the
backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from harness import Method, OptimDefaults, gather_with_grad, mlp, positive, register_method
from methods.instdisc import instdisc_views
from methods.losses import invaspread_loss


@dataclass
class InvaSpreadConfig:
    temperature: float = positive(0.1)
    proj_dim: int = 128
    proj_hidden: int = 0          # 0: linear embedding layer (the paper's); > 0: 2-layer MLP
    blur: bool = False


@register_method("invaspread", family="contrastive", paper="Ye et al., 2019 (Invariant and Spreading Instance Feature)",
                 venue="CVPR 2019, arXiv:1904.03436")
class InvaSpread(Method):
    Config = InvaSpreadConfig
    optim = OptimDefaults("sgd", base_lr=0.06, weight_decay=5e-4)  # 0.03 at batch 128
    progressive_views = True

    def __init__(self, backbone, cfg: InvaSpreadConfig, info):
        super().__init__(backbone, cfg, info)
        d = backbone.num_features
        self.projector_head = mlp(d, cfg.proj_hidden, cfg.proj_dim) if cfg.proj_hidden > 0 else nn.Linear(d, cfg.proj_dim)

    def view_recipe(self, info):
        return instdisc_views(info.image_size, n=2, blur=self.cfg.blur)

    def training_step(self, batch, step):
        x1, x2 = batch.views.images[:2]
        z1 = self.projector_head(self.backbone(x1))
        z2 = self.projector_head(self.backbone(x2))
        return {"loss": invaspread_loss(gather_with_grad(z1), gather_with_grad(z2), self.cfg.temperature)}

    def projector(self):
        return nn.Sequential(self.backbone, self.projector_head)
