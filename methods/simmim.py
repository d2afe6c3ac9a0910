"""SimMIM (Xie, Zhang, Cao, Lin, Bao, Yao, Dai & Hu, 2022), "SimMIM: a Simple Framework for Masked
Image Modeling".

The image is divided into "mask patches" (32 px in the paper, twice the ViT's 16-px patch) and a
random 60% of them is masked (``harness.random_mask`` on the coarse grid, ``harness.upsample_mask``
onto the model's patches). Unlike MAE the encoder sees every position: the embedding of a masked
patch is replaced by a learned mask token before the position embedding is added
(``harness.input_tokens``), and all tokens run through the blocks. The prediction head is one
layer: a 1x1 convolution from the encoder's feature map (stride s) to s*s*C values per location,
rearranged to pixels by a pixel shuffle. The target is the (normalised) input itself and the loss
is L1 on the masked pixels only (``methods.losses.simmim_loss``):

    L = sum_{masked pixels} |x_hat - x| / (#masked pixels) / C

On a convnet (cnn4, ResNets: the paper's own point that the framework is architecture-agnostic,
shown there on Swin), the mask token is a learned colour written into the masked pixel regions of
the input, and the head reads the backbone's last feature map (``harness.feature_map``) the same way.

``encoder()`` is the backbone: its normal forward (no mask) gives the features the evaluator scores
(mean-pooled patch tokens after the final norm for our ViTs, pooled conv features otherwise).

Paper defaults (ViT-B, 224 px): mask patch 32 px, mask ratio 0.6, random resized crop (0.67, 1) and
flip, AdamW (0.9, 0.999), base LR 1e-4 per 512 images (5e-5 at 256), weight decay 0.05, no decay on
norms, biases, position embedding, [CLS]; warm-up then decay. The paper's ViT uses a shared relative
position bias instead of absolute position embeddings; here the backbone's own (learned absolute)
position embedding stays, which the evaluator's fine-tuning also uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness import (
    ConfigError,
    Method,
    OptimDefaults,
    ViewRecipe,
    between,
    feature_map,
    final_norm,
    has_feature_map,
    input_tokens,
    is_vit,
    positive,
    random_mask,
    register_method,
    run_blocks,
    token_grid,
    upsample_mask,
)
from methods.losses import simmim_loss
from methods.mae import no_decay_groups


@dataclass
class SimMIMConfig:
    mask_ratio: float = between(0.6, 0, 1, open_lo=True, open_hi=True)
    mask_patch: int = positive(32)          # pixels per side of one masked unit
    crop_min_scale: float = between(0.67, 0, 1, open_lo=True)


@register_method("simmim", family="masked image modelling", paper="Xie et al., 2022 (SimMIM)",
                 venue="CVPR 2022, arXiv:2111.09886")
class SimMIM(Method):
    Config = SimMIMConfig
    optim = OptimDefaults("adamw", base_lr=5e-5, weight_decay=0.05, betas=(0.9, 0.999))

    def __init__(self, backbone, cfg: SimMIMConfig, info):
        super().__init__(backbone, cfg, info)
        size, mp = info.image_size, cfg.mask_patch
        self.vit = is_vit(backbone)
        if not self.vit and not has_feature_map(backbone):
            raise ConfigError("simmim needs a ViT or a backbone with a spatial feature map (cnn4, resnet18_cifar, ...)")
        if size % mp or size // mp < 2:
            raise ConfigError(f"simmim: method_cfg.mask_patch={mp} px does not divide {size}-px images into at least a "
                              f"2x2 grid; choose a divisor of {size} up to {size // 2} (the small preset uses 8)")
        self.mask_grid = size // mp
        if self.vit:
            p = backbone.patch_embed.patch_size[0]
            if mp % p:
                raise ConfigError(f"simmim: method_cfg.mask_patch={mp} must be a multiple of the ViT's {p}-px patch")
            self.factor = mp // p
            self.grid = tuple(backbone.patch_embed.grid_size)
            self.stride = p
            dim = backbone.embed_dim
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        else:
            was = backbone.training
            backbone.eval()                          # a shape probe: BatchNorm statistics stay untouched
            with torch.no_grad():
                probe = feature_map(backbone, torch.zeros(2, info.channels, size, size))
            backbone.train(was)
            dim, h = probe.shape[1], probe.shape[-1]
            if size % h:
                raise ConfigError(f"simmim: a {h}x{h} feature map does not tile {size}-px images")
            self.stride = size // h
            self.mask_token = nn.Parameter(torch.zeros(1, info.channels, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        # one-layer head: 1x1 conv to stride^2 * C values, pixel shuffle back to the image grid
        self.head = nn.Sequential(nn.Conv2d(dim, self.stride ** 2 * info.channels, 1), nn.PixelShuffle(self.stride))

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def features(self, x: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """The masked input's feature map (B, D, h, w); ``coarse`` is the (B, g*g) mask on the mask-patch grid."""
        if self.vit:
            mask = upsample_mask(coarse, self.mask_grid, self.mask_grid, self.factor)
            tokens, _ = run_blocks(self.backbone, input_tokens(self.backbone, x, mask, self.mask_token))
            tokens = final_norm(self.backbone, tokens)[:, self.backbone.num_prefix_tokens:]
            return token_grid(tokens, self.grid)
        pix = upsample_mask(coarse, self.mask_grid, self.mask_grid, self.cfg.mask_patch).view(-1, 1, *x.shape[-2:])
        w = pix.to(x.dtype)
        return feature_map(self.backbone, x * (1 - w) + self.mask_token.to(x.dtype) * w)

    def training_step(self, batch, step):
        x = batch.views.images[0]
        b, size = x.shape[0], x.shape[-1]
        coarse = random_mask(b, self.mask_grid ** 2, self.cfg.mask_ratio, step.generator, x.device)
        rec = self.head(self.features(x, coarse))
        pix = upsample_mask(coarse, self.mask_grid, self.mask_grid, self.cfg.mask_patch).view(b, 1, size, size)
        return {"loss": simmim_loss(rec, x, pix)}

    def param_groups(self) -> list[dict]:
        return no_decay_groups(self)
