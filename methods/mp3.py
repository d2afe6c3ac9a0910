"""Masked Patch Position Prediction (Zhai, Jaitly, Ramapuram, ... & Susskind, 2022), "Position
Prediction as an Effective Pretraining Strategy" (MP3).

A Vision Transformer sees its patch tokens *without position embeddings* and must tell, for every
token, where in the image it came from: a classification over the P patch positions,

    L = 1/P sum_p CE( W h_p, p )

where h_p is the output token of the patch at position p. To make the task hard enough (with all
tokens visible the ViT can solve it from local continuity), keys and values come from a random
subset of the patch tokens only: a fraction ``mask_ratio`` of the patches is removed from the
key/value set (a boolean attention mask per image, the same in every block), while every patch
still queries. The [CLS] token stays a key.

Position embeddings: the backbone's ``pos_embed`` is set to zero at the start and left out of
the optimiser, so the pretrained network has no position information; ``encoder()`` is that
ViT, whose forward pass adds the (zero) position embeddings: frozen protocols (kNN, linear)
score the position-free network as it was trained, and the fine-tuning protocol trains every
parameter, so fine-tuning adds position embeddings back, learnt from zero (the paper's recipe).

Needs a ViT backbone (``vit_mini_p4`` / ``vit_tiny_p4`` at 28-32 px). Defaults: mask ratio 0.75
(the paper's ImageNet setting) and the MAE-style optimiser the paper's ViT recipe follows: AdamW,
LR 1.5e-4 x batch/256 with warm-up and cosine decay, weight decay 0.05, betas (0.9, 0.95).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import Method, OptimDefaults, Requirements, ViewRecipe, between, register_method


@dataclass
class MP3Config:
    mask_ratio: float = between(0.75, 0, 1, open_hi=True)   # fraction of patches removed from keys/values
    crop_min_scale: float = between(0.2, 0, 1, open_lo=True)


def kv_mask(batch: int, num_patches: int, prefix: int, ratio: float, gen: torch.Generator, device) -> torch.Tensor:
    """A boolean attention mask (B, 1, 1, prefix + P): True where a token may be attended to (a key).

    The ``prefix`` tokens ([CLS]) are always keys; of the P patches, round(P * (1 - ratio)) chosen
    uniformly per image are keys (at least one)."""
    keep = max(1, int(round(num_patches * (1 - ratio))))
    order = torch.rand(batch, num_patches, generator=gen, device=device).argsort(dim=1)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :keep], True)
    head = torch.ones(batch, prefix, dtype=torch.bool, device=device)
    return torch.cat([head, mask], dim=1).view(batch, 1, 1, prefix + num_patches)


@register_method("mp3", family="pretext", paper="Zhai et al., 2022 (MP3: Masked Patch Position Prediction)",
                 venue="ICML 2022, arXiv:2207.07611")
class MP3(Method):
    Config = MP3Config
    requires = Requirements(vit=True)
    optim = OptimDefaults("adamw", base_lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))

    def __init__(self, backbone, cfg: MP3Config, info):
        super().__init__(backbone, cfg, info)
        nn.init.zeros_(backbone.pos_embed)          # no position information in pretraining
        self.num_patches = backbone.patch_embed.num_patches
        self.position_head = nn.Linear(backbone.embed_dim, self.num_patches)

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def param_groups(self) -> list[dict]:
        # pos_embed stays zero: outside the optimiser (its gradient exists, see training_step, so DDP sees it)
        groups = super().param_groups()
        pe = self.backbone.pos_embed
        for g in groups:
            g["params"] = [p for p in g["params"] if p is not pe]
        return groups

    def training_step(self, batch, step):
        vit = self.backbone
        x = batch.views.images[0]
        b = x.shape[0]
        tokens = vit.patch_embed(x)                                           # (B, P, D)
        prefix = vit.num_prefix_tokens
        if vit.cls_token is not None:
            tokens = torch.cat([vit.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + 0.0 * vit.pos_embed.sum()                           # no positions; a zero gradient
        mask = kv_mask(b, self.num_patches, prefix, self.cfg.mask_ratio, step.generator, x.device)
        h = vit.norm_pre(tokens)
        for blk in vit.blocks:
            h = blk(h, attn_mask=mask)
        h = vit.norm(h)[:, prefix:]                                            # (B, P, D) patch tokens
        logits = self.position_head(h).flatten(0, 1)
        target = torch.arange(self.num_patches, device=x.device).repeat(b)
        loss = F.cross_entropy(logits.float(), target)
        acc = (logits.detach().argmax(1) == target).float().mean()
        return {"loss": loss, "pos_acc": acc}
