"""Method pipelines shared by several papers, so a method file holds only what its paper adds.

* :class:`TwoViewMethod`: SimCLR's pipeline (Chen et al., 2020). Two augmented views of each
  image pass through the shared encoder f and a projection MLP g, z = g(f(x)); the views'
  projections, gathered from every process with gradient, go to the method's
  :meth:`~TwoViewMethod.objective`. SimCLR (NT-Xent), SimCLR v2 and the contrastive objectives
  (NCE, alignment/uniformity, DCL, HCL, FlatNCE) are objectives of this one pipeline.
* :class:`MultiCrop`: multi-crop (SwAV, Caron et al., 2020; DINO, 2021): two global crops and
  ``n_local`` smaller local crops per image; crops of one size share one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn as nn

from harness.core.config import at_least, between, positive
from harness.core.distributed import gather_with_grad
from harness.data.views import ViewRecipe
from harness.method.contract import Batch, Method, OptimDefaults, StepInfo
from harness.models.heads import mlp
from harness.models.multicrop import setup_multi_crop


@dataclass
class TwoViewConfig:
    proj_hidden: int = positive(2048)
    proj_dim: int = positive(128)
    blur: bool = True
    jitter_strength: float = positive(1.0, allow_zero=True)
    crop_min_scale: float = between(0.08, 0, 1, open_lo=True)   # random-resized-crop scale range (crop_min_scale, 1)


class TwoViewMethod(Method):
    """SimCLR's pipeline with a pluggable objective: subclasses implement :meth:`objective`."""

    Config: ClassVar[type] = TwoViewConfig
    optim = OptimDefaults("lars", base_lr=0.3, weight_decay=1e-6)   # SimCLR's
    progressive_views = True      # both views go straight into the backbone (views.resolution may shrink them)

    def __init__(self, backbone, cfg, info):
        super().__init__(backbone, cfg, info)
        self.projector_head = self.make_projector(backbone.num_features)

    def make_projector(self, in_dim: int) -> nn.Module:
        """g: Linear-BN-ReLU-Linear (SimCLR v1)."""
        return mlp(in_dim, self.cfg.proj_hidden, self.cfg.proj_dim, layers=2)

    def view_recipe(self, info):
        return ViewRecipe.simclr(info.image_size, blur=self.cfg.blur, strength=self.cfg.jitter_strength,
                                 min_scale=self.cfg.crop_min_scale)

    def training_step(self, batch: Batch, step: StepInfo):
        x1, x2 = batch.views.images[:2]
        z1 = self.projector_head(self.backbone(x1))
        z2 = self.projector_head(self.backbone(x2))
        return self.objective(gather_with_grad(z1), gather_with_grad(z2), step)

    def objective(self, z1: torch.Tensor, z2: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        """The loss on the two views' (gathered) projections (N, D): ``{"loss": ..., extras}``."""
        raise NotImplementedError

    def projector(self):
        return nn.Sequential(self.backbone, self.projector_head)


@dataclass
class MultiCropConfig:
    """Multi-crop settings; each method's subclass gives its paper's defaults."""

    n_local: int = at_least(6, 0)
    local_size: int = at_least(0, 0)                # 0: 96/224 of the image side
    global_scale: tuple[float, float] = between((0.14, 1.0), 0, 1)
    local_scale: tuple[float, float] = between((0.05, 0.14), 0, 1)
    blur: bool = True


class MultiCrop:
    """Two global crops at full size and ``n_local`` local crops (a multiple of a ViT's patch; the
    backbone is made to accept both sizes), in that order in ``batch.views.images``."""

    def __init__(self, method: str, backbone: nn.Module, image_size: int, cfg: MultiCropConfig):
        self.cfg = cfg
        self.image_size = image_size
        self.local_size = setup_multi_crop(method, backbone, image_size, cfg.n_local, cfg.local_size)

    def recipe(self) -> ViewRecipe:
        c = self.cfg
        return ViewRecipe.multi_crop(self.image_size, self.local_size, c.n_local, tuple(c.global_scale),
                                     tuple(c.local_scale), blur=c.blur)

    @staticmethod
    def forward(fn: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor]) -> list[torch.Tensor]:
        """``fn`` on every crop, the global crops in one pass and the local crops in another."""
        glob, loc = views[:2], views[2:]
        out = list(fn(torch.cat(glob)).chunk(2))
        if loc:
            out += list(fn(torch.cat(loc)).chunk(len(loc)))
        return out
