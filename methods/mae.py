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

from harness import ConfigError, Method, OptimDefaults, Requirements, ViewRecipe, between, positive, register_method
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


# ----------------------------------------------------------------------------- helpers


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, pixels as (p, p, C)."""
    b, c, h, w = imgs.shape
    if h % p or w % p:
        raise ConfigError(f"mae: image size {h}x{w} is not divisible by the patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, L, p*p*C) -> (B, C, H, W)."""
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, h, w)


def random_masking(batch: int, length: int, mask_ratio: float, generator: torch.Generator,
                   device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (the MAE recipe).

    Returns ``ids_keep`` (B, L_keep): indices of the kept patches; ``mask`` (B, L): 1 for a
    removed patch, 0 for a kept one, in the original order; ``ids_restore`` (B, L): the
    permutation that puts [kept, removed] tokens back in the original order.
    """
    keep = int(length * (1 - mask_ratio))
    if keep < 1:
        raise ConfigError(f"mae: mask_ratio={mask_ratio} keeps no patch out of {length}")
    noise = torch.rand(batch, length, generator=generator, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, length, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, num_prefix: int = 0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE / MoCo v3), (num_prefix + H*W, dim).

    Half the channels encode the row, half the column; each half is [sin(pos * w_k),
    cos(pos * w_k)] with w_k = 1 / 10000^(k / (dim/4)). Prefix tokens ([CLS]) get zeros.
    """
    if dim % 4:
        raise ConfigError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                            torch.arange(grid_w, dtype=torch.float64), indexing="ij")

    def emb(pos):
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    pe = torch.cat([emb(xs), emb(ys)], dim=1)  # (H*W, dim), row-major like patchify
    return torch.cat([torch.zeros(num_prefix, dim, dtype=torch.float64), pe]).float()


# ----------------------------------------------------------------------------- method


@register_method("mae", family="mim", paper="He et al., 2022 (MAE)")
class MAE(Method):
    Config = MAEConfig
    requires = Requirements(vit=True)
    optim = OptimDefaults("adamw", base_lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))

    def __init__(self, backbone, cfg: MAEConfig, info):
        super().__init__(backbone, cfg, info)
        from timm.models.vision_transformer import Block

        vit = backbone
        if getattr(vit, "dynamic_img_size", False):
            raise ConfigError("mae: ViT backbones with dynamic_img_size are not supported")
        self.patch = vit.patch_embed.patch_size[0]
        gh, gw = vit.patch_embed.grid_size
        self.grid = (gh, gw)
        self.num_prefix = vit.num_prefix_tokens
        enc_dim = vit.embed_dim
        if cfg.fixed_pos_embed and vit.pos_embed is not None:
            prefix_rows = 0 if vit.no_embed_class else self.num_prefix
            with torch.no_grad():
                vit.pos_embed.copy_(sincos_pos_embed_2d(enc_dim, gh, gw, prefix_rows)[None])
            vit.pos_embed.requires_grad_(False)

        # decoder
        self.decoder_embed = nn.Linear(enc_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_pos_embed_2d(cfg.decoder_dim, gh, gw, self.num_prefix)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList([
            Block(cfg.decoder_dim, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch * self.patch * info.channels)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for name, m in self.named_modules():
            if not name.startswith("decoder"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    # ------------------------------------------------------------------ encoder / decoder
    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        if isinstance(vit.norm, nn.Identity) and not isinstance(getattr(vit, "fc_norm", None), (nn.Identity, type(None))):
            return vit.fc_norm(x)
        return vit.norm(x)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator):
        """Encode the visible patches only. Returns (tokens (B, prefix + L_keep, D), mask, ids_restore)."""
        vit = self.backbone
        x = vit.patch_embed(imgs)                       # (B, L, D)
        if x.dim() == 4:                                # NHWC output formats
            x = x.flatten(1, 2)
        b, length, d = x.shape
        prefix = []
        if vit.cls_token is not None:
            prefix.append(vit.cls_token.expand(b, -1, -1))
        if getattr(vit, "reg_token", None) is not None:
            prefix.append(vit.reg_token.expand(b, -1, -1))
        if vit.pos_embed is not None:
            if vit.no_embed_class:
                x = x + vit.pos_embed
            else:
                x = x + vit.pos_embed[:, self.num_prefix:]
                if prefix:
                    prefix = [torch.cat(prefix, dim=1) + vit.pos_embed[:, : self.num_prefix]]
        ids_keep, mask, ids_restore = random_masking(b, length, mask_ratio, generator, imgs.device)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        x = vit.pos_drop(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return self._final_norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Tokens of the visible patches -> per-patch pixel predictions (B, L, p*p*C)."""
        x = self.decoder_embed(x)
        npf = self.num_prefix
        b, length = ids_restore.shape
        n_mask = length - (x.shape[1] - npf)
        patches = torch.cat([x[:, npf:], self.mask_token.to(x.dtype).expand(b, n_mask, -1)], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :npf], patches], dim=1) + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, npf:]

    def training_step(self, batch, step):
        imgs = batch.views.images[0]
        latent, mask, ids_restore = self.forward_encoder(imgs, self.cfg.mask_ratio, step.generator)
        pred = self.forward_decoder(latent, ids_restore)
        loss = mae_loss(pred, patchify(imgs, self.patch), mask, norm_pix=self.cfg.norm_pix_loss)
        return {"loss": loss}

    def param_groups(self) -> list[dict]:
        """No weight decay on biases, norms, position embeddings, [CLS] and mask tokens (paper)."""
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim <= 1 or n.endswith(("pos_embed", "cls_token", "reg_token", "mask_token"))
            (no_decay if skip else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]
