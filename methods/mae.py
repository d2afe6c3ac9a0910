"""MAE (He, Chen, Xie, Li, Dollar & Girshick, 2022), "Masked Autoencoders Are Scalable
Vision Learners".

An image is divided into non-overlapping p x p patches (L of them) and a random subset of
75% is removed: per sample, a uniform noise vector is drawn, sorted, and the patches with
the smallest noise kept (``random_masking``; the noise comes from ``step.generator``, so a
resumed run masks the same patches). The *encoder*, a ViT (the timm ``VisionTransformer``
backbone: its ``patch_embed``, ``pos_embed``, ``cls_token``, ``blocks`` and final norm),
embeds and processes only the L/4 visible patches plus the [CLS] token; no mask tokens
enter it. A lightweight *decoder* maps the encoded tokens to its own width, appends a
shared learned mask token for every removed patch, restores the original patch order, adds
its own fixed 2-D sin-cos position embeddings, and runs a few Transformer blocks; a linear
layer predicts the p*p*C pixel values of every patch. The target is each patch's pixels
normalised by that patch's own mean and variance (``norm_pix_loss``), and the loss is the
mean squared error on the *masked* patches only (``methods.losses.mae_loss``):

    L = sum_{i masked} || x_hat_i - (x_i - mu_i) / sqrt(var_i + 1e-6) ||^2 / (P * #masked)

Like the paper, the encoder's position embeddings are fixed 2-D sin-cos (the backbone's
learned ``pos_embed`` is overwritten and frozen; ``fixed_pos_embed=False`` keeps it
learned). The backbone built for small images pools by averaging patch tokens, for which
timm puts the final LayerNorm after the pooling (``fc_norm``) instead of on the tokens
(``norm``); the encoder here applies that same LayerNorm to the tokens, so the norm the
evaluator uses is the one trained. ``encoder()`` is the ViT backbone, whose normal forward
(all patches, no mask) gives the average-pooled features the evaluator scores.

Paper defaults: mask ratio 0.75, decoder depth 8 and width 512 (16 heads), norm-pix loss,
AdamW (betas 0.9, 0.95) with base LR 1.5e-4 x batch/256, weight decay 0.05, cosine LR
with warm-up; augmentation is random resized crop (scale 0.2-1) and flip only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from harness import (
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    between,
    final_norm,
    input_tokens,
    patchify,
    positive,
    random_masking,
    register_method,
    run_blocks,
    sincos_pos_embed_2d,
)
from methods.losses import mae_loss


@dataclass
class MAEConfig:
    mask_ratio: float = between(0.75, 0, 1, open_hi=True)
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = positive(16)
    norm_pix_loss: bool = True
    fixed_pos_embed: bool = True    # fixed 2-D sin-cos position embeddings in the encoder too
    crop_min_scale: float = 0.2

    checks = ((lambda c: c.decoder_dim % c.decoder_heads == 0, "decoder_dim divisible by decoder_heads"),)


# ----------------------------------------------------------------------------- decoder


def decoder_blocks(dim: int, depth: int, heads: int) -> nn.ModuleList:
    from timm.models.vision_transformer import Block

    return nn.ModuleList([Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
                          for _ in range(depth)])


def init_decoder(modules, mask_token: torch.Tensor) -> None:
    """MAE's decoder initialisation: xavier-uniform linear layers, zero biases, unit LayerNorms, N(0, 0.02) mask token."""
    nn.init.normal_(mask_token, std=0.02)
    for m in modules:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def decode(x: torch.Tensor, ids_restore: torch.Tensor, num_prefix: int, embed: nn.Module, mask_token: torch.Tensor,
           pos_embed: torch.Tensor, blocks: nn.ModuleList, norm: nn.Module) -> torch.Tensor:
    """MAE's decoder body: encoded visible tokens (B, prefix + L_keep, D) -> decoded patch tokens (B, L, D_dec).
    Tokens are mapped to the decoder width, a shared mask token fills every removed patch, the
    original order is restored, fixed position embeddings are added and the blocks run."""
    x = embed(x)
    b, length = ids_restore.shape
    n_mask = length - (x.shape[1] - num_prefix)
    patches = torch.cat([x[:, num_prefix:], mask_token.to(x.dtype).expand(b, n_mask, -1)], dim=1)
    patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    x = torch.cat([x[:, :num_prefix], patches], dim=1) + pos_embed.to(x.dtype)
    for blk in blocks:
        x = blk(x)
    return norm(x)[:, num_prefix:]


