"""Heads shared by methods: projection / prediction MLPs and DINO's weight-normalised head.

Each exists once; methods compose them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, bn: bool = True, last_bn: bool = False,
        ln: bool = False, last_ln: bool = False) -> nn.Sequential:
    """Projection/prediction MLP: (Linear-BN-ReLU) x (layers-1), then Linear (optionally BN).

    SimCLR: layers=2, last_bn=False (v1); SimCLR v2: layers=3; BYOL/SimSiam predictor:
    layers=2; MoCo v2: layers=2, bn=False; Barlow Twins / SimSiam projector: last_bn=True.
    ``ln`` / ``last_ln``: a LayerNorm without affine parameters after the hidden / the last Linear
    (CURL's Atari contrastive head: layers=2, bn=False, ln=True, last_ln=True).
    """
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=not bn)]
        if bn:
            mods.append(nn.BatchNorm1d(hidden))
        if ln:
            mods.append(nn.LayerNorm(hidden, elementwise_affine=False))
        mods.append(nn.ReLU(inplace=True))
        d = hidden
    mods.append(nn.Linear(d, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    if last_ln:
        mods.append(nn.LayerNorm(out, elementwise_affine=False))
    return nn.Sequential(*mods)


def frozen(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a zero gradient (not ``None``): freezes a parameter for one step.

    Used for "freeze the last layer / the prototypes during the first epoch" (DINO, SwAV).
    The parameter stays in the autograd graph, so DDP (``find_unused_parameters=False``)
    still sees a gradient for it; SGD/AdamW then apply weight decay only, to which the
    weight-normalised DINO layer and the re-normalised SwAV prototypes are invariant.
    """
    return t.detach() + 0.0 * t


class WeightNormLinear(nn.Module):
    """Linear map without bias whose rows are weight-normalised (Salimans & Kingma, 2016):

        w_k = g_k * v_k / ||v_k||,   y = x W^T

    DINO's last layer (``norm_last_layer=True``: g fixed at 1, so only directions are learnt).
    Setting ``frozen_step = True`` makes the next forward pass give v and g a zero gradient.
    """

    def __init__(self, in_dim: int, out_dim: int, learn_scale: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))   # nn.Linear's default, as DINO's last layer
        self.scale = nn.Parameter(torch.ones(out_dim), requires_grad=learn_scale)
        self.frozen_step = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, g = self.weight, self.scale
        if self.frozen_step:
            v = frozen(v)
            g = frozen(g) if g.requires_grad else g
        return F.linear(x, F.normalize(v, dim=1) * g[:, None])


class DINOHead(nn.Module):
    """DINO projection head (Caron et al., 2021): an MLP (``layers`` linear layers, hidden
    width ``hidden``, GELU, optional BN) to a ``bottleneck``-d vector, L2-normalised, then a
    weight-normalised linear layer to K = ``out_dim`` logits (paper: 2048 / 256 / 65536):

        g(x) = W_norm . (h(x) / ||h(x)||)

    Shared by DINO and iBOT. ``forward`` returns the K logits; ``bottleneck_features`` the
    normalised bottleneck (what ``projector()`` evaluations use).
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden: int = 2048, bottleneck: int = 256,
                 layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if layers < 1:
            raise ValueError(f"DINOHead needs layers >= 1, got {layers}")
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers - 1):
            mods.append(nn.Linear(d, hidden))
            if use_bn:
                mods.append(nn.BatchNorm1d(hidden))
            mods.append(nn.GELU())
            d = hidden
        mods.append(nn.Linear(d, bottleneck))
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck, out_dim, learn_scale=not norm_last_layer)

    def bottleneck_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck_features(x))
