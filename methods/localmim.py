"""LocalMIM (Wang, Tang, Wang, Guo, Deng & Han, 2023), "Masked Image Modeling
with Local Multi-Scale Reconstruction".

MAE's masked encoder (random 75% of the patches removed, the visible ones encoded), but the
reconstruction is supervised *locally*, at several encoder layers, each with its own small decoder
and a target at its own scale: lower layers reconstruct fine-scale targets, upper layers coarse ones.
For a 12-block ViT-B the taps are blocks 2, 4, 10 and 12 with target scales 4, 2, 1 and 1/2 of the
patch grid (14x14 -> 56, 28, 14, 7 cells): the target of scale s is the HOG of cells of p / s
pixels (``harness.hog_cells``: per-channel Sobel gradients, 9 unsigned-orientation bins, averaged
per cell, L2-normalised; computed on the normalised input). Each tapped output gets its own
LayerNorm (the last block's is the encoder's final norm, so the norm the evaluator uses is trained),
then a decoder of MAE's shape (width 256, 1 block, 8 heads; ``methods.mae.MAEDecoder``) gives a
256-d map on the patch grid, which a scale head brings to the target's grid: log2(s) stride-2
transposed convolutions (LayerNorm + GELU between) for s > 1, an average pool for s < 1, then a 1x1
convolution to the HOG channels. The loss of a layer is the MSE averaged over channels and masked
locations (the patch mask repeated onto finer grids, averaged onto coarser ones), and the layers'
losses are added with weight 1:

    L = sum_l sum_{cells} m_l * mean_c (y_hat_l - HOG_{p/s_l}(x))^2 / sum m_l

``encoder()`` is the ViT backbone. Paper defaults: mask ratio 0.75, AdamW (0.9, 0.95), base LR 2e-4
x batch/256, weight decay 0.05, crop (0.2, 1) + flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    ConfigError,
    LayerNorm2d,
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    between,
    hog_cells,
    positive,
    register_method,
    token_grid,
    upsample_mask,
)
from methods.deepmim import taps_of
from methods.mae import MAEDecoder, encode_visible, fix_sincos_pos_embed, no_decay_groups


@dataclass
class LocalMIMConfig:
    mask_ratio: float = between(0.75, 0, 1, open_hi=True)
    tap_fractions: list[float] = field(default_factory=lambda: [2 / 12, 4 / 12, 10 / 12, 1.0],
                                       metadata={"min": 0, "max": 1, "strict": True})
    scales: list[float] = field(default_factory=lambda: [4.0, 2.0, 1.0, 0.5], metadata={"min": 0, "strict": True})
    decoder_dim: int = 256
    decoder_depth: int = 1
    decoder_heads: int = positive(8)
    hog_bins: int = positive(9)
    fixed_pos_embed: bool = True
    crop_min_scale: float = 0.2

    checks = ((lambda c: len(c.tap_fractions) == len(c.scales), "as many scales as tap_fractions"),
              (lambda c: c.decoder_dim % c.decoder_heads == 0, "decoder_dim divisible by decoder_heads"),
              (lambda c: all(s >= 1 and math.log2(s).is_integer() or s < 1 and math.log2(1 / s).is_integer()
                             for s in c.scales), "every scale a power of 2 (e.g. 4, 2, 1, 0.5)"))


def scale_head(dim: int, scale: float, out: int) -> nn.Sequential:
    """A 256-d map on the patch grid -> ``out`` channels on a grid ``scale`` times finer (or coarser)."""
    layers: list[nn.Module] = []
    if scale >= 1:
        for i in range(int(math.log2(scale))):
            layers += [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)]
            dim //= 2
            if i < int(math.log2(scale)) - 1:
                layers += [LayerNorm2d(dim, eps=1e-6), nn.GELU()]
    else:
        layers += [nn.AvgPool2d(int(1 / scale))]
    return nn.Sequential(*layers, nn.Conv2d(dim, out, 1))


def mask_at_scale(mask: torch.Tensor, grid: tuple[int, int], scale: float) -> torch.Tensor:
    """The patch mask (B, L) on a grid ``scale`` times finer (repeated) or coarser (averaged): (B, 1, h, w)."""
    if scale >= 1:
        k = int(scale)
        return upsample_mask(mask, grid[0], grid[1], k).float().view(-1, 1, grid[0] * k, grid[1] * k)
    return F.avg_pool2d(mask.float().view(-1, 1, *grid), int(1 / scale))


def local_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE averaged over channels, weighted by the (B, 1, h, w) mask, normalised by its sum."""
    per = ((pred.float() - target.float()) ** 2).mean(1, keepdim=True)
    return (per * mask).sum() / mask.sum().clamp_min(1e-6)


