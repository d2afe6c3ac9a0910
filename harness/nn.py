"""Shared building blocks for methods: heads, EMA teachers, queues, schedules.

Each exists once; methods compose them.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- schedules


def cosine(progress: float, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1)."""
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))


def warmup_cosine(progress: float, warmup: float, base: float, final: float = 0.0) -> float:
    """Linear warm-up over the first ``warmup`` fraction of progress, then cosine to ``final``."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return base * p / warmup
    q = (p - warmup) / (1 - warmup) if warmup < 1 else 1.0
    return cosine(q, base, final)


# ----------------------------------------------------------------------------- heads


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, bn: bool = True, last_bn: bool = False) -> nn.Sequential:
    """Projection/prediction MLP: (Linear-BN-ReLU) x (layers-1), then Linear (optionally BN).

    SimCLR: layers=2, last_bn=False (v1); SimCLR v2: layers=3; BYOL/SimSiam predictor:
    layers=2; MoCo v2: layers=2, bn=False; Barlow Twins / SimSiam projector: last_bn=True.
    """
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=not bn)]
        if bn:
            mods.append(nn.BatchNorm1d(hidden))
        mods.append(nn.ReLU(inplace=True))
        d = hidden
    mods.append(nn.Linear(d, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


# ----------------------------------------------------------------------------- EMA teacher


class EMATeacher(nn.Module):
    """A momentum (EMA) copy of a module: ``t <- m * t + (1 - m) * s`` (BYOL, MoCo, DINO).

    The teacher receives no gradients; its parameters and buffers live in the method's
    state_dict, so checkpoints carry them. BatchNorm running statistics are copied
    (MoCo/BYOL practice).
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(student)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        sp = list(student.parameters())
        tp = list(self.module.parameters())
        torch._foreach_mul_(tp, momentum)
        torch._foreach_add_(tp, [p.detach() for p in sp], alpha=1 - momentum)
        for tb, sb in zip(self.module.buffers(), student.buffers()):
            tb.copy_(sb)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def momentum_schedule(progress: float, base: float, final: float = 1.0) -> float:
    """BYOL: tau = 1 - (1 - tau_base) * (cos(pi * p) + 1) / 2, i.e. cosine from base to 1."""
    return cosine(progress, base, final)


# ----------------------------------------------------------------------------- queue


class FeatureQueue(nn.Module):
    """FIFO queue of K normalised keys (MoCo). A buffer: saved in checkpoints."""

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        k = k.detach().to(self.keys.dtype)
        n, size = k.shape[0], self.keys.shape[0]
        if n >= size:
            self.keys.copy_(k[-size:])
            self.ptr.zero_()
            return
        p = int(self.ptr)
        idx = (torch.arange(n, device=k.device) + p) % size
        self.keys[idx] = k
        self.ptr.fill_((p + n) % size)
