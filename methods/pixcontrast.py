"""PixContrast and PixPro (Xie, Lin, Zhang, Cao, Lin & Hu, 2021), "Propagate Yourself: Exploring
Pixel-Level Consistency for Unsupervised Visual Representation Learning".

Pixel-level pretext tasks on two crops of one image. The backbone's last feature map (before
pooling; :func:`feature_map`) goes through a pixel-wise projector (the MLP applied to every
feature-map cell, 1x1 convolutions in the paper) to D-d pixel features. Each cell of each view
is mapped back to source-image coordinates through its crop box and flip
(:func:`pixel_centres`); a cell i of view 1 and a cell j of view 2 are a *positive pair* when
their source positions are closer than T = 0.7 cell, the distance being divided by the larger
of the two views' cell diagonals (:func:`positive_mask`). As in the paper, keys come from a
momentum encoder (EMA of backbone + projector, momentum 0.99 -> 1 by a cosine over training).

* ``variant: pixcontrast`` -- pixel-level InfoNCE with temperature tau = 0.3: for a pixel i of
  view 1 with positives A_p(i) and negatives A_n(i) among the key pixels of view 2,

      L_i = -log( sum_{j in A_p(i)} e^{cos(x_i, x'_j) / tau}
                  / sum_{j in A_p(i) u A_n(i)} e^{cos(x_i, x'_j) / tau} )

  averaged over the pixels that have a positive, symmetrised over the views. ``negatives:
  batch`` (default) takes A_n(i) = every other key pixel of the (gathered) batch; ``image`` only
  the non-positive pixels of the same image's other view (on 4x4 maps of 32 px images that is a
  handful).
* ``variant: pixpro`` -- pixel-propagation consistency. The pixel propagation module (PPM)
  smooths the online pixel features x with their own similarities,

      y_i = sum_j s(x_i, x_j) g(x_j),   s(x_i, x_j) = max(cos(x_i, x_j), 0)^gamma,   gamma = 2

  (g: one linear layer by default), and y is pulled towards the momentum encoder's features x'
  of the positive pixels of the other view:

      L = -2 * mean_images [ sum_{(i,j) positive} cos(y_i, x'_j) / #positives ]  (+ the mirror)

  (the official code's form, minimum -4).

Paper defaults: projector 4096-256 with BN, T = 0.7, tau = 0.3, gamma = 2, momentum 0.99,
LARS (base LR 1.0 x batch/256, WD 1e-5), BYOL's augmentation. Not implemented: PixPro's
additional instance-level (BYOL) branch and the FPN head. The backbone must expose a spatial
feature map (cnn4 / cnn4_wide / the timm ResNets, e.g. resnet18_cifar); others are refused
before training. ``encoder()`` is the online backbone.

The crop geometry (:func:`harness.positive_mask`, ``harness.data.geometry``) lives with the
views' crop boxes, and the spatial feature map (:func:`harness.feature_map`) with the backbones,
for every dense method to use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    ConfigError,
    EMATeacher,
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    between,
    choices,
    feature_map,
    gather,
    has_feature_map,
    mlp,
    momentum_schedule,
    positive,
    positive_mask,
    rank,
    register_method,
)


class PixelEncoder(nn.Module):
    """Backbone feature map -> pixel-wise projector: images -> (B, h*w, D) pixel features."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = feature_map(self.backbone, x)
        b, c, h, w = f.shape
        p = self.projector(f.permute(0, 2, 3, 1).reshape(b * h * w, c))
        return p.view(b, h * w, -1)


# ----------------------------------------------------------------------------- losses


def pixel_propagation(x: torch.Tensor, transform: nn.Module, gamma: float = 2.0) -> torch.Tensor:
    """PixPro's PPM: y_i = sum_j max(cos(x_i, x_j), 0)^gamma * normalise(g(x_j)); x (B, P, D)."""
    xn = F.normalize(x.float(), dim=-1)
    sim = (xn @ xn.transpose(1, 2)).clamp_min(0).pow(gamma)
    v = transform(x.reshape(-1, x.shape[-1])).view_as(x)   # per pixel (BatchNorm sees (B*P, D))
    return sim @ F.normalize(v.float(), dim=-1)


