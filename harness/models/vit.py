"""Pieces of a timm ``VisionTransformer`` that masked-image-modelling methods take apart: the token
sequence before the blocks (with mask tokens in place of masked patches), the blocks with their
intermediate outputs, the final norm the evaluator's pooling uses, and fixed 2-D sin-cos position
embeddings. One place, so MAE, SimMIM, DeepMIM, LocalMIM and the pooled-token evaluator agree on
what "the encoder's tokens" are."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from harness.core.errors import ConfigError


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


def final_norm(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ViT's last LayerNorm applied to tokens. Built with average pooling, timm puts it after the
    pooling (``fc_norm``) and leaves ``norm`` an identity; the norm applied here is the one the
    evaluator's pooled features go through, so a method that trains it trains what is scored."""
    if isinstance(vit.norm, nn.Identity) and not isinstance(getattr(vit, "fc_norm", None), (nn.Identity, type(None))):
        return vit.fc_norm(x)
    return vit.norm(x)


def output_tokens(vit: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """The ViT's output tokens (B, prefix + L, D) after its final norm, whichever of ``norm`` /
    ``fc_norm`` timm built it with (``forward_features`` applies ``norm`` only)."""
    t = vit.forward_features(imgs)
    return final_norm(vit, t) if isinstance(vit.norm, nn.Identity) else t


def input_tokens(vit: nn.Module, imgs: torch.Tensor, mask: torch.Tensor | None = None,
                 mask_token: torch.Tensor | None = None) -> torch.Tensor:
    """The sequence the blocks see: patch embeddings, masked ones replaced by ``mask_token`` (1, 1, D)
    where ``mask`` (B, L) is 1 (SimMIM / BEiT: before the position embedding is added), then the
    prefix tokens and position embeddings as timm adds them, dropout and ``norm_pre``."""
    x = vit.patch_embed(imgs)                           # (B, L, D), or (B, h, w, D) for multi-crop ViTs
    if mask is not None:
        w = mask.to(x.dtype).reshape(*x.shape[:-1], 1)
        x = x * (1 - w) + mask_token.to(x.dtype) * w
    if x.dim() == 4 and not getattr(vit, "dynamic_img_size", False):
        x = x.flatten(1, 2)
    x = vit._pos_embed(x)                               # resamples positions to the grid when dynamic
    x = vit.patch_drop(x)
    return vit.norm_pre(x)


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Stochastic depth (Huang et al., 2016) on a residual branch (B, ...): each sample's branch is
    dropped with probability ``p`` and the kept ones scaled by 1 / (1 - p) (torch's global RNG,
    which the trainer seeds per step)."""
    if p <= 0:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


def _block(blk: nn.Module, x: torch.Tensor, p: float) -> torch.Tensor:
    # timm's Block.forward with stochastic depth on both residual branches
    x = x + drop_path(blk.ls1(blk.attn(blk.norm1(x))), p)
    return x + drop_path(blk.ls2(blk.mlp(blk.norm2(x))), p)


def run_blocks(vit: nn.Module, x: torch.Tensor, taps: Sequence[int] = (),
               drop_path_rate: float = 0.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the blocks; returns the last block's output and the outputs of the blocks numbered in
    ``taps`` (1-based: tap 3 is the output of the third block), in the order given. With
    ``drop_path_rate`` > 0, stochastic depth rising linearly to that rate over the blocks (as timm
    builds it), applied here so the backbone itself (what the evaluator scores and fine-tunes) is
    left unchanged."""
    want = {t: i for i, t in enumerate(taps)}
    depth = len(vit.blocks)
    if any(not 1 <= t <= depth for t in taps):
        raise ConfigError(f"encoder layers {list(taps)} out of range for a ViT of {depth} blocks (1..{depth})")
    out: list[torch.Tensor | None] = [None] * len(taps)
    for i, blk in enumerate(vit.blocks, start=1):
        p = drop_path_rate * (i - 1) / max(1, depth - 1)
        x = _block(blk, x, p) if p > 0 else blk(x)
        if i in want:
            out[want[i]] = x
    return x, out  # type: ignore[return-value]


def token_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens (B, L, D) -> a feature map (B, D, gh, gw)."""
    b, _, d = tokens.shape
    return tokens.transpose(1, 2).reshape(b, d, grid[0], grid[1])
