"""Optimisers: SGD, LARS, AdamW, built from a method's parameter groups."""

from __future__ import annotations

import torch

from harness.errors import ConfigError


class LARS(torch.optim.Optimizer):
    """LARS (You, Gitman & Ginsburg, 2017) as used by SimCLR/BYOL.

    For each parameter w with gradient g (weight decay wd folded in, g' = g + wd * w), the
    update uses the trust ratio eta * ||w|| / ||g'|| (1 when either norm is 0), then SGD
    momentum. Groups with ``lars_exclude=True`` (biases, norms) skip the trust ratio and decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    wn, gn = torch.norm(p), torch.norm(g)
                    trust = torch.where((wn > 0) & (gn > 0), group["eta"] * wn / gn, torch.ones_like(wn))
                    g = g * trust
                st = self.state[p]
                if "mu" not in st:
                    st["mu"] = torch.clone(g).detach()
                else:
                    st["mu"].mul_(group["momentum"]).add_(g)
                p.add_(st["mu"], alpha=-group["lr"])


def build_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float, momentum: float,
                    lars_eta: float = 0.001):
    for g in groups:
        g.setdefault("weight_decay", weight_decay)
        g["base_lr_scale"] = g.get("base_lr_scale", 1.0)
    if name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    if name == "adamw":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    raise ConfigError(f"unknown optimizer '{name}'; valid choices: sgd, lars, adamw")
