"""Crop geometry for dense (pixel-level) methods: where each feature-map cell of a view lies in
its source image, given the view's crop box and flip (``harness.data.views.Views``)."""

from __future__ import annotations

import torch


def pixel_centres(boxes: torch.Tensor, flipped: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Source-image (x, y) in [0, 1] of the centres of an h x w feature map's cells.

    ``boxes`` (B, 4) are the views' crops (x0, y0, x1, y1) in [0, 1] source coordinates and
    ``flipped`` (B,) their horizontal flips (``harness.data.views.Views``). Cell (r, c) covers
    [c/w, (c+1)/w] x [r/h, (r+1)/h] of the view; a flipped view's column c shows source column
    x1 - (c + 0.5)/w * (x1 - x0). Returns (B, h*w, 2), cells in row-major order.
    """
    boxes = boxes.float()
    x0, y0, x1, y1 = boxes.unbind(1)
    fx = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) / w
    fy = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) / h
    fx = torch.where(flipped.view(-1, 1).to(boxes.device), 1 - fx[None], fx[None])    # (B, w)
    cx = x0[:, None] + fx * (x1 - x0)[:, None]                                         # (B, w)
    cy = y0[:, None] + fy[None] * (y1 - y0)[:, None]                                   # (B, h)
    b = boxes.shape[0]
    return torch.stack([cx[:, None, :].expand(b, h, w), cy[:, :, None].expand(b, h, w)], dim=-1).reshape(b, h * w, 2)


def cell_diagonal(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Length (in source coordinates) of the diagonal of one feature-map cell of each view (B,)."""
    boxes = boxes.float()
    return torch.sqrt(((boxes[:, 2] - boxes[:, 0]) / w) ** 2 + ((boxes[:, 3] - boxes[:, 1]) / h) ** 2)


def positive_mask(boxes1: torch.Tensor, flipped1: torch.Tensor, boxes2: torch.Tensor, flipped2: torch.Tensor,
                  h: int, w: int, threshold: float = 0.7) -> torch.Tensor:
    """(B, h*w, h*w) bool: cell i of view 1 and cell j of view 2 lie closer than ``threshold``
    cells in the source image, the distance divided by the larger of the two views' cell diagonals."""
    d = torch.cdist(pixel_centres(boxes1, flipped1, h, w), pixel_centres(boxes2, flipped2, h, w))
    norm = torch.maximum(cell_diagonal(boxes1, h, w), cell_diagonal(boxes2, h, w)).clamp_min(1e-12)
    return d / norm[:, None, None] < threshold
