"""BEiT (Bao, Dong, Piao & Wei, 2021), "BEiT: BERT Pre-Training of Image Transformers".

Masked image modelling with a discrete target. An image has two views: its patches (the ViT's
input) and its visual tokens, one id per patch from a discrete tokenizer. About 40% of the patches
are masked block-wise (``harness.block_mask``: rectangles of >= 16 patches and aspect ratio in
[0.3, 1/0.3] added until 75 of 196 are covered); their embeddings are replaced by a learned mask
token inside the encoder (``harness.input_tokens``), all tokens run through the ViT, and a linear
head on each masked position predicts its visual token (softmax over the codebook):

    L = - sum_{i masked} log p(z_i | x^M) / #masked

The tokenizer is the method's first stage: BEiT used DALL-E's pretrained dVAE (a download, out of
reach offline), so a VQ-VAE tokenizer with a code grid equal to the patch grid is trained here first
(``harness.models.tokenizer.VQTokenizer``, reconstruction + codebook + commitment losses) for the
first ``tokenizer_fraction`` of the budget, then frozen; the ViT trains on its token ids for the
rest. The tokenizer is a submodule, so it is in every checkpoint: a run resumed after the first
stage never retrains it, and a run resumed inside it continues it.

``encoder()`` is the ViT backbone (the mask token is unused at evaluation). Paper defaults: 40% block
masking (min block 16 patches), codebook 8192, AdamW (0.9, 0.999), LR 1.5e-3 at batch 2048
(1.875e-4 at 256), weight decay 0.05, random resized crop (0.08, 1) + flip. The paper's ViT has
relative position biases and layer scale; here the backbone keeps its absolute position embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    at_least,
    between,
    block_mask,
    final_norm,
    input_tokens,
    positive,
    register_method,
    run_blocks,
)
from harness.models.tokenizer import VQTokenizer
from methods.mae import no_decay_groups


@dataclass
class BEiTConfig:
    mask_fraction: float = between(0.4, 0, 1, open_lo=True, open_hi=True)   # 75 / 196 patches
    min_block: int = at_least(16, 1)                  # patches per masked block, at least
    min_aspect: float = between(0.3, 0, 1, open_lo=True)
    codebook_size: int = at_least(8192, 2)
    code_dim: int = positive(32)
    tokenizer_width: int = positive(64)
    tokenizer_fraction: float = between(0.25, 0, 1, open_lo=True, open_hi=True)  # of the budget: stage 1
    crop_min_scale: float = between(0.08, 0, 1, open_lo=True)


@register_method("beit", family="masked image modelling", paper="Bao et al., 2021 (BEiT)",
                 venue="ICLR 2022, arXiv:2106.08254")
class BEiT(Method):
    Config = BEiTConfig
    requires = Requirements(vit=True)
    optim = OptimDefaults("adamw", base_lr=1.875e-4, weight_decay=0.05, betas=(0.9, 0.999))
    unused_parameters = True      # stage 1 trains only the tokenizer, stage 2 everything but it

    def __init__(self, backbone, cfg: BEiTConfig, info):
        super().__init__(backbone, cfg, info)
        vit = backbone
        self.grid = tuple(vit.patch_embed.grid_size)
        self.num_masked = max(1, round(cfg.mask_fraction * self.grid[0] * self.grid[1]))
        self.tokenizer = VQTokenizer(info.channels, vit.patch_embed.patch_size[0], cfg.codebook_size, cfg.code_dim,
                                     cfg.tokenizer_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.lm_head = nn.Linear(vit.embed_dim, cfg.codebook_size)

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def training_step(self, batch, step):
        x = batch.views.images[0]
        if step.progress < self.cfg.tokenizer_fraction:                # stage 1: the tokenizer
            out = self.tokenizer(x)
            return {"loss": out["loss"], "tokenizer_recon": out["recon"], "codes_used": out["codes_used"]}
        self.tokenizer.eval().requires_grad_(False)                     # stage 2: frozen, its ids are the targets
        with torch.no_grad():
            targets = self.tokenizer.tokens(x)
        mask = block_mask(x.shape[0], *self.grid, self.num_masked, step.generator, min_block=self.cfg.min_block,
                          min_aspect=self.cfg.min_aspect, device=x.device)
        tokens, _ = run_blocks(self.backbone, input_tokens(self.backbone, x, mask, self.mask_token))
        patches = final_norm(self.backbone, tokens)[:, self.backbone.num_prefix_tokens:]
        logits = self.lm_head(patches[mask])                            # masked positions only
        loss = F.cross_entropy(logits.float(), targets[mask])
        acc = (logits.detach().argmax(1) == targets[mask]).float().mean()
        return {"loss": loss, "token_acc": acc}

    def param_groups(self) -> list[dict]:
        return no_decay_groups(self)