def pixpro_consistency(y: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-2 * mean_b [ sum_ij mask_bij cos(y_bi, k_bj) / (sum_ij mask_bij + 1e-6) ]; k gets no gradient."""
    cos = F.normalize(y.float(), dim=-1) @ F.normalize(k.detach().float(), dim=-1).transpose(1, 2)
    m = mask.to(cos.dtype)
    return -2 * ((cos * m).sum(dim=(1, 2)) / (m.sum(dim=(1, 2)) + 1e-6)).mean()


def pixcontrast_loss(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, temperature: float = 0.3,
                     negatives: str = "batch") -> torch.Tensor:
    """Pixel-level InfoNCE with several positives; q (B, P, D) queries, k (B, P, D) keys (no
    gradient), mask (B, P, P) positives. Averaged over the query pixels with at least one positive
    (0 if none). ``negatives="batch"``: every key pixel of the gathered batch is a candidate;
    ``"image"``: only the key pixels of the same image."""
    b, p, d = q.shape
    qn = F.normalize(q.float(), dim=-1)
    kn = F.normalize(k.detach().float(), dim=-1)
    if negatives == "image":
        logits = (qn @ kn.transpose(1, 2) / temperature).reshape(b * p, p)
        pos = mask.reshape(b * p, p)
    else:
        k_all = gather(kn.reshape(b * p, d))
        logits = qn.reshape(b * p, d) @ k_all.t() / temperature
        eye = torch.eye(b, dtype=torch.bool, device=q.device)
        local = (eye[:, None, :, None] & mask[:, :, None, :]).reshape(b * p, b * p)
        pos = torch.zeros_like(logits, dtype=torch.bool)
        start = rank() * b * p      # this process's slice of the gathered keys
        pos[:, start : start + b * p] = local
    valid = pos.any(dim=1)
    if not valid.any():
        return logits.sum() * 0.0
    lse_all = torch.logsumexp(logits[valid], dim=1)
    lse_pos = torch.logsumexp(logits[valid].masked_fill(~pos[valid], float("-inf")), dim=1)
    return (lse_all - lse_pos).mean()


# ----------------------------------------------------------------------------- method


@dataclass
class PixContrastConfig:
    variant: str = choices("pixpro", "pixcontrast", default="pixpro")
    proj_hidden: int = 4096
    proj_dim: int = 256
    pos_threshold: float = positive(0.7)   # T, in feature-map cells
    temperature: float = positive(0.3)     # PixContrast
    negatives: str = choices("batch", "image", default="batch")   # PixContrast's negative set
    ppm_gamma: float = 2.0        # PixPro: sharpness of the propagation similarity
    ppm_layers: int = between(1, 0, 2)   # PixPro: transform g: 0 identity, 1 linear, 2 MLP
    base_momentum: float = 0.99   # momentum encoder, cosine to final_momentum
    final_momentum: float = 1.0
    crop_min_scale: float = 0.08
    blur: bool = True


@register_method("pixcontrast", family="contrastive", paper="Xie et al., 2021 (PixPro / PixContrast)",
                 venue="CVPR 2021, arXiv:2011.10043")
class PixContrast(Method):
    Config = PixContrastConfig
    requires = Requirements(min_image_size=16, convnet=True)   # pixel positives on a spatial feature map
    optim = OptimDefaults("lars", base_lr=1.0, weight_decay=1e-5)

    def __init__(self, backbone, cfg: PixContrastConfig, info):
        super().__init__(backbone, cfg, info)
        if not has_feature_map(backbone):
            raise ConfigError(f"{self.name} needs a backbone with a spatial feature map (cnn4, cnn4_wide, resnet18_cifar, "
                              f"resnet50_cifar or a timm ResNet); got {type(backbone).__name__}")
        h, w, c = self._map_shape(backbone, info)
        if h * w < 2:
            raise ConfigError(f"{self.name}: the backbone's feature map on {info.image_size} px images is {h}x{w}; "
                              "pixel-level positives need at least a 2x2 map (use larger images)")
        self.map_size = (h, w)
        self.pixel_projector = mlp(c, cfg.proj_hidden, cfg.proj_dim, layers=2)
        d = cfg.proj_dim
        self.ppm_transform = {0: nn.Identity(), 1: nn.Linear(d, d), 2: mlp(d, d, d, layers=2)}[cfg.ppm_layers] \
            if cfg.variant == "pixpro" else None
        self.target = EMATeacher(self._online())

    @staticmethod
    def _map_shape(backbone: nn.Module, info) -> tuple[int, int, int]:
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                f = feature_map(backbone, torch.zeros(2, info.channels, info.image_size, info.image_size))
        finally:
            backbone.train(was_training)
        return f.shape[2], f.shape[3], f.shape[1]

    def _online(self) -> PixelEncoder:
        # built on the fly (not a registered submodule), so weights are not listed twice
        return PixelEncoder(self.backbone, self.pixel_projector)

    def view_recipe(self, info):
        base = ViewRecipe.byol(info.image_size, blur=self.cfg.blur)
        return ViewRecipe([replace(s, scale=(self.cfg.crop_min_scale, 1.0)) for s in base.specs])

    def training_step(self, batch, step):
        v = batch.views
        x1, x2 = v.images[:2]
        online = self._online()
        q1, q2 = online(x1), online(x2)
        with torch.no_grad():
            k1, k2 = self.target(x1), self.target(x2)
        h, w = self.map_size
        m12 = positive_mask(v.boxes[0], v.flipped[0], v.boxes[1], v.flipped[1], h, w, self.cfg.pos_threshold)
        m21 = m12.transpose(1, 2)
        if self.cfg.variant == "pixpro":
            g = self.cfg.ppm_gamma
            y1, y2 = pixel_propagation(q1, self.ppm_transform, g), pixel_propagation(q2, self.ppm_transform, g)
            loss = pixpro_consistency(y1, k2, m12) + pixpro_consistency(y2, k1, m21)
        else:
            t, neg = self.cfg.temperature, self.cfg.negatives
            loss = (pixcontrast_loss(q1, k2, m12, t, neg) + pixcontrast_loss(q2, k1, m21, t, neg)) / 2
        return {"loss": loss, "pos_frac": m12.any(dim=2).float().mean()}

    @torch.no_grad()
    def on_step_end(self, step):
        m = momentum_schedule(step.progress, self.cfg.base_momentum, self.cfg.final_momentum)
        self.target.update(self._online(), m)
