"""BYOL (Grill et al., 2020), "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning".

BYOL uses two networks. The *online* network (weights theta) is an encoder f, a projector g
and a predictor q; the *target* network (weights xi) has the same encoder and projector but
no predictor, and its weights are an exponential moving average of the online ones:

    xi <- tau * xi + (1 - tau) * theta,   tau = 1 - (1 - tau_base) * (cos(pi * p) + 1) / 2

with tau_base = 0.996 and p the fraction of training done, so tau rises from 0.996 to 1 by
a cosine (``harness.momentum_schedule``; the update runs in :meth:`BYOL.on_step_end`,
after the optimiser step). From two augmented views v, v' of an image (BYOL's asymmetric
augmentations: blur 1.0 / 0.1, solarisation 0 / 0.2, ``ViewRecipe.byol``) the online network
outputs the prediction q(z) of its projection z = g(f(v)), the target network the projection
z' = g'(f'(v')). The loss is the squared distance between L2-normalised vectors,
2 - 2 cos(q(z), sg(z')), symmetrised by swapping the views:

    L = 2 - 2 cos(q(z1), sg(z'2)) + 2 - 2 cos(q(z2), sg(z'1))

(``methods.losses.byol_loss``). Only the online network receives gradients; there are no
negatives, and the collapse is avoided by the predictor and the slow-moving target.

Paper defaults: projector and predictor MLPs 4096-256 with BatchNorm in the hidden layer,
LARS with base LR 0.2 x batch/256, weight decay 1.5e-6 (biases and BN excluded from LARS
and decay), cosine LR with warm-up. The target's BatchNorm uses batch statistics (it runs
in train mode, as in the paper's code). ``encoder()`` is the online backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness import EMATeacher, Method, OptimDefaults, ViewRecipe, between, mlp, momentum_schedule, ordered, register_method
from methods.losses import byol_loss


@dataclass
class BYOLConfig:
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    base_momentum: float = between(0.996, 0, 1)   # tau at the start; cosine to final_momentum
    final_momentum: float = between(1.0, 0, 1)
    blur: bool = True
    crop_min_scale: float = 0.08   # random-resized-crop scale range (crop_min_scale, 1)
    predictor_lr_scale: float = 1.0  # predictor LR = scale x base LR (1 in the paper; a faster predictor
                                     # speeds up short runs, as DirectPred / SimSiam observed)

    checks = (ordered("base_momentum", "final_momentum"),)


@register_method("byol", family="self-distillation", paper="Grill et al., 2020 (BYOL)",
                 venue="NeurIPS 2020, arXiv:2006.07733")
class BYOL(Method):
    Config = BYOLConfig
    optim = OptimDefaults("lars", base_lr=0.2, weight_decay=1.5e-6)

    def __init__(self, backbone, cfg: BYOLConfig, info):
        super().__init__(backbone, cfg, info)
        self.projector_head = mlp(backbone.num_features, cfg.proj_hidden, cfg.proj_dim, layers=2)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, layers=2)
        # target network: EMA of (backbone, projector); in the state_dict, so checkpoints carry it
        self.target = EMATeacher(self._online())

    def _online(self) -> nn.Sequential:
        # built on the fly (not a registered submodule), so weights are not listed twice
        return nn.Sequential(self.backbone, self.projector_head)

    def view_recipe(self, info):
        return ViewRecipe.byol(info.image_size, blur=self.cfg.blur, min_scale=self.cfg.crop_min_scale)

    def training_step(self, batch, step):
        x1, x2 = batch.views.images[:2]
        z1 = self.projector_head(self.backbone(x1))
        z2 = self.projector_head(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = self.target(x1), self.target(x2)
        loss = byol_loss(p1, p2, t1, t2)
        return {"loss": loss, "tau": torch.tensor(self.tau(step.progress))}

    def tau(self, progress: float) -> float:
        return momentum_schedule(progress, self.cfg.base_momentum, self.cfg.final_momentum)

    @torch.no_grad()
    def on_step_end(self, step):
        self.target.update(self._online(), self.tau(step.progress))

    def projector(self):
        return self._online()

    def param_groups(self):
        groups = super().param_groups()
        if self.cfg.predictor_lr_scale == 1.0:
            return groups
        pred = {id(p) for p in self.predictor.parameters()}
        out = []
        for g in groups:
            rest = [p for p in g["params"] if id(p) not in pred]
            mine = [p for p in g["params"] if id(p) in pred]
            out.append({**g, "params": rest})
            if mine:
                out.append({**g, "params": mine, "base_lr_scale": self.cfg.predictor_lr_scale})
        return out
