"""SimCLR v2 (Chen, Kornblith, Swersky, Norouzi & Hinton, 2020b), "Big Self-Supervised Models
are Strong Semi-Supervised Learners".

The pretraining stage of SimCLR v2 is SimCLR (``methods.simclr``) with two changes:

1. A deeper projection head g: 3 layers instead of 2 (Linear-BN-ReLU x 2, then Linear-BN,
   hidden width = encoder width, 128-d output). For the semi-supervised stage the network is
   fine-tuned not from the encoder output but from the first layer of g ("fine-tuning from a
   middle layer of the projection head"); ``projector()`` therefore returns the backbone plus
   that first layer (Linear-BN-ReLU), the features a fine-tuning or probing evaluation uses.
2. Optionally, MoCo's memory of negatives (He et al., 2020): a momentum (EMA) copy of encoder
   and head, theta_k <- m theta_k + (1 - m) theta, encodes each view into keys, which are
   enqueued into a FIFO queue of K negatives (``harness.EMATeacher``, ``FeatureQueue``).
   The paper reports a small gain (~1%) at small batch sizes and none at large ones, so it
   is off by default (``queue_size = 0``).

Without the queue the loss is NT-Xent over the 2N views (``methods.losses.nt_xent``):

    L = 1/(2N) sum_i -log( exp(s_{i,p(i)} / tau) / sum_{k != i} exp(s_ik / tau) ),  s = cosine

With the queue, each view's query q_v = g(f(x_v)) is contrasted with the momentum key k_v'
of the other view as its positive and the queue as negatives, symmetrised:

    L = 1/2 [InfoNCE(q1, k2; queue) + InfoNCE(q2, k1; queue)]

(``methods.losses.symmetric_info_nce``); after the step the gathered keys of both views are
enqueued. Paper defaults: tau = 0.1, LARS with LR 6.4 at batch 4096 (0.4 x batch/256 here:
the harness scales linearly), weight decay 1e-4, momentum m = 0.999 when the memory is on.
The semi-supervised fine-tuning and distillation stage is an evaluator-side protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    EMATeacher,
    FeatureQueue,
    OptimDefaults,
    TwoViewConfig,
    TwoViewMethod,
    at_least,
    between,
    gather,
    mlp,
    positive,
    register_method,
)
from methods.losses import nt_xent, symmetric_info_nce


@dataclass
class SimCLRv2Config(TwoViewConfig):
    temperature: float = positive(0.1)
    proj_layers: int = at_least(3, 2)   # >= 2: fine-tuning starts from the first head layer
    queue_size: int = at_least(0, 0)    # 0: no memory (default); > 0: MoCo-style queue of negatives
    momentum: float = between(0.999, 0, 1)  # key encoder EMA momentum (only with the queue)


@register_method("simclr_v2", family="contrastive", paper="Chen et al., 2020b (SimCLR v2)",
                 venue="NeurIPS 2020, arXiv:2006.10029")
class SimCLRv2(TwoViewMethod):
    Config = SimCLRv2Config
    optim = OptimDefaults("lars", base_lr=0.4, weight_decay=1e-4)

    def __init__(self, backbone, cfg: SimCLRv2Config, info):
        super().__init__(backbone, cfg, info)
        if cfg.queue_size > 0:
            self.key_encoder = EMATeacher(self._online())
            self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)
        self._pending: torch.Tensor | None = None

    def make_projector(self, in_dim: int) -> nn.Module:
        # 3 layers (Linear-BN-ReLU x 2, then Linear-BN), hidden width = encoder width
        return mlp(in_dim, self.cfg.proj_hidden, self.cfg.proj_dim, layers=self.cfg.proj_layers, last_bn=True)

    def _online(self) -> nn.Sequential:
        # built on the fly (not a registered submodule), so weights are not listed twice
        return nn.Sequential(self.backbone, self.projector_head)

    def objective(self, z1, z2, step):   # without the queue: NT-Xent, as SimCLR
        return {"loss": nt_xent(z1, z2, self.cfg.temperature)}

    def training_step(self, batch, step):
        if self.cfg.queue_size == 0:
            return super().training_step(batch, step)
        x1, x2 = batch.views.images[:2]
        z1 = self.projector_head(self.backbone(x1))
        z2 = self.projector_head(self.backbone(x2))
        with torch.no_grad():
            k1 = F.normalize(self.key_encoder(x1).float(), dim=1)
            k2 = F.normalize(self.key_encoder(x2).float(), dim=1)
        loss = 0.5 * symmetric_info_nce(z1, z2, k1, k2, self.cfg.temperature, queue=self.queue.keys)
        self._pending = torch.cat([k1, k2])
        return {"loss": loss}

    @torch.no_grad()
    def on_step_end(self, step):
        if self.cfg.queue_size == 0:
            return
        self.key_encoder.update(self._online(), self.cfg.momentum)
        if self._pending is not None:
            self.queue.push(gather(self._pending))
            self._pending = None

    def projector(self):
        # backbone + the first projection layer (Linear-BN-ReLU): where SimCLR v2 fine-tunes from
        return nn.Sequential(self.backbone, self.projector_head[:3])
