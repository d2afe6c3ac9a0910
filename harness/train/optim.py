"""Optimisers: SGD, LARS, AdamW, built from a method's parameter groups.

What a run gets is the method's declared optimiser (``Method.optim``, its paper's: name, base LR at
batch 256, weight decay, momentum / betas, LARS trust coefficient) unless a preset or an
``optim.*`` override says otherwise (:func:`effective_optim`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from harness.core.errors import ConfigError
from harness.core.schema import OptimConfig
from harness.method.contract import OptimDefaults


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


@dataclass(frozen=True)
class ResolvedOptim:
    """The optimiser a run actually gets: the method's declared defaults under the config's overrides."""

    name: str
    lr: float                  # at the run's batch size
    weight_decay: float
    momentum: float
    betas: tuple[float, float]
    lars_eta: float

    def params(self) -> dict[str, Any]:
        """As MLflow params (``optim.effective.*``)."""
        return {f"optim.effective.{k}": v for k, v in asdict(self).items()}


def effective_optim(defaults: OptimDefaults, cfg: OptimConfig) -> ResolvedOptim:
    """Each ``None`` of ``cfg`` (``optim.*``) is the method's declared value; the LR is the declared base
    LR scaled linearly by batch / 256 unless ``optim.lr`` gives it."""
    def pick(value, default):
        return default if value is None else value

    lr = cfg.lr if cfg.lr is not None else defaults.base_lr * cfg.batch_size / 256
    return ResolvedOptim(pick(cfg.name, defaults.name), float(lr), float(pick(cfg.weight_decay, defaults.weight_decay)),
                         float(pick(cfg.momentum, defaults.momentum)), tuple(pick(cfg.betas, defaults.betas)),
                         float(pick(cfg.lars_eta, defaults.lars_eta)))


def build_optimizer(opt: ResolvedOptim, groups: list[dict]):
    """SGD, LARS or AdamW over a method's parameter groups (``Method.param_groups``). A group's own
    ``weight_decay`` wins (0 for biases and norms by default), ``lars_exclude`` skips LARS's trust ratio,
    ``base_lr_scale`` / ``fixed_lr`` are read by the trainer's schedule."""
    for g in groups:
        g.setdefault("weight_decay", opt.weight_decay)
        g["base_lr_scale"] = g.get("base_lr_scale", 1.0)
    if opt.name == "lars":
        return LARS(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, eta=opt.lars_eta)
    for g in groups:
        g.pop("lars_exclude", None)
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.betas)
    raise ConfigError(f"unknown optimizer '{opt.name}'; valid choices: sgd, lars, adamw")
