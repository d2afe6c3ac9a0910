"""Five contrastive objectives as runnable methods, each on SimCLR's two-view pipeline.

Every method here is SimCLR's architecture (Chen et al., 2020; ``harness.TwoViewMethod``, as
``methods.simclr``): two augmented views of each image pass through the shared encoder f and a
projector MLP g, z = g(f(x)), and the loss compares the two views' projections, gathered from
every process with gradient. Only the objective differs, so each gets its own
leaderboard row while everything else is held fixed. The losses are pure functions in
:mod:`methods.losses` (usable by any two-view method); the formulas:

* ``nce`` -- noise-contrastive estimation (Gutmann & Hyvarinen, 2010) as approximated by Wu et
  al., 2018: the other view is the data sample, the other 2N - 2 views of the batch the M noise
  samples (uniform noise P_n = 1/n over the n training images); with P(x) = exp(s/tau) / Z and
  h(x) = P(x) / (P(x) + M P_n),

      L = -E[log h(x)] - E[sum_j log(1 - h(x~_j))]

  Z is estimated once from the first batch (Z = n * mean_j exp(s_j / tau)) and then kept fixed,
  as in Wu et al.'s code; it is a buffer, so a resumed run uses the same Z.
* ``align_uniform`` (Wang & Isola, 2020) -- L = L_align(alpha=2) + lam * L_uniform(t=2) on the
  normalised projections, with the evaluator's ``align_loss`` / ``uniform_loss`` (``harness.core.hypersphere``).
* ``debiased`` (Chuang et al., 2020, DCL) -- g = max((1/eta-)(mean_neg exp(s/tau) - eta+
  exp(s+/tau)), exp(-1/tau)); L = -log(exp(s+/tau) / (exp(s+/tau) + N g)); eta+ = ``tau_plus``.
* ``hard_negatives`` (Robinson et al., 2021, HCL) -- the same with the negatives reweighted by
  importance weights proportional to exp(beta * s-/tau), normalised over the negatives; beta = 1.
* ``flatnce`` (Chen et al., 2021) -- logsumexp_k((s-_k - s+)/tau) minus its detached value. Its
  value is always 0, so the method returns loss = FlatNCE + sg(InfoNCE): the logged value is the
  InfoNCE (NT-Xent) of the batch, the gradient is FlatNCE's.

Defaults are the papers' (projector 2048-128 as SimCLR's; temperatures: NCE 0.07 (Wu et al.),
DCL/HCL 0.5 with eta+ = 0.1 (their CIFAR setting), FlatNCE 0.1; optimiser as SimCLR: LARS, base
LR 0.3 x batch/256, WD 1e-6); small-image presets override them in
``harness/configs/presets/small.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness import TwoViewConfig, TwoViewMethod, align_loss, between, positive, register_method, uniform_loss
from methods.losses import (
    align_uniform_loss,
    debiased_contrastive,
    flatnce,
    hard_negative_contrastive,
    nce_log_partition,
    nce_loss,
    nt_xent,
    pair_similarities,
)

FAMILY = "contrastive"


# ----------------------------------------------------------------------------- nce


@dataclass
class NCEConfig(TwoViewConfig):
    temperature: float = positive(0.07)


@register_method("nce", family=FAMILY, paper="Gutmann & Hyvarinen, 2010; Wu et al., 2018 (NCE)",
                 venue="AISTATS 2010; CVPR 2018, arXiv:1805.01978")
class NCE(TwoViewMethod):
    Config = NCEConfig

    def __init__(self, backbone, cfg, info):
        super().__init__(backbone, cfg, info)
        # log Z, fixed from the first batch (NaN until then); a buffer, so checkpoints carry it
        self.register_buffer("log_z", torch.tensor(float("nan")))

    def objective(self, z1, z2, step):
        pos, neg = pair_similarities(z1, z2)
        t = self.cfg.temperature
        n = max(self.info.num_train, 1)
        if torch.isnan(self.log_z):
            self.log_z.copy_(nce_log_partition(neg / t, n))
        loss = nce_loss(pos / t, neg / t, self.log_z, n)
        return {"loss": loss, "log_z": self.log_z.detach().clone()}


# ----------------------------------------------------------------------------- align_uniform


@dataclass
class AlignUniformConfig(TwoViewConfig):
    alpha: float = positive(2.0)
    t: float = positive(2.0)
    lam: float = positive(1.0, allow_zero=True)


@register_method("align_uniform", family=FAMILY, paper="Wang & Isola, 2020 (alignment and uniformity)",
                 venue="ICML 2020, arXiv:2005.10242")
class AlignUniform(TwoViewMethod):
    Config = AlignUniformConfig

    def objective(self, z1, z2, step):
        loss = align_uniform_loss(z1, z2, self.cfg.alpha, self.cfg.t, self.cfg.lam)
        with torch.no_grad():
            x = nn.functional.normalize(z1.detach().float(), dim=1)
            y = nn.functional.normalize(z2.detach().float(), dim=1)
            align, uniform = align_loss(x, y, self.cfg.alpha), uniform_loss(x, self.cfg.t)
        return {"loss": loss, "align": align, "uniform": uniform}


# ----------------------------------------------------------------------------- debiased / hard negatives


@dataclass
class DebiasedConfig(TwoViewConfig):
    temperature: float = positive(0.5)
    tau_plus: float = between(0.1, 0, 1, open_hi=True)   # class prior eta+ (0.1 for 10 balanced classes)


@dataclass
class HardNegativesConfig(DebiasedConfig):
    beta: float = positive(1.0, allow_zero=True)          # hardness concentration; 0 = debiased only


@register_method("debiased", family=FAMILY, paper="Chuang et al., 2020 (Debiased Contrastive Learning)",
                 venue="NeurIPS 2020, arXiv:2007.00224")
class Debiased(TwoViewMethod):
    Config = DebiasedConfig

    def objective(self, z1, z2, step):
        return {"loss": debiased_contrastive(z1, z2, self.cfg.temperature, self.cfg.tau_plus)}


@register_method("hard_negatives", family=FAMILY, paper="Robinson et al., 2021 (Hard Negative Samples, HCL)",
                 venue="ICLR 2021, arXiv:2010.04592")
class HardNegatives(TwoViewMethod):
    Config = HardNegativesConfig

    def objective(self, z1, z2, step):
        return {"loss": hard_negative_contrastive(z1, z2, self.cfg.temperature, self.cfg.beta, self.cfg.tau_plus)}


# ----------------------------------------------------------------------------- flatnce


@dataclass
class FlatNCEConfig(TwoViewConfig):
    temperature: float = positive(0.1)


@register_method("flatnce", family=FAMILY, paper="Chen et al., 2021 (FlatNCE)", venue="preprint, arXiv:2107.01152")
class FlatNCE(TwoViewMethod):
    Config = FlatNCEConfig

    def objective(self, z1, z2, step):
        flat = flatnce(z1, z2, self.cfg.temperature)
        with torch.no_grad():
            infonce = nt_xent(z1.detach(), z2.detach(), self.cfg.temperature)
        # value: InfoNCE (for monitoring; FlatNCE's own value is always 0); gradient: FlatNCE's
        return {"loss": flat + infonce, "infonce": infonce}
