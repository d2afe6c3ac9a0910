"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, 2020), "Unsupervised Learning of
Visual Features by Contrasting Cluster Assignments".

Online clustering with swapped prediction. Each crop x_v of an image is encoded by the
backbone and a projection MLP into an L2-normalised feature z_v, and scored against K
trainable prototypes C = [c_1 .. c_K] (unit vectors, re-normalised after every step):
s_v = z_v^T C. Codes q_v are computed from the scores of a batch by the Sinkhorn-Knopp
algorithm (``harness.sinkhorn_knopp``: 3 iterations, eps = 0.05), which makes the
assignments soft and equipartitioned over the prototypes, so they cannot all collapse to
one. The loss predicts each global crop's code from every other crop (swapped prediction,
eq. 1-2; ``methods.losses.swav_loss``):

    p_v = softmax(z_v^T C / tau),   l(z_s, q_t) = -sum_k q_t,k log p_s,k
    L = mean over (t in the 2 global crops, s in all crops, s != t) of l(z_s, q_t)

with tau = 0.1. Codes carry no gradient; the prototypes are learnt with the network, except
during the first epoch (``freeze_prototypes``, a progress fraction), when they stay at their
random initialisation.

Multi-crop (``harness.MultiCrop``): 2 global crops (scale 0.14-1) and 6 local crops at
96/224 of the side (scale 0.05-0.14); codes are computed for the global crops only. Small
batches: with ``queue_size`` > 0 the features of the last ``queue_size`` images of each global
crop (per process, as in the paper) are kept (``harness.FeatureQueue``) from
``queue_start`` on, and once full they join the batch in Sinkhorn-Knopp, so the
equipartition is enforced over queue + batch (paper: 3840 at batch 256, from epoch 15).

Paper defaults: projection MLP 2048-128 with BN, K = 3000, LARS with LR 4.8 at batch 4096
(0.3 x batch/256 here), weight decay 1e-6, cosine decay; colour jitter strength 0.8, blur
p 0.5. ``encoder()`` is the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    FeatureQueue,
    Method,
    MultiCrop,
    MultiCropConfig,
    OptimDefaults,
    Requirements,
    at_least,
    between,
    frozen,
    mlp,
    positive,
    register_method,
    sinkhorn_knopp,
)
from methods.losses import swav_loss


@dataclass
class SwAVConfig(MultiCropConfig):
    n_prototypes: int = at_least(3000, 2)          # K
    proj_hidden: int = positive(2048)
    proj_dim: int = positive(128)
    temperature: float = positive(0.1)
    epsilon: float = positive(0.05)               # Sinkhorn-Knopp entropic regularisation
    sinkhorn_iters: int = at_least(3, 1)
    freeze_prototypes: float = between(0.01, 0, 1)  # fraction of progress (paper: first epoch, 313 iterations)
    queue_size: int = at_least(0, 0)              # per global crop and process; 0: no queue
    queue_start: float = between(0.15, 0, 1)      # fraction of progress when features start to be queued
    n_local: int = at_least(6, 0)
    global_scale: tuple[float, float] = between((0.14, 1.0), 0, 1)
    local_scale: tuple[float, float] = between((0.05, 0.14), 0, 1)


@register_method("swav", family="clustering", paper="Caron et al., 2020 (SwAV)", venue="NeurIPS 2020, arXiv:2006.09882")
class SwAV(Method):
    Config = SwAVConfig
    requires = Requirements(min_image_size=16)   # room for 8 px local crops
    optim = OptimDefaults("lars", base_lr=0.3, weight_decay=1e-6)

    def __init__(self, backbone, cfg: SwAVConfig, info):
        super().__init__(backbone, cfg, info)
        self.multi_crop = MultiCrop("swav", backbone, info.image_size, cfg)
        self.projector_head = mlp(backbone.num_features, cfg.proj_hidden, cfg.proj_dim, layers=2)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.n_prototypes, bias=False)
        self._normalize_prototypes()
        if cfg.queue_size > 0:
            self.queues = nn.ModuleList([FeatureQueue(cfg.queue_size, cfg.proj_dim, seed=i) for i in range(2)])
            self.register_buffer("queued", torch.zeros((), dtype=torch.long))  # features pushed per queue
        self._pending: list[torch.Tensor] | None = None

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def view_recipe(self, info):
        r = self.multi_crop.recipe()
        r.specs = [replace(s, jitter=(0.8, 0.8, 0.8, 0.2)) for s in r.specs]   # colour strength 0.8
        return r

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector_head(self.backbone(x)), dim=1)

    def queue_in_use(self) -> bool:
        return self.cfg.queue_size > 0 and int(self.queued) >= self.cfg.queue_size

    def training_step(self, batch, step):
        bs = batch.views.images[0].shape[0]
        z = MultiCrop.forward(self._embed, batch.views.images)
        w = self.prototypes.weight
        if step.progress < self.cfg.freeze_prototypes:
            w = frozen(w)
        scores = [F.linear(zv, w) for zv in z]
        use_queue = self.queue_in_use()
        codes = []
        with torch.no_grad():
            for i in range(2):
                s = scores[i].detach()
                if use_queue:
                    s = torch.cat([self.queues[i].keys.to(s.dtype) @ w.detach().t().to(s.dtype), s])
                codes.append(sinkhorn_knopp(s, self.cfg.epsilon, self.cfg.sinkhorn_iters)[-bs:])
        loss = swav_loss(codes, scores, self.cfg.temperature)
        if self.cfg.queue_size > 0 and step.progress >= self.cfg.queue_start:
            self._pending = [zv.detach().float() for zv in z[:2]]
        return {"loss": loss, "queue_used": torch.tensor(float(use_queue))}

    @torch.no_grad()
    def on_step_end(self, step):
        self._normalize_prototypes()
        if self._pending is not None:
            for q, feats in zip(self.queues, self._pending):
                q.push(feats)   # this process's features: Sinkhorn-Knopp sums over processes itself
            self.queued.add_(self._pending[0].shape[0]).clamp_(max=self.cfg.queue_size)
            self._pending = None

    def projector(self):
        return nn.Sequential(self.backbone, self.projector_head)
