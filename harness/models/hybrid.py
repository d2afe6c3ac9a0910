"""ConvMAE's hybrid convolution-transformer backbone (Gao, Ma, Li, Yan, Li, Qiao & Dai, 2022):
two stages of convolution blocks at high resolution, then a stage of Transformer blocks.

Stage i starts with a patch embedding (a k x k, stride-k convolution, LayerNorm, GELU). Stages 1
and 2 are convolution blocks, x + conv1x1(DW5x5(v * conv1x1(LN(x)))) then x + MLP(LN(x)) (1x1
convolutions), where ``v`` is the visible mask of a masked-image-modelling method upsampled to the
stage's resolution (1 everywhere otherwise): multiplying it in before the only spatial operation, the
5x5 depthwise convolution, keeps masked positions from leaking into visible ones. Stage 3 embeds to
tokens (plus a linear layer and fixed sin-cos positions) and runs ViT blocks on the visible tokens
only. Multi-scale fusion: stage-1 and stage-2 maps, brought to the stage-3 grid by strided
convolutions, are added to the stage-3 tokens after the blocks, before the final LayerNorm.

``forward`` (every position, no mask) returns the mean of the final tokens (``num_features`` = the
stage-3 width), so any method and the evaluator can use it as a backbone; ``tokens(x, mask, ids_keep)``
is the masked path ConvMAE trains.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from harness.core.errors import ConfigError


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        if visible is not None:
            h = h * visible.to(h.dtype)
        x = x + self.conv2(self.attn(h))
        return x + self.mlp(self.norm2(x))


def _embed(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=k), LayerNorm2d(cout, eps=1e-6), nn.GELU())


class ConvViT(nn.Module):
    is_hybrid_vit = True     # fine-tuned like a ViT (AdamW), not like a convnet

    def __init__(self, in_chans: int, img_size: int, widths=(64, 96, 128), depths=(1, 1, 4), strides=(2, 2, 1),
                 heads: int = 4):
        super().__init__()
        from timm.models.vision_transformer import Block

        from harness.models.vit import sincos_pos_embed_2d

        total = strides[0] * strides[1] * strides[2]
        if img_size % total:
            raise ConfigError(f"the hybrid backbone's stride {total} does not divide {img_size}-px images")
        w1, w2, w3 = widths
        self.strides = tuple(strides)
        self.patch_size = total
        g = img_size // total
        self.grid = (g, g)
        self.embed1, self.embed2, self.embed3 = _embed(in_chans, w1, strides[0]), _embed(w1, w2, strides[1]), \
            _embed(w2, w3, strides[2])
        self.stage1 = nn.ModuleList([ConvBlock(w1) for _ in range(depths[0])])
        self.stage2 = nn.ModuleList([ConvBlock(w2) for _ in range(depths[1])])
        self.proj3 = nn.Linear(w3, w3)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(w3, g, g)[None], persistent=False)
        self.blocks = nn.ModuleList([Block(w3, heads, mlp_ratio=4.0, qkv_bias=True,
                                           norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depths[2])])
        self.fuse1 = nn.Conv2d(w1, w3, strides[1] * strides[2], stride=strides[1] * strides[2])
        self.fuse2 = nn.Conv2d(w2, w3, strides[2], stride=strides[2])
        self.norm = nn.LayerNorm(w3, eps=1e-6)
        self.num_features = self.embed_dim = w3

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None,
               ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Final tokens (B, L or L_keep, D). ``mask`` (B, L) on the stage-3 grid, 1 = masked; ``ids_keep``
        the visible tokens' indices (MAE's random masking), run through the Transformer stage alone."""
        b = x.shape[0]
        g = self.grid[0]
        vis = None if mask is None else (1 - mask.float()).view(b, 1, g, g)
        s23 = self.strides[1] * self.strides[2]
        f1 = self.embed1(x)
        v1 = None if vis is None else vis.repeat_interleave(s23, 2).repeat_interleave(s23, 3)
        for blk in self.stage1:
            f1 = blk(f1, v1)
        f2 = self.embed2(f1)
        v2 = None if vis is None else vis.repeat_interleave(self.strides[2], 2).repeat_interleave(self.strides[2], 3)
        for blk in self.stage2:
            f2 = blk(f2, v2)
        t = self.proj3(self.embed3(f2).flatten(2).transpose(1, 2)) + self.pos_embed.to(x.dtype)
        skip = (self.fuse1(f1) + self.fuse2(f2)).flatten(2).transpose(1, 2)
        if ids_keep is not None:
            idx = ids_keep.unsqueeze(-1).expand(-1, -1, t.shape[-1])
            t, skip = torch.gather(t, 1, idx), torch.gather(skip, 1, idx)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t + skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x).mean(1)
