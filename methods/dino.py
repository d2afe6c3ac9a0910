"""DINO (Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin, 2021), "Emerging
Properties in Self-Supervised Vision Transformers".

Self-distillation with no labels. A student network g_s (backbone + DINO head) is trained to
match the output distribution of a teacher network g_t of the same architecture, over K
output dimensions:

    P_s(x) = softmax(g_s(x) / tau_s),    P_t(x) = softmax((g_t(x) - c) / tau_t)

The teacher is not trained by gradients: its weights are an exponential moving average of
the student's, theta_t <- l theta_t + (1 - l) theta_s, with l from 0.996 to 1 by a cosine
over training (``harness.EMATeacher``, ``momentum_schedule``). Collapse is avoided by
centring and sharpening the teacher output: c is an EMA of the teacher's batch mean,
c <- m c + (1 - m) mean_b g_t(x_b) with m = 0.9, and tau_t is small, warmed up linearly from
0.04 to 0.07 over the first part of training; tau_s = 0.1 (``harness.Centering``).

Multi-crop: each image gives 2 global crops (scale 0.4-1, full resolution) and several
local crops (scale 0.05-0.4, 96/224 of the side; ``harness.MultiCrop``). The teacher
sees only the global crops, the student all of them, and the loss is the cross-entropy
between every teacher global crop and every student crop except the same view
(``methods.losses.dino_loss``):

    L = mean over (x in {x1_g, x2_g}, x' in V, x' != x) of  -sum_k P_t(x)_k log P_s(x')_k

The DINO head (``harness.DINOHead``) is a 3-layer MLP (hidden 2048, GELU, no BN) to a
256-d bottleneck, L2-normalised, then a weight-normalised linear layer with K = 65536
outputs whose norm is fixed (``norm_last_layer``); that last layer is frozen during the
first epoch (``freeze_last_layer``, a progress fraction). Augmentations follow BYOL's:
global crop 1 always blurred, global crop 2 blurred with p 0.1 and solarised with p 0.2,
local crops blurred with p 0.5. The paper's optimiser is AdamW, LR 5e-4 x batch/256,
weight decay 0.04 (cosine to 0.4 in the paper; constant here), gradient clipping 3.0
(``optim.grad_clip``). ``encoder()`` is the student backbone (the paper evaluates the
teacher, which is the EMA of it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from harness import (
    Centering,
    DINOHead,
    EMATeacher,
    Method,
    MultiCrop,
    MultiCropConfig,
    OptimDefaults,
    Requirements,
    at_least,
    between,
    momentum_schedule,
    ordered,
    positive,
    register_method,
)
from methods.losses import dino_loss


@dataclass
class DINOConfig(MultiCropConfig):
    out_dim: int = positive(65536)          # K
    head_hidden: int = positive(2048)
    head_bottleneck: int = positive(256)
    head_layers: int = at_least(3, 1)
    head_bn: bool = False
    norm_last_layer: bool = True
    student_temp: float = positive(0.1)
    warmup_teacher_temp: float = positive(0.04)
    teacher_temp: float = positive(0.07)
    teacher_temp_warmup: float = between(0.3, 0, 1)   # fraction of progress (paper: 30 of 100 epochs)
    center_momentum: float = between(0.9, 0, 1)
    base_momentum: float = between(0.996, 0, 1)       # teacher EMA, cosine to final_momentum
    final_momentum: float = between(1.0, 0, 1)
    freeze_last_layer: float = between(0.01, 0, 1)    # fraction of progress (paper: first epoch of 100)
    n_local: int = at_least(8, 0)
    global_scale: tuple[float, float] = between((0.4, 1.0), 0, 1)
    local_scale: tuple[float, float] = between((0.05, 0.4), 0, 1)

    checks = (ordered("base_momentum", "final_momentum"),)


@register_method("dino", family="self-distillation", paper="Caron et al., 2021 (DINO)",
                 venue="ICCV 2021, arXiv:2104.14294")
class DINO(Method):
    Config = DINOConfig
    requires = Requirements(min_image_size=16)   # room for 8 px local crops
    optim = OptimDefaults("adamw", base_lr=5e-4, weight_decay=0.04)

    def __init__(self, backbone, cfg: DINOConfig, info):
        super().__init__(backbone, cfg, info)
        self.multi_crop = MultiCrop(type(self).name or "dino", backbone, info.image_size, cfg)
        self.head = DINOHead(backbone.num_features, cfg.out_dim, cfg.head_hidden, cfg.head_bottleneck,
                             cfg.head_layers, cfg.head_bn, cfg.norm_last_layer)
        self.teacher = EMATeacher(self._student())
        self.centering = Centering(cfg.out_dim, cfg.center_momentum)
        self._pending: torch.Tensor | None = None

    def _student(self) -> nn.Sequential:
        # built on the fly (not a registered submodule), so weights are not listed twice
        return nn.Sequential(self.backbone, self.head)

    def view_recipe(self, info):
        c = self.cfg
        r = self.multi_crop.recipe()
        g = r.specs[0]
        r.specs[0] = replace(g, blur_p=1.0 if c.blur else 0.0)
        r.specs[1] = replace(g, blur_p=0.1 if c.blur else 0.0, solarize_p=0.2)
        return r

    def teacher_temperature(self, progress: float) -> float:
        c = self.cfg
        if c.teacher_temp_warmup > 0 and progress < c.teacher_temp_warmup:
            return c.warmup_teacher_temp + (c.teacher_temp - c.warmup_teacher_temp) * progress / c.teacher_temp_warmup
        return c.teacher_temp

    def momentum(self, progress: float) -> float:
        return momentum_schedule(progress, self.cfg.base_momentum, self.cfg.final_momentum)

    def training_step(self, batch, step):
        glob = batch.views.images[:2]
        self.head.last_layer.frozen_step = step.progress < self.cfg.freeze_last_layer
        s_out = MultiCrop.forward(self._student(), batch.views.images)   # the student sees every crop
        tau_t = self.teacher_temperature(step.progress)
        with torch.no_grad():
            t_logits = self.teacher(torch.cat(glob))
            t_probs = list(self.centering(t_logits, tau_t).chunk(2))
        loss = dino_loss(t_probs, s_out, self.cfg.student_temp)
        self._pending = t_logits.detach()
        return {"loss": loss, "teacher_temp": torch.tensor(tau_t), "momentum": torch.tensor(self.momentum(step.progress))}

    @torch.no_grad()
    def on_step_end(self, step):
        self.teacher.update(self._student(), self.momentum(step.progress))
        if self._pending is not None:
            self.centering.update(self._pending)
            self._pending = None

    def projector(self):
        return nn.Sequential(self.backbone, self.head.mlp)
