"""Feature Distillation (Wei, Hu, Xie, Zhang, Cao, Bao, Chen & Guo, 2022), "Contrastive Learning Rivals
Masked Image Modeling in Fine-tuning via Feature Distillation".

A finished model of ANY method (the teacher: a checkpoint named by ``method_cfg.teacher``) is
distilled into a fresh ViT student, and the student -- not the teacher -- is what gets fine-tuned.
The target is the teacher's output feature map on the same image, *whitened* per location by a
non-parametric LayerNorm (no affine: every location's feature vector has zero mean and unit
variance, which puts teachers of any method on one scale); the student's output tokens go through a
1x1 projection to the teacher's width, and the loss is the smooth-L1 distance:

    L = mean SmoothL1( W z_s(x), LN(z_t(x)) )

The teacher sees the image as it was trained to (its scored encoder, frozen, in eval mode); a ViT
teacher gives its patch tokens, a convnet teacher its last feature map, resized to the student's
patch grid. The student gets stochastic depth (asymmetric: the teacher none), applied inside the
training forward so the scored backbone is unchanged. The teacher's path, file sha256, method and
backbone are logged as params (``teacher.*``), so two distillations of different teachers never
share a record; the teacher is reloaded, and its hash checked, on resume.

``encoder()`` is the student ViT. Paper defaults: student drop path 0.1 (ViT-B), AdamW (0.9, 0.999),
LR 1.2e-3 at batch 2048 (1.5e-4 at 256), weight decay 0.05, crop (0.08, 1) + flip. The paper's
student also uses a shared relative position bias; our ViT keeps its absolute position embedding.
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
    Requirements,
    ViewRecipe,
    between,
    feature_map,
    final_norm,
    has_feature_map,
    input_tokens,
    is_vit,
    output_tokens,
    positive,
    register_method,
    run_blocks,
    token_grid,
)
from methods.mae import no_decay_groups


@dataclass
class FDConfig:
    teacher: str = ""                  # the checkpoint.pt of a finished run (any method), a run id, or EXPERIMENT/METHOD
    teacher_sha256: str = ""           # set by `sslbench run/pretrain` from the file; checked when the teacher loads
    drop_path: float = between(0.1, 0, 1, open_hi=True)
    smooth_l1_beta: float = positive(1.0)
    whiten: bool = True                # non-parametric LayerNorm on the teacher's features
    crop_min_scale: float = between(0.08, 0, 1, open_lo=True)

    checks = ((lambda c: bool(c.teacher), "a teacher checkpoint: method_cfg.teacher=PATH/checkpoint.pt"),)


def teacher_map(teacher: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The teacher's output features as a (B, D, gh, gw) map on the student's patch grid."""
    if is_vit(teacher):
        t = output_tokens(teacher, x)[:, teacher.num_prefix_tokens:]
        g = teacher.patch_embed.grid_size
        fmap = token_grid(t, tuple(g))
    else:
        fmap = feature_map(teacher, x)
    if tuple(fmap.shape[-2:]) != tuple(grid):
        fmap = F.interpolate(fmap.float(), size=grid, mode="bilinear", align_corners=False)
    return fmap


def whiten(fmap: torch.Tensor) -> torch.Tensor:
    """Non-parametric LayerNorm over the channels of every location of a (B, D, h, w) map."""
    return F.layer_norm(fmap.float().permute(0, 2, 3, 1), (fmap.shape[1],)).permute(0, 3, 1, 2)


@register_method("feature_distillation", family="applications", paper="Wei et al., 2022 (Feature Distillation)",
                 venue="preprint, arXiv:2205.14141")
class FeatureDistillation(Method):
    Config = FDConfig
    requires = Requirements(vit=True)
    optim = OptimDefaults("adamw", base_lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.999))

    def __init__(self, backbone, cfg: FDConfig, info):
        super().__init__(backbone, cfg, info)
        self.grid = tuple(backbone.patch_embed.grid_size)
        self._teacher: list[nn.Module] = []      # not a submodule: not in this method's checkpoint
        self._provenance: dict[str, str] = {}
        self.proj: nn.Module | None = None

    def teacher_reference(self) -> str | None:
        return self.cfg.teacher

    def teacher_digest(self) -> str:
        return self.cfg.teacher_sha256

    def attach_teacher(self, encoder: nn.Module, provenance: dict[str, str]) -> None:
        if not (is_vit(encoder) or has_feature_map(encoder)):
            raise ConfigError(f"feature_distillation: the teacher's encoder ({type(encoder).__name__}) has no feature "
                              f"map to distil; use a teacher on a ViT or a convnet backbone")
        with torch.no_grad():
            probe = teacher_map(encoder, torch.zeros(1, self.info.channels, self.info.image_size, self.info.image_size),
                                self.grid)
        self._teacher = [encoder]
        self._provenance = dict(provenance)
        self.proj = nn.Linear(self.backbone.embed_dim, probe.shape[1])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # a checkpoint read without its teacher (evaluation): the projection's shape comes from the weights
        if self.proj is None and "proj.weight" in state_dict:
            self.proj = nn.Linear(*reversed(state_dict["proj.weight"].shape))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def resolved_params(self):
        return dict(self._provenance)

    @property
    def teacher(self) -> nn.Module:
        if not self._teacher:
            raise ConfigError("feature_distillation: no teacher attached (method_cfg.teacher=PATH/checkpoint.pt)")
        return self._teacher[0]

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def training_step(self, batch, step):
        x = batch.views.images[0]
        teacher = self.teacher.to(x.device).eval()
        with torch.no_grad():
            target = teacher_map(teacher, x, self.grid)
            target = whiten(target) if self.cfg.whiten else target.float()
        vit = self.backbone
        tokens, _ = run_blocks(vit, input_tokens(vit, x), drop_path_rate=self.cfg.drop_path)
        pred = self.proj(final_norm(vit, tokens)[:, vit.num_prefix_tokens:])          # (B, L, D_t)
        pred = token_grid(pred, self.grid)
        loss = F.smooth_l1_loss(pred.float(), target, beta=self.cfg.smooth_l1_beta)
        return {"loss": loss}

    def param_groups(self) -> list[dict]:
        return no_decay_groups(self)