class MAEDecoder(nn.Module):
    """A decoder of MAE's shape as its own module (DeepMIM's extra decoders, LocalMIM's per-layer ones):
    embed -> mask tokens + order + sin-cos positions -> ``depth`` blocks -> LayerNorm -> ``pred``."""

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, grid: tuple[int, int], num_prefix: int,
                 out_dim: int | None):
        super().__init__()
        self.num_prefix = num_prefix
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid[0], grid[1], num_prefix)[None], persistent=False)
        self.blocks = decoder_blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, out_dim) if out_dim else nn.Identity()
        init_decoder(self.modules(), self.mask_token)

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        h = decode(x, ids_restore, self.num_prefix, self.embed, self.mask_token, self.pos_embed, self.blocks, self.norm)
        return self.pred(h)


def encode_visible(vit: nn.Module, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator, taps=()):
    """MAE's encoder: the visible patches only (and the prefix tokens), position embeddings added before
    the random subset is taken. Returns (final tokens after the final norm (B, prefix + L_keep, D), the
    raw outputs of the blocks in ``taps`` (1-based), mask (B, L), ids_restore (B, L))."""
    x = input_tokens(vit, imgs)
    npf = vit.num_prefix_tokens
    b, n, d = x.shape
    ids_keep, mask, ids_restore = random_masking(b, n - npf, mask_ratio, generator, imgs.device)
    visible = torch.gather(x[:, npf:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    x, taps_out = run_blocks(vit, torch.cat([x[:, :npf], visible], dim=1), taps)
    return final_norm(vit, x), taps_out, mask, ids_restore


def fix_sincos_pos_embed(vit: nn.Module) -> None:
    """Overwrite the ViT's learned position embedding with fixed 2-D sin-cos values and freeze it (MAE)."""
    if vit.pos_embed is None:
        return
    gh, gw = vit.patch_embed.grid_size
    prefix_rows = 0 if vit.no_embed_class else vit.num_prefix_tokens
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_pos_embed_2d(vit.embed_dim, gh, gw, prefix_rows)[None])
    vit.pos_embed.requires_grad_(False)


def no_decay_groups(module: nn.Module) -> list[dict]:
    """No weight decay on biases, norms, position embeddings, [CLS] and mask tokens (MAE, BEiT, SimMIM)."""
    decay, no_decay = [], []
    for n, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or n.endswith(("pos_embed", "cls_token", "reg_token", "mask_token"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


# ----------------------------------------------------------------------------- method


@register_method("mae", family="masked image modelling", paper="He et al., 2022 (MAE)",
                 venue="CVPR 2022, arXiv:2111.06377")
class MAE(Method):
    Config = MAEConfig
    requires = Requirements(vit=True)
    optim = OptimDefaults("adamw", base_lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))

    def __init__(self, backbone, cfg: MAEConfig, info):
        super().__init__(backbone, cfg, info)
        vit = backbone
        self.patch = vit.patch_embed.patch_size[0]
        gh, gw = vit.patch_embed.grid_size
        self.grid = (gh, gw)
        self.num_prefix = vit.num_prefix_tokens
        if cfg.fixed_pos_embed:
            fix_sincos_pos_embed(vit)

        # decoder
        self.decoder_embed = nn.Linear(vit.embed_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_pos_embed_2d(cfg.decoder_dim, gh, gw, self.num_prefix)[None], persistent=False)
        self.decoder_blocks = decoder_blocks(cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch * self.patch * info.channels)
        init_decoder([m for n, m in self.named_modules() if n.startswith("decoder")], self.mask_token)

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    # ------------------------------------------------------------------ encoder / decoder
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator):
        """Encode the visible patches only. Returns (tokens (B, prefix + L_keep, D), mask, ids_restore)."""
        latent, _, mask, ids_restore = encode_visible(self.backbone, imgs, mask_ratio, generator)
        return latent, mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Tokens of the visible patches -> per-patch pixel predictions (B, L, p*p*C)."""
        return self.decoder_pred(decode(x, ids_restore, self.num_prefix, self.decoder_embed, self.mask_token,
                                        self.decoder_pos_embed, self.decoder_blocks, self.decoder_norm))

    def training_step(self, batch, step):
        imgs = batch.views.images[0]
        latent, mask, ids_restore = self.forward_encoder(imgs, self.cfg.mask_ratio, step.generator)
        pred = self.forward_decoder(latent, ids_restore)
        loss = mae_loss(pred, patchify(imgs, self.patch), mask, norm_pix=self.cfg.norm_pix_loss)
        return {"loss": loss}

    def param_groups(self) -> list[dict]:
        """No weight decay on biases, norms, position embeddings, [CLS] and mask tokens (paper)."""
        return no_decay_groups(self)
