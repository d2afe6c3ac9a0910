"""Multi-crop (SwAV, Caron et al., 2020; DINO, 2021): the local crops' side and making a backbone
accept every crop size (a ViT's position embeddings resampled to each input's patch grid)."""

from __future__ import annotations

import torch.nn as nn
from timm.layers import Format

from harness.core.errors import ConfigError
from harness.models.backbones import is_vit


def local_crop_size(image_size: int, requested: int = 0, multiple: int = 1) -> int:
    """Side of multi-crop's local crops: ``requested`` if > 0, else the papers' 96/224 of the
    image side (SwAV, DINO), rounded to a multiple of ``multiple`` (a ViT's patch size), at
    least 8 px."""
    if requested > 0:
        return requested
    m = max(1, multiple)
    return max(8, m, int(round(image_size * 96 / 224 / m)) * m)


def setup_multi_crop(method: str, backbone: nn.Module, image_size: int, n_local: int, local_size: int = 0) -> int:
    """Multi-crop set-up shared by SwAV, DINO and their kin: the local crops' side
    (:func:`local_crop_size`, a multiple of a ViT's patch), checked against the image, and the
    backbone made to accept both sides (:func:`enable_multi_crop`). Returns the local side."""
    patch = backbone.patch_embed.patch_size[0] if hasattr(backbone, "patch_embed") else 1
    side = local_crop_size(image_size, local_size, patch)
    if n_local and side > image_size:
        raise ConfigError(f"{method}: local crops of {side} px exceed the {image_size} px images; "
                          "lower method_cfg.local_size")
    enable_multi_crop(backbone, [image_size] + ([side] if n_local else []))
    return side


def enable_multi_crop(backbone: nn.Module, sizes: list[int]) -> None:
    """Make ``backbone`` accept every input side in ``sizes`` (multi-crop).

    Convnets with global pooling already do. A timm VisionTransformer is switched to dynamic
    image size: its position embeddings are resampled to each input's patch grid, as DINO's
    ``interpolate_pos_encoding`` (at the native size they are unchanged, so evaluation is
    unaffected). Sides must be multiples of the patch size; a clear error says otherwise.
    """
    if not is_vit(backbone):
        return
    pe = backbone.patch_embed
    patch = pe.patch_size[0]
    bad = sorted({s for s in sizes if s % patch})
    if bad:
        raise ConfigError(f"multi-crop on a ViT with {patch}x{patch} patches needs crop sizes divisible by {patch}, "
                          f"got {bad}; set method_cfg.local_size to a multiple of {patch}")
    if getattr(backbone, "dynamic_img_size", False):
        return
    backbone.dynamic_img_size = True
    pe.strict_img_size = False
    pe.flatten = False
    pe.output_fmt = Format("NHWC")
