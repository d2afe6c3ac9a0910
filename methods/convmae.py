"""ConvMAE (Gao, Ma, Li, Lin, Dai & Qiao, 2022), "ConvMAE: Masked Convolution Meets Masked
Autoencoders".

MAE on a hybrid convolution-transformer backbone (``harness.models.hybrid.ConvViT``, registered as
``convvit_mini`` / ``convvit_base``, usable by any method). One random mask (75%, MAE's
``random_masking``) is drawn on the stage-3 token grid and shared by every scale: repeated onto the
stage-1 and stage-2 maps, it zeroes the masked positions before each 5x5 depthwise convolution
(*masked convolution*: no visible feature sees a masked pixel), and only the visible tokens enter
the Transformer stage. The stage-1 and stage-2 maps, brought to the token grid by strided
convolutions, are added to the visible tokens (multi-scale fusion) before the final norm. MAE's
decoder (mask tokens, sin-cos positions, Transformer blocks; ``methods.mae.decode``) predicts the
pixels of every stage-3 patch (stride x stride x C), and the loss is the norm-pix MSE on the masked
patches (``methods.losses.mae_loss``).

``encoder()`` is the hybrid backbone: every position, no mask, the mean of its final tokens.
Paper defaults: mask ratio 0.75, decoder width 512, depth 8, 16 heads, norm-pix loss (the
pretraining recipe), AdamW (0.9, 0.95), base LR 1.5e-4 x batch/256, weight decay 0.05, crop (0.2, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import (
    ConfigError,
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    between,
    patchify,
    positive,
    random_masking,
    register_method,
)
from harness.models.hybrid import ConvViT
from methods.losses import mae_loss
from methods.mae import MAEDecoder, no_decay_groups


@dataclass
class ConvMAEConfig:
    mask_ratio: float = between(0.75, 0, 1, open_hi=True)
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = positive(16)
    norm_pix_loss: bool = True
    crop_min_scale: float = between(0.2, 0, 1, open_lo=True)

    checks = ((lambda c: c.decoder_dim % c.decoder_heads == 0, "decoder_dim divisible by decoder_heads"),)


@register_method("convmae", family="masked image modelling", paper="Gao et al., 2022 (ConvMAE)",
                 venue="NeurIPS 2022, arXiv:2205.03892")
class ConvMAE(Method):
    Config = ConvMAEConfig
    requires = Requirements(backbone="convvit")   # its hybrid conv-transformer (convvit_mini, convvit_base)
    optim = OptimDefaults("adamw", base_lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))

    def __init__(self, backbone, cfg: ConvMAEConfig, info):
        super().__init__(backbone, cfg, info)
        if not isinstance(backbone, ConvViT):
            raise ConfigError(f"convmae needs its hybrid convolution-transformer backbone; got {type(backbone).__name__}: "
                              f"use backbone=convvit_mini (28-32 px) or convvit_base")
        self.decoder = MAEDecoder(backbone.embed_dim, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                  backbone.grid, 0, backbone.patch_size ** 2 * info.channels)

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def training_step(self, batch, step):
        x = batch.views.images[0]
        net = self.backbone
        length = net.grid[0] * net.grid[1]
        ids_keep, mask, ids_restore = random_masking(x.shape[0], length, self.cfg.mask_ratio, step.generator, x.device)
        latent = net.tokens(x, mask=mask, ids_keep=ids_keep)
        pred = self.decoder(latent, ids_restore)
        return {"loss": mae_loss(pred, patchify(x, net.patch_size), mask, norm_pix=self.cfg.norm_pix_loss)}

    def param_groups(self) -> list[dict]:
        return no_decay_groups(self)
