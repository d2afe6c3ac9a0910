"""Masks over a grid of patches, for masked image modelling: batched, seeded by the step's generator.

A mask is a (B, L) tensor over the L = gh * gw patches of each image in row-major order, 1 (True)
for a masked patch. The three shapes of the field:

* :func:`random_masking` -- MAE's per-sample uniform choice of a fixed number of patches (argsort of
  noise), with the index bookkeeping an encoder of visible patches needs;
* :func:`block_mask` -- BEiT's block-wise masking (Bao et al., 2021, Algorithm 1): rectangles of
  random area and aspect ratio added until the target count is reached;
* :func:`upsample_mask` -- a mask drawn on a coarse grid of "mask patches" (SimMIM: 32 px) repeated
  onto the finer grid of the model's patches (16 px), so one masked unit covers factor^2 patches.

Every draw comes from the ``generator`` passed in (the trainer seeds one per step), so a resumed run
masks the same patches as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch

from harness.core.errors import ConfigError


def random_masking(batch: int, length: int, mask_ratio: float, generator: torch.Generator,
                   device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (the MAE recipe).

    Returns ``ids_keep`` (B, L_keep): indices of the kept patches; ``mask`` (B, L): 1 for a
    removed patch, 0 for a kept one, in the original order; ``ids_restore`` (B, L): the
    permutation that puts [kept, removed] tokens back in the original order.
    """
    keep = int(length * (1 - mask_ratio))
    if keep < 1:
        raise ConfigError(f"mask_ratio={mask_ratio} keeps no patch out of {length}")
    noise = torch.rand(batch, length, generator=generator, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, length, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def random_mask(batch: int, length: int, mask_ratio: float, generator: torch.Generator, device=None) -> torch.Tensor:
    """A (B, L) bool mask with exactly ceil(L * mask_ratio) masked patches per sample, uniformly chosen
    (SimMIM's random masking)."""
    n = math.ceil(length * mask_ratio)
    if not 0 < n < length:
        raise ConfigError(f"mask_ratio={mask_ratio} masks {n} of {length} patches; choose a ratio that masks "
                          f"at least one patch and keeps at least one")
    noise = torch.rand(batch, length, generator=generator, device=device)
    ranks = noise.argsort(1).argsort(1)
    return ranks < n


def block_mask(batch: int, grid_h: int, grid_w: int, num_masked: int | torch.Tensor, generator: torch.Generator,
               min_block: int = 16, max_block: int | None = None, min_aspect: float = 0.3, attempts: int = 10,
               device=None) -> torch.Tensor:
    """BEiT's block-wise masking, batched: a (B, gh * gw) bool mask with at most ``num_masked`` patches
    (an int, or a (B,) tensor of per-image targets, where 0 is allowed).

    Repeatedly, for every image at once: draw a block area s ~ U(min_block, min(remaining, max_block))
    and a log-uniform aspect ratio r in [min_aspect, 1/min_aspect]; h = round(sqrt(s r)),
    w = round(sqrt(s / r)); a uniform position; the block is added when it fits the grid
    (h < gh, w < gw) and adds between 1 and ``remaining`` new patches. BEiT stops an image after 10
    failed attempts in a row; here every image gets ``attempts`` draws per masked block it could still
    need (ceil(num_masked / min_block) of them), a fixed count, so the batch runs as tensor operations
    and the result depends only on the generator. Images can end slightly under the target, as in BEiT.
    """
    target = torch.as_tensor(num_masked, device=device).long().expand(batch)   # per image (iBOT draws a ratio each)
    top_n = int(target.max())
    if int(target.min()) < 0 or top_n >= grid_h * grid_w or (top_n == 0 and not isinstance(num_masked, torch.Tensor)):
        raise ConfigError(f"block masking of {num_masked} patches on a {grid_h}x{grid_w} grid: choose between 1 and "
                          f"{grid_h * grid_w - 1}")
    if top_n == 0:
        return torch.zeros(batch, grid_h * grid_w, dtype=torch.bool, device=device)
    max_block = max_block or top_n
    lo_block = target.clamp(max=min_block).float()              # min(min_block, target), as BEiT's U(min, max)
    mask = torch.zeros(batch, grid_h, grid_w, dtype=torch.bool, device=device)
    rows = torch.arange(grid_h, device=device).view(1, grid_h, 1)
    cols = torch.arange(grid_w, device=device).view(1, 1, grid_w)
    lo_r, hi_r = math.log(min_aspect), math.log(1 / min_aspect)
    for _ in range(attempts * math.ceil(top_n / max(1, min(min_block, top_n)))):
        remaining = target - mask.sum((1, 2))
        cap = remaining.clamp(max=max_block).float()
        u = torch.rand(batch, 4, generator=generator, device=device)
        area = lo_block + u[:, 0] * (cap - lo_block)         # U(min_block, cap), either order as random.uniform
        ratio = torch.exp(lo_r + u[:, 1] * (hi_r - lo_r))
        h = torch.round(torch.sqrt(area * ratio)).long()
        w = torch.round(torch.sqrt(area / ratio)).long()
        fits = (h < grid_h) & (w < grid_w) & (h > 0) & (w > 0)
        top = (u[:, 2] * (grid_h - h + 1).clamp(min=1)).long()
        left = (u[:, 3] * (grid_w - w + 1).clamp(min=1)).long()
        blk = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
               & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))
        new = (blk & ~mask).sum((1, 2))
        accept = fits & (new > 0) & (new <= cap.long())
        mask |= blk & accept.view(-1, 1, 1)
    return mask.flatten(1)


def upsample_mask(mask: torch.Tensor, grid_h: int, grid_w: int, factor: int) -> torch.Tensor:
    """(B, gh * gw) mask on a coarse grid -> (B, gh*factor * gw*factor) on the grid ``factor`` times finer."""
    m = mask.view(-1, grid_h, grid_w)
    m = m.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    return m.flatten(1)
