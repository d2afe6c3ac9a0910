"""SimCLR (Chen, Kornblith, Norouzi & Hinton, 2020), "A Simple Framework for Contrastive
Learning of Visual Representations".

Two views of each image pass through the shared encoder f and projector g; z = g(f(x))
(the shared two-view pipeline, ``harness.TwoViewMethod``). The NT-Xent loss treats the other
view of the same image as the positive and the other 2(N-1) views in the batch as negatives
(``methods.losses.nt_xent``):

    L = 1/(2N) sum_i -log( exp(s_{i,p(i)} / tau) / sum_{k != i} exp(s_ik / tau) ),  s = cosine

Paper defaults: projector 2048-128 (hidden = encoder width), tau = 0.5 on CIFAR (0.1-0.2 on
ImageNet), LARS with base LR 0.3 x batch/256, WD 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import OptimDefaults, TwoViewConfig, TwoViewMethod, positive, register_method
from methods.losses import nt_xent


@dataclass
class SimCLRConfig(TwoViewConfig):
    temperature: float = positive(0.1)


@register_method("simclr", family="contrastive", paper="Chen et al., 2020 (SimCLR)",
                 venue="ICML 2020, arXiv:2002.05709")
class SimCLR(TwoViewMethod):
    Config = SimCLRConfig
    optim = OptimDefaults("lars", base_lr=0.3, weight_decay=1e-6)

    def objective(self, z1, z2, step):
        return {"loss": nt_xent(z1, z2, self.cfg.temperature)}
