"""Parametric Instance Classification (Cao, Xie, Liu, Lin, Zhang & Hu, 2020), "Parametric Instance
Classification for Unsupervised Visual Feature Learning" (PIC).

Every training image is its own class: a classifier with one weight row w_i per image (N rows, a
parameter, so checkpoints carry it) is trained jointly with the encoder. Features and weights are
L2-normalised and compared by cosine (``methods.losses.cosine_classifier_logits``):

    z = normalise(g(f(x))),  P(i | x) = exp(w_i.z / tau) / sum_j exp(w_j.z / tau),  tau = 0.2
    L = -log P(index(x) | x)

with g a two-layer MLP projector and strong (SimCLR) augmentation, one view per image.

For large N the paper's "sliding window" keeps the cost of a step independent of N: only a
window of classifier rows takes part in each softmax. Here (``window > 0``) the rows are the
batch's own instances plus ``window`` contiguous rows that slide through the N instances as the
steps advance (rows (step * window) mod N onwards): every row is a negative every N / window
steps. (The paper couples the window to a data scheduler that draws each batch from the
window's images; our trainer draws batches uniformly, so the window supplies the negatives.)
``window = 0`` uses all N rows (exact; at CIFAR scale, N = 50,000 x 128 is one small matrix
product per step).

``classifier_init=features`` (not in the paper; the small-image preset's choice) sets each row, before
the first step, to the initial network's normalised projection of its image (one pass over the
training set inside the budget, as InstDisc's ``bank_init=features``). In the paper's 200-epoch
schedule the random initial rows are soon replaced; in a few epochs each row is visited a handful
of times, and random rows give the first epoch nothing to classify by: measured, CIFAR-10, 240 s,
seed 0, random rows ended below random init (kNN 32.7 / linear 42.1 vs 44.0 / 51.5, the loss at
ln N throughout). Paper defaults: SGD, LR 0.03 x batch/256, momentum 0.9, weight decay 1e-4,
projector 2048-128, tau 0.2.

``encoder()`` is the backbone (projector and instance classifier are discarded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import Method, OptimDefaults, ViewRecipe, at_least, between, choices, mlp, register_method
from methods.losses import cosine_classifier_logits


@dataclass
class PICConfig:
    temperature: float = between(0.2, 0, 10, open_lo=True)
    proj_hidden: int = at_least(2048, 1)
    proj_dim: int = at_least(128, 1)
    window: int = at_least(0, 0)                 # 0: all N rows; > 0: sliding window of negatives
    classifier_init: str = choices("random", "features", default="random")
    blur: bool = True


def window_rows(indices: torch.Tensor, n: int, window: int, step: int) -> torch.Tensor:
    """The classifier rows of a step: the batch's own rows, then ``window`` contiguous rows starting at
    (step * window) mod n (wrapping), without duplicates. Returns the rows (R,); the batch's targets
    are positions 0..B-1 when the batch's indices are distinct."""
    start = (step * window) % n
    slide = (torch.arange(window, device=indices.device) + start) % n
    keep = ~torch.isin(slide, indices)
    return torch.cat([indices, slide[keep]])


@register_method("pic", family="pretext", paper="Cao et al., 2020 (Parametric Instance Classification)",
                 venue="NeurIPS 2020, arXiv:2006.14618")
class PIC(Method):
    Config = PICConfig
    optim = OptimDefaults("sgd", base_lr=0.03, weight_decay=1e-4)

    def __init__(self, backbone, cfg: PICConfig, info):
        super().__init__(backbone, cfg, info)
        self.proj = mlp(backbone.num_features, cfg.proj_hidden, cfg.proj_dim, layers=2)
        self.classifier = nn.Parameter(F.normalize(torch.randn(info.num_train, cfg.proj_dim), dim=1))

    def view_recipe(self, info):
        return ViewRecipe.simclr(info.image_size, n=1, blur=self.cfg.blur)

    def wants_prepare_pass(self) -> bool:
        return self.cfg.classifier_init == "features"

    def prepare_batch(self, batch) -> None:
        z = self.proj(self.backbone(batch.views.images[0]))
        self.classifier.data[batch.indices] = F.normalize(z.float(), dim=1).to(self.classifier.dtype)

    def training_step(self, batch, step):
        z = self.proj(self.backbone(batch.views.images[0]))
        idx = batch.indices
        if self.cfg.window and self.cfg.window < self.info.num_train:
            rows = window_rows(idx, self.info.num_train, self.cfg.window, step.step)
            logits = cosine_classifier_logits(z, self.classifier[rows], self.cfg.temperature)
            target = torch.arange(len(idx), device=idx.device)
        else:
            logits = cosine_classifier_logits(z, self.classifier, self.cfg.temperature)
            target = idx
        loss = F.cross_entropy(logits, target)
        acc = (logits.detach().argmax(1) == target).float().mean()
        return {"loss": loss, "inst_acc": acc}
