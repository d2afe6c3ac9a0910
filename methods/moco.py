"""MoCo (He, Fan, Wu, Xie & Girshick, 2020), "Momentum Contrast for Unsupervised Visual
Representation Learning", and MoCo v2 (Chen, Fan, Girshick & He, 2020), "Improved Baselines
with Momentum Contrastive Learning".

Contrastive learning as dictionary look-up. A query encoder f_q (backbone + projector)
encodes one view of each image into q; a *momentum* key encoder f_k, whose weights follow
the query encoder's slowly,

    theta_k <- m * theta_k + (1 - m) * theta_q,   m = 0.999,

encodes the other view into the positive key k+. The dictionary is a FIFO queue of the K
most recent keys (K = 65536): after each step the batch's keys, gathered from every process
(``harness.gather``), are enqueued and the oldest dequeued. The queue is a
buffer (``harness.FeatureQueue``), so it is saved in checkpoints and a resumed run uses
the same negatives. With L2-normalised q, k and temperature tau, the loss is InfoNCE with
the queue as negatives (``methods.losses.info_nce``):

    L = -log( exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_{k- in queue} exp(q.k- / tau)) )

Only the query encoder receives gradients; the key encoder is updated by momentum after
each optimiser step (:meth:`MoCo.on_step_end`; the paper updates it at the start of the
next step, which is the same sequence of weights).

Shuffling BN. BatchNorm lets a query and its key "communicate" through batch statistics,
which lets the model cheat the pretext task. The paper computes keys on a batch shuffled
across GPUs so that a query and its positive key are normalised with statistics of
different sub-batches. On one process, shuffling the key batch alone changes nothing (BN
over the whole batch is permutation invariant), so we use the usual single-GPU substitute
(as in MoCo's CIFAR demo, "SplitBatchNorm"): both encoders normalise over ``bn_splits``
sub-batches (the paper's per-GPU batch: 256 / 8 GPUs = 32), and the key batch is shuffled
before being split and unshuffled after, so the positive key's BN group is a random
sub-batch that differs from its query's. Under DDP each process does the same on its own
shard (no cross-process shuffle). BN running statistics are updated once per group.
``bn_splits=1`` or ``shuffle_bn=False`` turn it off (whole-batch BN).

Variants (one code path, two registered names):

* ``moco`` (v1): linear projector to 128-d, tau = 0.07, augmentation: random resized crop
  (scale 0.2-1), colour jitter 0.4 (always), random grayscale 0.2, flip; no blur.
* ``moco_v2``: a 2-layer MLP projector (2048-d hidden, ReLU, no BN) to 128-d, tau = 0.2,
  stronger augmentation with Gaussian blur (``ViewRecipe.moco_v2``), cosine LR.

Both: SGD, base LR 0.03 x batch/256, momentum 0.9, weight decay 1e-4. ``encoder()`` is the
query backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness import (
    EMATeacher,
    FeatureQueue,
    Method,
    OptimDefaults,
    ViewRecipe,
    ViewSpec,
    at_least,
    between,
    gather,
    mlp,
    register_method,
)
from methods.losses import info_nce


@dataclass
class MoCoConfig:
    """MoCo v1 defaults (He et al., 2020)."""

    temperature: float = 0.07
    queue_size: int = at_least(65536, 1)
    momentum: float = between(0.999, 0, 1)
    proj_dim: int = 128
    proj_hidden: int = 0          # 0: linear projector (v1); > 0: MLP with this hidden width (v2)
    blur: bool = False
    shuffle_bn: bool = True       # single-process substitute for shuffled BN (see module docstring)
    bn_splits: int = at_least(8, 1)   # BN groups per batch (the paper's 8 GPUs)


@dataclass
class MoCoV2Config(MoCoConfig):
    """MoCo v2 defaults (Chen et al., 2020)."""

    temperature: float = 0.2
    proj_hidden: int = 2048
    blur: bool = True


def split_bn_forward(module: nn.Module, x: torch.Tensor, splits: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Run ``module`` on ``x`` in ``splits`` sub-batches, each with its own BN statistics.

    With a ``generator`` the batch is shuffled before splitting and the outputs unshuffled
    after (shuffled BN): row i of the result always belongs to row i of ``x``. Sub-batches
    keep at least 2 samples.
    """
    b = x.shape[0]
    g = max(1, min(splits, b // 2))
    perm = None
    if generator is not None and g > 1:
        perm = torch.randperm(b, generator=generator, device=x.device)
        x = x[perm]
    out = torch.cat([module(c) for c in x.tensor_split(g)]) if g > 1 else module(x)
    if perm is not None:
        out = out[torch.argsort(perm)]
    return out


def moco_v1_views(size: int) -> ViewRecipe:
    """MoCo v1's augmentation: crop (0.2-1), jitter 0.4 on all four (always), grayscale 0.2, flip."""
    spec = ViewSpec(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, gray_p=0.2)
    return ViewRecipe([spec, spec])


@register_method("moco", family="memory bank", paper="He et al., 2020 (MoCo)", venue="CVPR 2020, arXiv:1911.05722")
class MoCo(Method):
    Config = MoCoConfig
    optim = OptimDefaults("sgd", base_lr=0.03, weight_decay=1e-4)
    global_bn = False  # per-process BN with shuffling (split BN on one process), as the paper

    def __init__(self, backbone, cfg: MoCoConfig, info):
        super().__init__(backbone, cfg, info)
        d = backbone.num_features
        if cfg.proj_hidden > 0:
            self.projector_head = mlp(d, cfg.proj_hidden, cfg.proj_dim, layers=2, bn=False)
        else:
            self.projector_head = nn.Linear(d, cfg.proj_dim)
        self.key_encoder = EMATeacher(self._query_encoder())
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)
        self._pending: torch.Tensor | None = None   # this step's keys, enqueued in on_step_end

    def _query_encoder(self) -> nn.Sequential:
        # built on the fly (not a registered submodule), so weights are not listed twice
        return nn.Sequential(self.backbone, self.projector_head)

    def view_recipe(self, info):
        return moco_v1_views(info.image_size)

    def training_step(self, batch, step):
        x_q, x_k = batch.views.images[:2]
        splits = self.cfg.bn_splits if self.cfg.shuffle_bn else 1
        q = split_bn_forward(self._query_encoder(), x_q, splits)
        with torch.no_grad():
            k = split_bn_forward(self.key_encoder, x_k, splits, generator=step.generator)
            k = nn.functional.normalize(k.float(), dim=1)
        loss = info_nce(q, k, self.cfg.temperature, queue=self.queue.keys)
        self._pending = k
        return {"loss": loss}

    @torch.no_grad()
    def on_step_end(self, step):
        self.key_encoder.update(self._query_encoder(), self.cfg.momentum)
        if self._pending is not None:
            self.queue.push(gather(self._pending))
            self._pending = None

    def projector(self):
        return self._query_encoder()


@register_method("moco_v2", family="memory bank", paper="Chen et al., 2020 (MoCo v2)",
                 venue="preprint, arXiv:2003.04297")
class MoCoV2(MoCo):
    Config = MoCoV2Config

    def view_recipe(self, info):
        return ViewRecipe.moco_v2(info.image_size, blur=self.cfg.blur)
