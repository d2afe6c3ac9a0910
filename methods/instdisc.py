"""Instance Discrimination (Wu, Xiong, Yu & Lin, 2018), "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination" (InstDisc / NPID).

Every training image is its own class. The encoder and a linear layer map an image x_i to a
128-d L2-normalised feature f_i = f(x_i); instead of class weights, a *memory bank* V holds one
normalised feature v_j per training image (``harness.MemoryBank``, a buffer, so checkpoints
carry it). The non-parametric softmax

    P(i | f) = exp(v_i . f / tau) / Z,   Z = sum_j exp(v_j . f / tau),   tau = 0.07

is costly over all n images at ImageNet scale, so it is trained with noise-contrastive estimation
(``methods.losses.nce_loss``): m = 4096 noise samples from the uniform P_n = 1/n, and

    h(i, f) = P(i | f) / (P(i | f) + m P_n)
    L = -log h(i, f_i) - sum_{j=1..m} log(1 - h(j', f_i)),   j' ~ P_n

with Z estimated once, from the first batch, as Z = n * mean exp(v_j' . f / tau) over the noise
samples and then fixed (the paper's Monte-Carlo approximation; a buffer here, averaged over
processes). The positive v_i is the bank's entry from the previous visit (no gradient); on an
image's first visit the bank holds only its random initial vector, so the positive is the image's
own current feature (s = 1) and the first write replaces the entry (the paper's long schedules
hide this; at a few epochs, chasing random targets for a whole epoch left the encoder below
random init: kNN 37.2 vs 44.0 on CIFAR-10 at 240 s). With ``bank_init=features`` (not in the
paper; the small-image preset's choice) one pass of the initial network over the training set
fills the bank before the first step, inside the budget, so from step 1 every positive is a real
feature of another view of the image and every negative a real feature of another image: the
first epoch is no longer pure repulsion from stale or random vectors. An
optional proximal term lambda * ||f_i - v_i||^2 (the paper's eq. 9; ``proximal``, 0 = off, as in
the authors' released code, whose bank momentum plays the same role) damps oscillation. After each step the bank entries of
the batch move towards the new features, v_i <- normalise(0.5 v_i + 0.5 f_i) (momentum 0.5).

``loss=softmax`` computes the exact non-parametric softmax instead, L = -log P(i | f_i) over the
whole bank (the paper's eq. 2; what the authors' CIFAR script runs by default, ``--nce-k 0``): at
CIFAR scale (n = 50,000, d = 128) that is one (B, n) matrix product per step. It is the small-image
preset's choice: with Z fixed from the first batch, the NCE loss rose over the first epochs of a
minute-scale CIFAR-10 run (10 -> 31 in 100 steps), and the exact softmax needs no estimate of Z.

Deviation for memory: one draw of m noise indices per step is shared by the whole batch (the
paper's code draws m per sample, O(B m d) memory); every sample still sees m uniform noise
samples. Under DDP each process draws its own noise, and the bank update gathers indices and
features from every process (``harness.gather``) so all banks stay equal.

Paper defaults: SGD, LR 0.03 at batch 256, momentum 0.9, weight decay 5e-4; augmentation:
random resized crop (0.2-1), colour jitter 0.4, random grayscale 0.2, flip; one view per image.
``encoder()`` is the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    ConfigError,
    MemoryBank,
    Method,
    OptimDefaults,
    ViewRecipe,
    ViewSpec,
    all_reduce_mean,
    at_least,
    between,
    choices,
    gather,
    mlp,
    positive,
    register_method,
)
from methods.losses import nce_log_partition, nce_loss


@dataclass
class InstDiscConfig:
    temperature: float = positive(0.07)
    loss: str = choices("nce", "softmax", default="nce")   # "nce" (the paper's ImageNet estimator) or "softmax" (exact, eq. 2)
    num_noise: int = at_least(4096, 1)   # m, noise samples per data sample (loss=nce)
    bank_momentum: float = between(0.5, 0, 1, open_hi=True)
    proximal: float = 0.0         # lambda of the proximal term; 0 = off
    proj_dim: int = 128
    proj_hidden: int = 0          # 0: linear embedding layer (the paper's); > 0: 2-layer MLP
    bank_init: str = choices("random", "features", default="random")   # "random" (the paper's code) or "features":
                                                                      # one pass of the initial network over the
                                                                      # training set fills the bank before step 1
    blur: bool = False


def instdisc_views(size: int, n: int = 1, blur: bool = False) -> ViewRecipe:
    """InstDisc's augmentation, reused by InvaSpread (and MoCo v1): crop (0.2-1), colour jitter
    0.4 (always), random grayscale 0.2, flip."""
    spec = ViewSpec(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, gray_p=0.2,
                    blur_p=0.5 if blur else 0.0)
    return ViewRecipe([spec] * n)


@register_method("instdisc", family="memory bank", paper="Wu et al., 2018 (InstDisc / NPID)",
                 venue="CVPR 2018, arXiv:1805.01978")
class InstDisc(Method):
    Config = InstDiscConfig
    optim = OptimDefaults("sgd", base_lr=0.03, weight_decay=5e-4)

    def __init__(self, backbone, cfg: InstDiscConfig, info):
        super().__init__(backbone, cfg, info)
        if info.num_train < 2:
            raise ConfigError(f"{self.name}: the memory bank needs at least 2 training images")
        d = backbone.num_features
        self.projector_head = mlp(d, cfg.proj_hidden, cfg.proj_dim) if cfg.proj_hidden > 0 else nn.Linear(d, cfg.proj_dim)
        self.bank = MemoryBank(info.num_train, cfg.proj_dim)
        self.register_buffer("log_z", torch.tensor(float("nan")))   # fixed after the first batch
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def view_recipe(self, info):
        return instdisc_views(info.image_size, n=1, blur=self.cfg.blur)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector_head(self.backbone(x)).float(), dim=1)

    def wants_prepare_pass(self) -> bool:
        return self.cfg.bank_init == "features"

    def prepare_batch(self, batch):
        # bank_init=features: v_i = f_0(x_i), the initial network's feature of one augmented view
        # (every process runs the whole pass, so no gather)
        self.bank.update(batch.indices, self._embed(batch.views.images[0]), self.cfg.bank_momentum)

    def training_step(self, batch, step):
        x = batch.views.images[0]
        idx = batch.indices.to(self.bank.features.device)
        f = self._embed(x)
        t, n = self.cfg.temperature, len(self.bank)
        v = self.bank.get(idx)                                   # previous features of the batch's images
        # an image seen for the first time has no feature in the bank yet (only the random initial
        # vector): its positive is its own current feature, s = 1 (no target to chase)
        fresh = ~self.bank.filled[idx]
        v = torch.where(fresh[:, None], f.detach(), v)
        if self.cfg.loss == "softmax":
            with torch.autocast(f.device.type, enabled=False):   # float32 logits (bf16 is coarse at 1/t = 10)
                logits = f @ self.bank.features.t().float() / t  # (B, n): every instance is a class
            own = (f * v.float()).sum(dim=1) / t
            logits = logits.scatter(1, idx[:, None], own[:, None])
            loss = F.cross_entropy(logits, idx)
            self._pending = (idx, f.detach())
            return {"loss": loss, "pos_sim": (f * v).sum(dim=1).detach().mean()}
        noise = self.bank.get(self.bank.sample(self.cfg.num_noise, step.generator))
        pos_logits = (f * v).sum(dim=1) / t
        noise_logits = f @ noise.t() / t
        if torch.isnan(self.log_z):
            self.log_z.copy_(all_reduce_mean(nce_log_partition(noise_logits, n)))
        loss = nce_loss(pos_logits, noise_logits, self.log_z, n)
        out = {"nce": loss.detach(), "pos_sim": pos_logits.detach().mean() * t, "noise_sim": noise_logits.detach().mean() * t}
        if self.cfg.proximal > 0:
            prox = (f - v).pow(2).sum(dim=1).mean()
            loss = loss + self.cfg.proximal * prox
            out["proximal"] = prox.detach()
        self._pending = (idx, f.detach())
        out["loss"] = loss
        return out

    @torch.no_grad()
    def on_step_end(self, step):
        if self._pending is not None:
            idx, f = self._pending
            self.bank.update(gather(idx), gather(f), self.cfg.bank_momentum)
            self._pending = None

    def projector(self):
        return nn.Sequential(self.backbone, self.projector_head)