@register_method("localmim", family="masked image modelling", paper="Wang et al., 2023 (LocalMIM)",
                 venue="CVPR 2023, arXiv:2303.05251")
class LocalMIM(Method):
    Config = LocalMIMConfig
    requires = Requirements(vit=True)
    optim = OptimDefaults("adamw", base_lr=2e-4, weight_decay=0.05, betas=(0.9, 0.95))

    def __init__(self, backbone, cfg: LocalMIMConfig, info):
        super().__init__(backbone, cfg, info)
        vit = backbone
        self.patch = vit.patch_embed.patch_size[0]
        self.grid = tuple(vit.patch_embed.grid_size)
        depth = len(vit.blocks)
        pairs = sorted(zip(cfg.tap_fractions, cfg.scales))             # each tap keeps its own scale
        self.scales = [s for _, s in pairs]
        self.taps = taps_of([f for f, _ in pairs], depth, "localmim", allow_last=True)
        if len(self.taps) != len(cfg.scales):
            raise ConfigError(f"localmim: tap fractions {cfg.tap_fractions} give blocks {self.taps} of a {depth}-block "
                              f"ViT (fewer distinct blocks than the {len(cfg.scales)} scales); choose distinct blocks")
        for s in self.scales:
            cell = self.patch / s
            if cell < 1 or not float(cell).is_integer() or info.image_size % int(cell):
                raise ConfigError(f"localmim: scale {s} with {self.patch}-px patches gives {cell}-px HOG cells on "
                                  f"{info.image_size}-px images; choose scales that give whole cells dividing the image")
        if cfg.fixed_pos_embed:
            fix_sincos_pos_embed(vit)
        self.cells = [int(self.patch / s) for s in self.scales]
        hog = info.channels * cfg.hog_bins
        self.tap_norms = nn.ModuleList([nn.LayerNorm(vit.embed_dim, eps=1e-6) if t < depth else nn.Identity()
                                        for t in self.taps])
        self.decoders = nn.ModuleList([MAEDecoder(vit.embed_dim, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                                  self.grid, vit.num_prefix_tokens, None) for _ in self.taps])
        self.heads = nn.ModuleList([scale_head(cfg.decoder_dim, s, hog) for s in self.scales])

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def training_step(self, batch, step):
        x = batch.views.images[0]
        vit = self.backbone
        last, taps, mask, ids_restore = encode_visible(vit, x, self.cfg.mask_ratio, step.generator, self.taps)
        depth = len(vit.blocks)
        loss = 0.0
        out = {}
        for tap, z, norm, dec, head, s, cell in zip(self.taps, taps, self.tap_norms, self.decoders, self.heads,
                                                    self.scales, self.cells):
            z = last if tap == depth else norm(z)         # the last block: the encoder's final norm (already applied)
            pred = head(token_grid(dec(z, ids_restore), self.grid))
            with torch.no_grad():
                target = hog_cells(x.float(), cell, self.cfg.hog_bins)
            l_tap = local_loss(pred, target, mask_at_scale(mask, self.grid, s))
            out[f"loss_block{tap}"] = l_tap.detach()
            loss = loss + l_tap
        out["loss"] = loss
        return out

    def param_groups(self) -> list[dict]:
        return no_decay_groups(self)
