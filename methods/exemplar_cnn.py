"""Exemplar-CNN (Dosovitskiy, Springenberg, Riedmiller & Brox, 2014), "Discriminative Unsupervised
Feature Learning with Convolutional Neural Networks".

N "seed" patches are taken from N different training images, each at a position with
considerable gradients (objects, not sky: the p x p window of largest gradient energy,
``harness.window_energy_argmax``); each seed defines a surrogate class. A training sample is a
random transformation of a seed (translation and scaling through a random resized crop,
horizontal flip, contrast / brightness / colour jitter); the network classifies it into its N
surrogate classes:

    i ~ U{1..N},  x = T(seed_i),  T ~ the augmentation family,   L = CE( W f(x), i )

so the features become invariant to the transformations while staying discriminative between
seeds. The seed images are a seeded random choice (the run's seed) and the seed patches are cut in
one pass over the training set before the first step, inside the budget; both are buffers
(``seed_index``, ``seed_patches``: uint8), saved with the checkpoint, so a resumed run classifies
the same classes. Each step draws its classes and transformations from the step's generator; the
trainer's own batch is not used (the samples are transformations of seeds, not dataset images).

N is a budget knob: the paper uses 8000 classes (up to 32000) with 100-300 transformations each at
ImageNet-like budgets; at a few minutes each class must still be seen many times. The paper's seeds
are 32-px patches of 96-px STL-10 images; ``patch_size`` must fit the images, and the transformed
samples are rendered at the image size (so the network sees the evaluator's input size). Paper
defaults: SGD with momentum 0.9 at LR 0.01 x batch/256 (the paper trains with SGD at LR 0.01 and
uses dropout, which is not used here); weight decay 5e-4, the common Caffe setting.

``encoder()`` is the backbone (the N-way classifier is discarded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    ConfigError,
    Method,
    OptimDefaults,
    ViewRecipe,
    ViewSpec,
    at_least,
    between,
    crop_at,
    gradient_energy,
    rank,
    register_method,
    window_energy_argmax,
    world_size,
)


@dataclass
class ExemplarCNNConfig:
    num_classes: int = at_least(8000, 2)          # N surrogate classes (seed patches)
    patch_size: int = at_least(32, 4)             # side of a seed patch, px of the source image
    crop_min_scale: float = between(0.3, 0, 1, open_lo=True)   # translation + scaling of a seed
    jitter_strength: float = between(1.0, 0, 2)  # contrast / brightness / saturation / hue jitter, x SimCLR's 0.8/0.2
    head_hidden: int = at_least(0, 0)             # 0: linear N-way classifier; > 0: MLP


def seed_patches(images: torch.Tensor, p: int) -> torch.Tensor:
    """The p x p patch of largest gradient energy of each image (B, C, H, W) in [0, 1]: (B, C, p, p)."""
    y0, x0 = window_energy_argmax(gradient_energy(images), p)
    return crop_at(images, y0, x0, p)


@register_method("exemplar_cnn", family="pretext", paper="Dosovitskiy et al., 2014 (Exemplar-CNN)",
                 venue="NIPS 2014, arXiv:1406.6909")
class ExemplarCNN(Method):
    Config = ExemplarCNNConfig
    optim = OptimDefaults("sgd", base_lr=0.01, weight_decay=5e-4)

    def __init__(self, backbone, cfg: ExemplarCNNConfig, info):
        super().__init__(backbone, cfg, info)
        if cfg.num_classes > info.num_train:
            raise ConfigError(f"exemplar_cnn: method_cfg.num_classes={cfg.num_classes} surrogate classes need as many "
                              f"training images, the dataset has {info.num_train}")
        if cfg.patch_size > info.image_size:
            raise ConfigError(f"exemplar_cnn: method_cfg.patch_size={cfg.patch_size} exceeds the {info.image_size}-px images")
        # the seed images: a seeded random choice (torch's global RNG, seeded by the run's seed)
        self.register_buffer("seed_index", torch.randperm(info.num_train)[:cfg.num_classes].sort().values)
        self.register_buffer("seed_patches", torch.zeros(cfg.num_classes, info.channels, cfg.patch_size,
                                                         cfg.patch_size, dtype=torch.uint8))
        d = backbone.num_features
        self.head = (nn.Linear(d, cfg.num_classes) if cfg.head_hidden == 0 else
                     nn.Sequential(nn.Linear(d, cfg.head_hidden), nn.BatchNorm1d(cfg.head_hidden),
                                   nn.ReLU(inplace=True), nn.Linear(cfg.head_hidden, cfg.num_classes)))
        s = cfg.jitter_strength
        self.transform = ViewRecipe([ViewSpec(info.image_size, scale=(cfg.crop_min_scale, 1.0),
                                              jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), jitter_p=0.8, gray_p=0.0)])

    def view_recipe(self, info):
        # the trainer's batch is not used; the cheapest recipe keeps the data pipeline uniform
        return ViewRecipe.light(info.image_size, scale=(1.0, 1.0))

    # ------------------------------------------------------------- seed patches
    def wants_prepare_pass(self) -> bool:
        return True

    def prepare_batch(self, batch) -> None:
        pos = torch.searchsorted(self.seed_index, batch.indices)
        hit = (pos < len(self.seed_index)) & (self.seed_index[pos.clamp(max=len(self.seed_index) - 1)] == batch.indices)
        if not hit.any():
            return
        imgs = self.info.denormalize(batch.views.source[hit].float()).clamp(0, 1)
        patches = seed_patches(imgs, self.cfg.patch_size)
        self.seed_patches[pos[hit]] = (patches * 255).round().to(torch.uint8)

    # ------------------------------------------------------------- training
    def training_step(self, batch, step):
        b_local = batch.views.images[0].shape[0]
        dev = batch.views.images[0].device
        # the global batch's classes come from the step's generator, shared by every process
        classes = torch.randint(0, self.cfg.num_classes, (b_local * world_size(),), generator=step.generator, device=dev)
        views = self.transform(self.seed_patches[classes], step.generator, self.info.mean, self.info.std)
        lo = rank() * b_local
        x = views.images[0][lo:lo + b_local]
        if batch.views.images[0].is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        y = classes[lo:lo + b_local]
        logits = self.head(self.backbone(x))
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss, "class_acc": acc}
