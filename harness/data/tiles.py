"""Tile, grid and patch operations for pretext tasks: batched tensor operations on the training
device, seeded by the step's generator (no per-image Python loops).

* :func:`grid_tiles`: the g x g grid of cells of an image, one tile per cell, smaller than its cell
  by a gap, placed at a random offset inside it (jitter) so tile borders do not line up (Context
  Prediction, Jigsaw).
* :func:`split_tiles` / :func:`assemble`: cut an image into m x m equal tiles and put tiles back
  together (Counting, Jigsaw Clustering's montages).
* :func:`hamming_permutations`: a permutation set of maximal Hamming distance (Jigsaw).
* :func:`window_energy_argmax`: the position of the p x p window of largest gradient energy
  (Exemplar-CNN's seed patches).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError


def grid_geometry(size: int, grid: int, gap: int) -> tuple[int, int]:
    """(cell, tile) side lengths of a ``grid`` x ``grid`` layout of an image of side ``size`` whose
    tiles are ``gap`` pixels smaller than their cells; refuses layouts with no room for a tile."""
    cell = size // grid
    tile = cell - gap
    if grid < 1 or gap < 0 or tile < 1:
        raise ConfigError(f"a {grid}x{grid} grid with a {gap}-px gap does not fit a {size}-px image "
                          f"(cells of {cell} px); lower the gap or use larger images")
    return cell, tile


def gap_layout(size: int, grid: int, gap_fraction: float, what: str, min_tile: int = 4) -> tuple[int, int]:
    """(gap, tile) in px for a ``grid`` x ``grid`` layout of a ``size``-px view whose gap is
    ``gap_fraction`` of a cell; refuses, in one line, tiles smaller than ``min_tile`` px."""
    gap = int(round(gap_fraction * (size // grid)))
    _, tile = grid_geometry(size, grid, gap)
    if tile < min_tile:
        raise ConfigError(f"{what}: {size}-px views give {tile}-px tiles; "
                          "set method_cfg.view_size (e.g. 48) or lower method_cfg.gap_fraction")
    return gap, tile


def grid_tiles(x: torch.Tensor, grid: int, gap: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """The ``grid`` x ``grid`` tiles of a batch (B, C, H, W), in row-major cell order: (B, g*g, C, t, t).

    Cells have side ``cell = min(H, W) // grid`` (the layout is centred); each tile has side
    ``t = cell - gap`` and sits at an offset drawn uniformly from {0, ..., gap} in each axis,
    independently per image and cell, when ``gen`` is given (else centred in its cell). Adjacent tiles
    are therefore separated by a random gap of 0 to 2 * gap pixels, so low-level cues (continuing
    lines, textures) do not betray their arrangement (Doersch et al., 2015; Noroozi & Favaro, 2016).
    """
    b, _, h, w = x.shape
    cell, t = grid_geometry(min(h, w), grid, gap)
    dev = x.device
    y_org, x_org = (h - grid * cell) // 2, (w - grid * cell) // 2
    base = torch.arange(grid, device=dev) * cell
    oy = (base.view(grid, 1).expand(grid, grid).reshape(-1) + y_org).view(1, -1)   # (1, K)
    ox = (base.view(1, grid).expand(grid, grid).reshape(-1) + x_org).view(1, -1)
    k = grid * grid
    if gen is not None and gap > 0:
        jy = torch.randint(0, gap + 1, (b, k), generator=gen, device=dev)
        jx = torch.randint(0, gap + 1, (b, k), generator=gen, device=dev)
    else:
        jy = jx = torch.full((b, k), gap // 2, device=dev, dtype=torch.long)
    r = torch.arange(t, device=dev)
    ys = (oy + jy).unsqueeze(-1) + r                        # (B, K, t)
    xs = (ox + jx).unsqueeze(-1) + r
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    out = x[bi, :, ys.unsqueeze(-1), xs.unsqueeze(-2)]      # (B, K, t, t, C): advanced indices first
    return out.permute(0, 1, 4, 2, 3).contiguous()


def split_tiles(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, m*m, C, H/m, W/m): the m x m equal tiles, row-major."""
    b, c, h, w = x.shape
    if h % m or w % m:
        raise ConfigError(f"a {h}x{w} image does not split into {m}x{m} equal tiles; use an image size divisible by {m}")
    return x.view(b, c, m, h // m, m, w // m).permute(0, 2, 4, 1, 3, 5).reshape(b, m * m, c, h // m, w // m)


def assemble(tiles: torch.Tensor) -> torch.Tensor:
    """(B, m*m, C, t, t) -> (B, C, m*t, m*t): tiles placed row-major (the inverse of :func:`split_tiles`)."""
    b, k, c, th, tw = tiles.shape
    m = int(round(k ** 0.5))
    if m * m != k:
        raise ValueError(f"assemble needs a square number of tiles, got {k}")
    return tiles.view(b, m, m, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, m * th, m * tw)


def permute_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = tiles[i, perms[i, j]]`` for tiles (B, K, ...) and permutations (B, K)."""
    idx = perms.view(*perms.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return torch.gather(tiles, 1, idx)


def hamming_permutations(n: int, k: int = 9, seed: int = 0) -> torch.Tensor:
    """``n`` permutations of ``k`` elements, (n, k) int64, chosen for maximal Hamming distance.

    Noroozi & Favaro (2016), Algorithm 1, selects greedily from all k! permutations the one
    farthest from those already chosen. Here "farthest" is the largest *minimum* Hamming distance to
    the chosen set (so the set's minimum pairwise distance is as large as greedy selection can make
    it), ties broken by the largest *total* distance (the paper's criterion: maximal average
    distance), then uniformly at random with ``seed``. The first permutation is drawn at random.
    Deterministic in (n, k, seed); the set is saved with a checkpoint.
    """

    if k < 2 or n < 1 or n > math.factorial(k):
        raise ConfigError(f"cannot choose {n} distinct permutations of {k} tiles (at most {math.factorial(k)})")
    allp = torch.tensor(list(itertools.permutations(range(k))), dtype=torch.int8)   # (k!, k), lexicographic
    g = torch.Generator().manual_seed(seed)
    total = allp.shape[0]
    first = int(torch.randint(0, total, (1,), generator=g))
    chosen = [first]
    mind = (allp != allp[first]).sum(1).to(torch.int32)       # distance to the chosen set (min)
    sumd = mind.clone()                                        # total distance to the chosen set
    for _ in range(n - 1):
        # score: min distance first, total distance second, a random tie-break last
        noise = torch.rand(total, generator=g)
        score = mind.to(torch.float64) * 1e6 + sumd.to(torch.float64) + noise.to(torch.float64)
        score[chosen] = -1.0
        j = int(score.argmax())
        chosen.append(j)
        d = (allp != allp[j]).sum(1).to(torch.int32)
        mind = torch.minimum(mind, d)
        sumd += d
    return allp[chosen].long()


def min_hamming_distance(perms: torch.Tensor) -> int:
    """The smallest Hamming distance between two rows of a permutation set (n, k)."""
    d = (perms.unsqueeze(0) != perms.unsqueeze(1)).sum(-1)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


def gradient_energy(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared gradient magnitude of a batch (B, C, H, W), summed over channels: (B, H, W)
    (central differences, replicate padding)."""
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = (xp[..., 1:-1, 2:] - xp[..., 1:-1, :-2]) / 2
    gy = (xp[..., 2:, 1:-1] - xp[..., :-2, 1:-1]) / 2
    return (gx ** 2 + gy ** 2).sum(1)


def window_energy_argmax(energy: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (y, x), each (B,), of the p x p window with the largest summed ``energy`` (B, H, W)."""
    b, h, w = energy.shape
    if p > h or p > w:
        raise ConfigError(f"a {p}-px window does not fit a {h}x{w} image")
    s = F.avg_pool2d(energy.unsqueeze(1), p, stride=1).squeeze(1)   # (B, H-p+1, W-p+1)
    flat = s.flatten(1).argmax(1)
    return flat // s.shape[-1], flat % s.shape[-1]


def crop_at(x: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, p: int) -> torch.Tensor:
    """The p x p crops of (B, C, H, W) whose top-left corners are (y0, x0), each (B,): (B, C, p, p)."""
    b = x.shape[0]
    r = torch.arange(p, device=x.device)
    ys = (y0.view(b, 1) + r).view(b, p, 1)
    xs = (x0.view(b, 1) + r).view(b, 1, p)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    return x[bi, :, ys, xs].permute(0, 3, 1, 2).contiguous()


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), non-overlapping p x p patches in row-major order, pixels as (p, p, C)."""
    b, c, h, w = imgs.shape
    if h % p or w % p:
        raise ConfigError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, L, p*p*C) -> (B, C, H, W)."""
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, h, w)


def hog_cells(x: torch.Tensor, cell: int, bins: int = 9) -> torch.Tensor:
    """Histograms of oriented gradients per ``cell`` x ``cell`` cell, per channel: (B, C, H, W) ->
    (B, C * bins, H / cell, W / cell) (LocalMIM's HOG target, after MaskFeat).

    Sobel gradients (reflect padding) of each channel; each pixel votes its gradient magnitude into
    one of ``bins`` unsigned-orientation bins (hard assignment: floor(atan2(gy, gx) / pi * bins) mod
    bins); votes are averaged over the cell and each cell's histogram is L2-normalised."""
    b, c, h, w = x.shape
    if h % cell or w % cell:
        raise ConfigError(f"HOG cells of {cell} px do not tile a {h}x{w} image")
    with torch.autocast(x.device.type, enabled=False):      # a target: computed in float32 under any precision
        return _hog(x.float(), cell, bins)


def _hog(x: torch.Tensor, cell: int, bins: int) -> torch.Tensor:
    b, c, h, w = x.shape
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    k = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)          # (2C, 1, 3, 3): gx, gy per channel
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=c).view(b, c, 2, h, w)
    gx, gy = g[:, :, 0], g[:, :, 1]
    mag = torch.sqrt(gx ** 2 + gy ** 2)
    phase = torch.atan2(gy, gx) / math.pi * bins                            # in [-bins, bins]
    idx = torch.floor(phase).long() % bins
    votes = torch.zeros(b, c, bins, h, w, device=x.device, dtype=x.dtype).scatter_(2, idx.unsqueeze(2), mag.unsqueeze(2))
    hist = F.avg_pool2d(votes.view(b, c * bins, h, w), cell)
    hist = F.normalize(hist.view(b, c, bins, h // cell, w // cell), dim=2)
    return hist.view(b, c * bins, h // cell, w // cell)
