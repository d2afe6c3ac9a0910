"""The supervised baseline: the same backbone trained with labels under the same budget.

Not a self-supervised method: it is the ceiling row of every leaderboard (the random-init
encoder is the floor). The backbone plus a linear classifier is trained with cross-entropy
on crop + flip views:

    L = -1/N sum_i log softmax(W f(x_i) + b)_{y_i}

SGD, LR 0.1 x batch/256, weight decay 5e-4 (the standard CIFAR recipe). ``encoder()`` is the
backbone; the evaluator scores it like any other encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from harness import Method, OptimDefaults, ViewRecipe, register_method


@dataclass
class SupervisedConfig:
    crop_min_scale: float = 0.35
    label_smoothing: float = 0.0


@register_method("supervised", family="baseline", paper="supervised training with labels (ceiling baseline)", venue="")
class Supervised(Method):
    Config = SupervisedConfig
    optim = OptimDefaults("sgd", base_lr=0.1, weight_decay=5e-4)
    uses_labels = True

    def __init__(self, backbone, cfg: SupervisedConfig, info):
        super().__init__(backbone, cfg, info)
        self.classifier = nn.Linear(backbone.num_features, info.num_classes)

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def training_step(self, batch, step):
        logits = self.classifier(self.backbone(batch.views.images[0]))
        loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=self.cfg.label_smoothing)
        return {"loss": loss, "train_acc": (logits.detach().argmax(1) == batch.labels).float().mean()}
