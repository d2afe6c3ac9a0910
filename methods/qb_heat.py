"""QB-Heat (Chen, Dai, Chen, Liu, Yuan, Liu & Lin, 2022), "Self-Supervised Learning based on
Heat Equation" (arXiv 2211.13228).

Masked image modelling with one visible quarter. The encoder sees only a quarter block of the image
(here the top-left gh/2 x gw/2 patches, rounded up on an odd grid; horizontal flips in the views move it to the other top
corner); the features of the other three quarters are *extrapolated* from it by the discretised
steady-state heat equation, split into two first-order equations dz/dx = A z and dz/dy = B z:

    z(x + dx, y) = (I + dx A) z(x, y),    z(x, y + dy) = (I + dy B) z(x, y)

with A and B learned D x D matrices (initialised at 0: the start is a constant extension) and
dx = dy = one patch. The extrapolation runs rightwards from the quarter's last column over its rows,
then downwards from the last known row over every column, so every position of the grid gets a
feature that is a linear function of the encoded border. A small decoder of MAE's shape (sin-cos
positions, Transformer blocks; ``methods.mae.MAEDecoder``) maps the whole feature grid to pixels,
and the loss is MAE's normalised-pixel MSE on the three extrapolated quarters.

The paper has no released code; what it leaves open is fixed here and said: the top-left corner,
full D x D matrices, the order of the two sweeps, the decoder (MAE's small one) and the loss on the
extrapolated patches only. ``encoder()`` is the ViT backbone: its normal forward (every patch, no
extrapolation) gives the features the evaluator scores. Optimiser: MAE's (AdamW (0.9, 0.95), base LR
1.5e-4 x batch/256, weight decay 0.05), crop (0.2, 1) + flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness import (
    ConfigError,
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    between,
    final_norm,
    input_tokens,
    patchify,
    positive,
    register_method,
    run_blocks,
)
from methods.losses import mae_loss
from methods.mae import MAEDecoder, fix_sincos_pos_embed, no_decay_groups


@dataclass
class QBHeatConfig:
    decoder_dim: int = 512
    decoder_depth: int = 4
    decoder_heads: int = positive(16)
    norm_pix_loss: bool = True
    fixed_pos_embed: bool = True
    crop_min_scale: float = between(0.2, 0, 1, open_lo=True)

    checks = ((lambda c: c.decoder_dim % c.decoder_heads == 0, "decoder_dim divisible by decoder_heads"),)


def heat_extrapolate(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Quarter features (B, h, w, D) -> the whole grid (B, H, W, D) by z(x+1, y) = (I + A) z(x, y) along
    rows, then z(x, y+1) = (I + B) z(x, y) down the columns (z as column vectors: z <- z (I + A)^T)."""
    gh, gw = grid
    n, h, w, d = z.shape
    eye = torch.eye(d, device=z.device, dtype=z.dtype)
    step_x, step_y = (eye + a.to(z.dtype)).t(), (eye + b.to(z.dtype)).t()
    cols = [z[:, :, j] for j in range(w)]
    for _ in range(w, gw):
        cols.append(cols[-1] @ step_x)
    top = torch.stack(cols, dim=2)                                  # (B, h, W, D)
    rows = [top[:, i] for i in range(h)]
    for _ in range(h, gh):
        rows.append(rows[-1] @ step_y)
    return torch.stack(rows, dim=1)                                 # (B, H, W, D)


@register_method("qb_heat", family="masked image modelling", paper="Chen et al., 2022 (QB-Heat)",
                 venue="preprint, arXiv:2211.13228")
class QBHeat(Method):
    Config = QBHeatConfig
    requires = Requirements(vit=True)
    optim = OptimDefaults("adamw", base_lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))

    def __init__(self, backbone, cfg: QBHeatConfig, info):
        super().__init__(backbone, cfg, info)
        vit = backbone
        self.grid = tuple(vit.patch_embed.grid_size)
        gh, gw = self.grid
        if gh < 2 or gw < 2:
            raise ConfigError(f"qb_heat: a {gh}x{gw} patch grid has no quarter block to extrapolate from")
        self.quarter = ((gh + 1) // 2, (gw + 1) // 2)      # an odd grid (28 px / 4 = 7) keeps the larger half
        self.patch = vit.patch_embed.patch_size[0]
        if cfg.fixed_pos_embed:
            fix_sincos_pos_embed(vit)
        d = vit.embed_dim
        self.heat_a = nn.Parameter(torch.zeros(d, d))
        self.heat_b = nn.Parameter(torch.zeros(d, d))
        rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        quarter = ((rows < self.quarter[0]) & (cols < self.quarter[1])).flatten()
        self.register_buffer("quarter_ids", quarter.nonzero().flatten(), persistent=False)
        self.register_buffer("outside", (~quarter).float(), persistent=False)
        self.decoder = MAEDecoder(d, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, self.grid,
                                  vit.num_prefix_tokens, self.patch * self.patch * info.channels)

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels of every patch (B, L, p*p*C) from the top-left quarter alone."""
        vit = self.backbone
        npf = vit.num_prefix_tokens
        gh, gw = self.grid
        seq = input_tokens(vit, x)
        b, _, d = seq.shape
        quarter = seq[:, npf:].index_select(1, self.quarter_ids)
        t, _ = run_blocks(vit, torch.cat([seq[:, :npf], quarter], dim=1))
        t = final_norm(vit, t)
        z = heat_extrapolate(t[:, npf:].reshape(b, *self.quarter, d), self.heat_a, self.heat_b, self.grid)
        full = torch.cat([t[:, :npf], z.reshape(b, gh * gw, d)], dim=1)
        ids_restore = torch.arange(gh * gw, device=x.device).expand(b, -1)
        return self.decoder(full, ids_restore)

    def training_step(self, batch, step):
        x = batch.views.images[0]
        mask = self.outside.expand(x.shape[0], -1)
        return {"loss": mae_loss(self.predict(x), patchify(x, self.patch), mask, norm_pix=self.cfg.norm_pix_loss)}

    def param_groups(self) -> list[dict]:
        return no_decay_groups(self)
