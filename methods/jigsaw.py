"""Jigsaw puzzles (Noroozi & Favaro, 2016), "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles".

A view is cut into a 3 x 3 grid of tiles with gaps and per-tile jitter (``harness.grid_tiles``;
the paper: 64-px tiles from the 75-px cells of a 225-px crop, a gap of ~15% of the cell). The nine
tiles are reordered by one permutation drawn from a fixed set P of N permutations, chosen from all
9! for maximal Hamming distance (``harness.hamming_permutations``: generated deterministically from
``permutation_seed`` and saved with the checkpoint as the buffer ``perms``). Every tile goes through
the same encoder (the "context-free network": shared weights, no information flows between tiles
before the head), a per-tile fc layer, then the nine outputs are concatenated in the shuffled order
and classified into the N permutation indices:

    y ~ U{0..N-1},  tiles'_j = tiles_{P_y[j]},   L = CE( g([h(f(tiles'_1)), ..., h(f(tiles'_9))]), y )

Shortcut counter-measures from the paper: each tile is normalised to zero mean and unit variance
on its own (no brightness cue across tiles), and the tiles are small crops at random offsets inside
their cells (the gap). Paper defaults: N = 1000, SGD LR 0.01 x batch/256, per-tile fc 512, fc7 4096.
``view_size`` (0 = the image size) enlarges the view before it is cut, for small images.

``encoder()`` is the shared tile encoder (the backbone), applied by the evaluator to whole images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    Method,
    OptimDefaults,
    ViewRecipe,
    at_least,
    between,
    check_input_size,
    gap_layout,
    grid_tiles,
    hamming_permutations,
    mlp,
    permute_tiles,
    register_method,
)


@dataclass
class JigsawConfig:
    num_permutations: int = between(1000, 2, 362880)
    permutation_seed: int = 0                    # the permutation set is a pure function of (N, seed)
    gap_fraction: float = between(0.15, 0, 1)
    view_size: int = at_least(0, 0)
    tile_dim: int = at_least(512, 1)             # per-tile fc (the paper's fc6)
    head_hidden: int = at_least(4096, 1)         # fc7
    tile_normalize: bool = True
    crop_min_scale: float = between(0.5, 0, 1, open_lo=True)


def shuffle(tiles: torch.Tensor, perms: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one permutation index per image and reorder its tiles: (B, 9, ...) -> (shuffled, labels)."""
    y = torch.randint(0, perms.shape[0], (tiles.shape[0],), generator=gen, device=tiles.device)
    return permute_tiles(tiles, perms[y]), y


@register_method("jigsaw", family="pretext", paper="Noroozi & Favaro, 2016 (Jigsaw puzzles)",
                 venue="ECCV 2016, arXiv:1603.09246")
class Jigsaw(Method):
    Config = JigsawConfig
    optim = OptimDefaults("sgd", base_lr=0.01, weight_decay=5e-4)

    def __init__(self, backbone, cfg: JigsawConfig, info):
        super().__init__(backbone, cfg, info)
        self.size = cfg.view_size or info.image_size
        self.gap, tile = gap_layout(self.size, 3, cfg.gap_fraction, "jigsaw")
        check_input_size(backbone, info.channels, tile, "jigsaw: tiles")
        self.register_buffer("perms", hamming_permutations(cfg.num_permutations, 9, cfg.permutation_seed))
        d = backbone.num_features
        self.tile_fc = nn.Sequential(nn.Linear(d, cfg.tile_dim), nn.ReLU(inplace=True))
        self.head = mlp(9 * cfg.tile_dim, cfg.head_hidden, cfg.num_permutations, layers=2)

    def view_recipe(self, info):
        return ViewRecipe.light(self.size, scale=(self.cfg.crop_min_scale, 1.0))

    def training_step(self, batch, step):
        x = batch.views.images[0]
        b = x.shape[0]
        tiles = grid_tiles(x, 3, self.gap, step.generator)                  # (B, 9, C, t, t)
        if self.cfg.tile_normalize:
            mu = tiles.mean(dim=(2, 3, 4), keepdim=True)
            sd = tiles.std(dim=(2, 3, 4), keepdim=True).clamp(min=1e-3)
            tiles = (tiles - mu) / sd
        tiles, y = shuffle(tiles, self.perms, step.generator)
        f = self.tile_fc(self.backbone(tiles.flatten(0, 1))).view(b, -1)    # concatenated in shuffled order
        logits = self.head(f)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss, "perm_acc": acc}
