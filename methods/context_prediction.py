"""Context Prediction (Doersch, Gupta & Efros, 2015), "Unsupervised Visual Representation Learning
by Context Prediction".

An image is divided into a 3 x 3 grid of patches with gaps between them and a random jitter of
each patch inside its cell (``harness.grid_tiles``), so that the task cannot be solved from
continuing edges or textures. The network sees the centre patch and one of its eight neighbours,
each through the *same* encoder (shared weights, a late-fusion "pair" architecture), concatenates
the two feature vectors and classifies the neighbour's position:

    y in {0..7}: the neighbour's index in the row-major order of the 8 cells around the centre
                 (0 = top-left, 1 = top, 2 = top-right, 3 = left, 4 = right, 5 = bottom-left, ...)
    L = CE( g([f(centre), f(neighbour)]), y )

The chromatic-aberration counter-measure (Section 3): lenses shift colour channels by position in
the frame, which lets a network locate a patch in the image and so solve the task without
understanding objects. Patches are "colour dropped": two of the three channels are replaced by
faint Gaussian noise (``harness.drop_channels``), independently per patch. On 1-channel data it is
skipped (the view notes say so).

Paper: one random (centre, neighbour) pair per image (``pairs_per_image=1``); ``pairs_per_image=8``
uses every neighbour of each image in the same step (the encoder runs once over the nine patches,
so the extra pairs cost only the small head; RotNet's "all transformations in one batch" argument).
The gap is a fraction of the cell: the paper's 96-px patches with a 48-px gap (plus up to 7 px
jitter) give a gap of 1/3 of a 144-px cell. ``view_size`` (0 = the image size) enlarges the
augmented view before it is cut, so that small images still give tiles a convnet can read.
Paper defaults: SGD (the paper used batch-normalised SGD), LR 0.01 x batch/256.

``encoder()`` is the shared patch encoder (the backbone), applied by the evaluator to whole images:
the pair head is discarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness import (
    Method,
    OptimDefaults,
    ViewRecipe,
    at_least,
    between,
    check_input_size,
    drop_channels,
    gap_layout,
    grid_tiles,
    mlp,
    register_method,
)

CENTRE = 4                                   # index of the centre cell in the row-major 3 x 3 grid
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)        # the eight cells around it, in label order 0..7


@dataclass
class ContextPredictionConfig:
    gap_fraction: float = between(1 / 3, 0, 1)   # gap between patches, as a fraction of the cell side
    view_size: int = at_least(0, 0)              # side of the view the grid is cut from (0 = image size)
    pairs_per_image: int = between(1, 1, 8)      # 1 (paper) .. 8 (every neighbour)
    color_drop: bool = True                      # the chromatic-aberration counter-measure
    head_hidden: int = at_least(1024, 1)         # fusion MLP: [f(c), f(n)] -> hidden -> 8
    crop_min_scale: float = between(0.5, 0, 1, open_lo=True)


def sample_pairs(feats: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the nine patch features of each image (B, 9, D), ``k`` distinct neighbours per image drawn
    uniformly: returns (centre features, neighbour features), each (B*k, D), and the labels (B*k,)."""
    b, _, d = feats.shape
    order = torch.rand(b, 8, generator=gen, device=feats.device).argsort(dim=1)[:, :k]
    cells = torch.tensor(NEIGHBOURS, device=feats.device)[order]            # (B, k) cell indices
    neigh = torch.gather(feats, 1, cells.unsqueeze(-1).expand(b, k, d))
    centre = feats[:, CENTRE:CENTRE + 1].expand_as(neigh)
    return centre.reshape(b * k, d), neigh.reshape(b * k, d), neighbour_labels(cells).flatten()


def neighbour_labels(pairs: torch.Tensor) -> torch.Tensor:
    """Labels 0..7 for neighbour cell indices (row-major 3 x 3, centre 4 excluded)."""
    lut = torch.full((9,), -1, dtype=torch.long, device=pairs.device)
    lut[list(NEIGHBOURS)] = torch.arange(8, device=pairs.device)
    return lut[pairs]


@register_method("context_prediction", family="pretext", paper="Doersch, Gupta & Efros, 2015 (Context Prediction)",
                 venue="ICCV 2015, arXiv:1505.05192")
class ContextPrediction(Method):
    Config = ContextPredictionConfig
    optim = OptimDefaults("sgd", base_lr=0.01, weight_decay=5e-4)

    def __init__(self, backbone, cfg: ContextPredictionConfig, info):
        super().__init__(backbone, cfg, info)
        self.size = cfg.view_size or info.image_size
        self.gap, tile = gap_layout(self.size, 3, cfg.gap_fraction, "context_prediction")
        check_input_size(backbone, info.channels, tile, "context_prediction: patches")
        d = backbone.num_features
        self.head = mlp(2 * d, cfg.head_hidden, 8, layers=2)

    def view_recipe(self, info):
        return ViewRecipe.light(self.size, scale=(self.cfg.crop_min_scale, 1.0))

    def training_step(self, batch, step):
        x = batch.views.images[0]
        b = x.shape[0]
        tiles = grid_tiles(x, 3, self.gap, step.generator)                  # (B, 9, C, t, t)
        if self.cfg.color_drop and tiles.shape[2] == 3:
            tiles = drop_channels(tiles.flatten(0, 1), step.generator).view_as(tiles)
        feats = self.backbone(tiles.flatten(0, 1)).view(b, 9, -1)           # one pass over all patches
        centre, neigh, y = sample_pairs(feats, self.cfg.pairs_per_image, step.generator)
        logits = self.head(torch.cat([centre, neigh], dim=1))
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss, "pos_acc": acc}
