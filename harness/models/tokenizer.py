"""A discrete visual tokenizer: a small VQ-VAE (van den Oord, Vinyals & Kavukcuoglu, 2017) whose code
grid matches a ViT's patch grid, so every patch gets one token id (BEiT's targets; BEiT itself used
DALL-E's dVAE, which is a download and out of reach offline, so the tokenizer is trained here).

encoder: log2(p) stride-2 4x4 convolutions (ReLU) from C channels to ``width``, a 1x1 convolution to
``code_dim``: z_e, one vector per p x p patch. Quantisation: each z_e is replaced by its nearest
codebook vector (:func:`nearest_code`, squared Euclidean distance), with the straight-through
gradient. decoder: the mirror image (1x1, then log2(p) stride-2 transposed convolutions). Loss:

    L = ||x - D(z_q)||^2 + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2,   beta = 0.25
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core.errors import ConfigError


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Vectors (N, D), codebook (K, D) -> the index of each vector's nearest code (N,); ties to the lower index."""
    with torch.autocast(z.device.type, enabled=False):     # bf16 would round the distances into ties
        z, codebook = z.float(), codebook.float()
        d = (z ** 2).sum(1, keepdim=True) - 2 * z @ codebook.t() + (codebook ** 2).sum(1)[None]
        return d.argmin(1)


class VQTokenizer(nn.Module):
    def __init__(self, channels: int, patch: int, codes: int = 8192, code_dim: int = 32, width: int = 64,
                 beta: float = 0.25):
        super().__init__()
        if patch < 2 or patch & (patch - 1):
            raise ConfigError(f"the VQ tokenizer needs a power-of-two patch size (2, 4, 8, 16), got {patch}")
        n = int(math.log2(patch))
        enc: list[nn.Module] = []
        c = channels
        for _ in range(n):
            enc += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            c = width
        self.encoder = nn.Sequential(*enc, nn.Conv2d(width, code_dim, 1))
        dec: list[nn.Module] = [nn.Conv2d(code_dim, width, 1), nn.ReLU(inplace=True)]
        for i in range(n):
            last = i == n - 1
            dec += [nn.ConvTranspose2d(width, channels if last else width, 4, stride=2, padding=1)]
            if not last:
                dec += [nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*dec)
        self.codebook = nn.Embedding(codes, code_dim)
        nn.init.uniform_(self.codebook.weight, -1 / codes, 1 / codes)
        self.beta = beta

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, h, w) -> (ids (B, h*w), z_q (B, D, h, w))."""
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        ids = nearest_code(flat, self.codebook.weight)
        z_q = self.codebook(ids).view(b, h, w, d).permute(0, 3, 1, 2)
        return ids.view(b, h * w), z_q

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z_e = self.encoder(x).float()
        ids, z_q = self.quantize(z_e)
        codebook = F.mse_loss(z_q, z_e.detach())
        commit = F.mse_loss(z_e, z_q.detach())
        rec = self.decoder((z_e + (z_q - z_e).detach()).to(x.dtype))      # straight-through
        recon = F.mse_loss(rec.float(), x.float())
        used = torch.unique(ids).numel()
        return {"loss": recon + codebook + self.beta * commit, "recon": recon.detach(),
                "codes_used": torch.tensor(float(used))}

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The token id of every patch, (B, h*w) in row-major order."""
        return self.quantize(self.encoder(x).float())[0]
