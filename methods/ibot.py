"""iBOT (Zhou, Wei, Wang, Shen, Xie, Yuille & Kong, 2022), "iBOT: Image BERT Pre-Training with
Online Tokenizer".

DINO (``methods.dino``: a student and an EMA teacher of the same ViT + DINO head, centred and
sharpened teacher distributions, multi-crop) plus masked image modelling in which the *online
tokenizer* is the teacher itself. The two global crops reach the student with block-wise masks
(``harness.block_mask``; per crop, with probability 1/2 a ratio r ~ U(0.1, 0.5), else none; blocks
of at least (min(h, w) // 3)^2 patches), the masked patch embeddings replaced by a learned mask
token (``harness.input_tokens``); the teacher sees them un-masked. Two losses, added:

    L_[CLS]  = DINO's cross-view loss on the [CLS] outputs (every student crop vs the other global
               teacher crop; ``methods.losses.dino_loss``)
    L_MIM    = for each global crop, the cross-entropy between the teacher's patch distributions and
               the student's at the masked positions of the same crop (``methods.losses.ibot_patch_loss``)
    L = lambda_1 L_[CLS] + lambda_2 L_MIM,  lambda_1 = lambda_2 = 1

The patch outputs go through the same DINO head as [CLS] (the recipes' ``shared_head``), with their
own centre (``center2``, over every teacher patch token) and teacher temperature (0.04 -> 0.07 over
the warm-up). The student's head runs on [CLS] and the masked tokens only (the rows the losses read)
unless the head has BatchNorm (the small preset's ``head_bn``), which normalises over every row it is
given and so gets every token -- the same loss and gradients either way without BN, at a fraction of
the head's cost; the student has stochastic depth 0.1 (applied inside the training forward). DINO's
head, centring, EMA and multi-crop code are used as they are (one place for each).

``encoder()`` is the student ViT; its evaluator features are the mean patch token (our ViTs pool
that way; ``eval.features=cls`` scores the [CLS] token the losses train). Paper defaults (ViT-S
recipe): 8192 outputs, last layer not normalised, 10 local crops, global crops (0.25, 1), local
(0.05, 0.25), AdamW LR 5e-4 x batch/256, weight decay 0.04, teacher momentum 0.996 -> 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness import Centering, Requirements, between, block_mask, final_norm, input_tokens, register_method, run_blocks
from methods.dino import DINO, DINOConfig
from methods.losses import dino_loss, ibot_patch_loss


@dataclass
class iBOTConfig(DINOConfig):
    out_dim: int = 8192
    norm_last_layer: bool = False
    n_local: int = 10
    global_scale: tuple[float, float] = between((0.25, 1.0), 0, 1)
    local_scale: tuple[float, float] = between((0.05, 0.25), 0, 1)
    warmup_patch_teacher_temp: float = 0.04
    patch_teacher_temp: float = 0.07
    lambda_cls: float = 1.0
    lambda_patch: float = 1.0
    mask_prob: float = between(0.5, 0, 1)             # share of global crops that are masked at all
    pred_ratio: float = between(0.3, 0, 1)            # masked share: U(pred_ratio - var, pred_ratio + var)
    pred_ratio_var: float = between(0.2, 0, 1)
    min_aspect: float = between(0.3, 0, 1, open_lo=True)
    drop_path: float = between(0.1, 0, 1, open_hi=True)


@register_method("ibot", family="masked image modelling", paper="Zhou et al., 2022 (iBOT)",
                 venue="ICLR 2022, arXiv:2111.07832")
class iBOT(DINO):
    Config = iBOTConfig
    requires = Requirements(vit=True, min_image_size=16)   # patch tokens to mask; room for local crops

    def __init__(self, backbone, cfg: iBOTConfig, info):
        super().__init__(backbone, cfg, info)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.patch_centering = Centering(cfg.out_dim, cfg.center_momentum)
        self._pending_patch: torch.Tensor | None = None

    def patch_temperature(self, progress: float) -> float:
        c = self.cfg
        if c.teacher_temp_warmup > 0 and progress < c.teacher_temp_warmup:
            return c.warmup_patch_teacher_temp + (c.patch_teacher_temp - c.warmup_patch_teacher_temp) * \
                progress / c.teacher_temp_warmup
        return c.patch_teacher_temp

    def masks(self, batch: int, grid: tuple[int, int], generator: torch.Generator, device) -> torch.Tensor:
        """One block mask per image of a global crop: with probability mask_prob, r ~ U(ratio +- var)."""
        c = self.cfg
        u = torch.rand(batch, 2, generator=generator, device=device)
        ratio = (c.pred_ratio - c.pred_ratio_var + 2 * c.pred_ratio_var * u[:, 0]).clamp(0, 0.95)
        n = torch.where(u[:, 1] < c.mask_prob, (ratio * grid[0] * grid[1]).round(), torch.zeros_like(ratio)).long()
        return block_mask(batch, grid[0], grid[1], n, generator, min_block=max(1, min(grid) // 3) ** 2,
                          min_aspect=c.min_aspect, device=device)

    def tokens(self, vit: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, drop: float = 0.0):
        t, _ = run_blocks(vit, input_tokens(vit, x, mask, self.mask_token if mask is not None else None),
                          drop_path_rate=drop)
        return final_norm(vit, t)

    def heads(self, head: nn.Module, t: torch.Tensor, mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] and patch logits of tokens (B, prefix + L, D) through one DINO head: every patch
        token's (B, L, K), or with ``mask`` (B, L) only the masked ones' rows (M, K) in ``mask``'s
        order -- the only student rows the loss reads. The same numbers either way when the head
        has no BatchNorm (a BN head normalises over every row it is given, so it gets all of them)."""
        b, n, d = t.shape
        npf = self.backbone.num_prefix_tokens
        if mask is not None:
            out = head(torch.cat([t[:, 0], t[:, npf:][mask.bool()]]))
            return out[:b], out[b:]
        out = head(t.reshape(b * n, d)).view(b, n, -1)
        return out[:, 0], out[:, npf:]

    def training_step(self, batch, step):
        c = self.cfg
        views = batch.views.images
        glob = torch.cat(views[:2])
        self.head.last_layer.frozen_step = step.progress < c.freeze_last_layer
        vit = self.backbone
        p = vit.patch_embed.patch_size[0]
        grid = (glob.shape[-2] // p, glob.shape[-1] // p)
        mask = self.masks(glob.shape[0], grid, step.generator, glob.device)
        s_cls, s_patch = self.heads(self.head, self.tokens(vit, glob, mask, c.drop_path),
                                    None if c.head_bn else mask)     # masked rows only where that is exact
        s_out = list(s_cls.chunk(2))
        if len(views) > 2:                               # local crops: no masks, [CLS] only
            loc = torch.cat(views[2:])
            s_out += list(self.head(self.tokens(vit, loc, drop=c.drop_path)[:, 0]).chunk(len(views) - 2))
        tau_t, tau_p = self.teacher_temperature(step.progress), self.patch_temperature(step.progress)
        with torch.no_grad():
            t_vit, t_head = self.teacher.module[0], self.teacher.module[1]
            t_cls, t_patch = self.heads(t_head, self.tokens(t_vit, glob))
            t_cls_probs = list(self.centering(t_cls, tau_t).chunk(2))
            t_patch_probs = self.patch_centering(t_patch, tau_p)
        loss_cls = dino_loss(t_cls_probs, s_out, c.student_temp)
        loss_patch = ibot_patch_loss(t_patch_probs, s_patch, mask, c.student_temp)  # same crop, masked positions
        self._pending = t_cls.detach()
        self._pending_patch = t_patch.detach()
        return {"loss": c.lambda_cls * loss_cls + c.lambda_patch * loss_patch, "loss_cls": loss_cls.detach(),
                "loss_patch": loss_patch.detach(), "masked": mask.float().mean()}

    @torch.no_grad()
    def on_step_end(self, step):
        super().on_step_end(step)
        if self._pending_patch is not None:
            self.patch_centering.update(self._pending_patch)
            self._pending_patch = None
