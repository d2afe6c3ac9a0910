"""Background robustness: the linear probe on TEST images whose backgrounds were swapped between images.

The test-side measurement of Ryali, Schwab & Morcos (2021, arXiv:2103.12719), after the "Mixed-Rand"
split of ImageNet-9 (Xiao et al., 2020, "Noise or Signal: The Role of Image Backgrounds in Object
Recognition"): every TEST image keeps its foreground and takes another test image's pixels as its
background, and the drop of a classifier's accuracy from the original to the swapped images measures
how much the representation relies on backgrounds.

* Masks: one foreground mask per TEST image (``harness.data.saliency.foreground_mask`` with
  ``eval.bg_saliency`` / ``eval.bg_threshold`` / ``eval.bg_quantile``), computed once, batched on the
  device; deterministic.
* Swap: image ``i`` becomes ``composite(x_i, mask_i, x_partner(i))`` (its own pixels where its mask is
  1, the partner's where it is 0), ``partner`` a derangement (one n-cycle: no image keeps its own
  background, each background is used once) drawn from ``eval.bg_seed`` alone: the same swapped test
  set for every method, run and seed. About 1/C of the partners share the image's class (C classes).
  Where the partner's own foreground falls in image i's background, it shows (ImageNet-9 tiles a
  background over its foreground instead; we have no such inpainting).
* Probe: the linear protocol's (``evals.linear.linear_probe``: BN + linear, selected on a TRAIN
  hold-out, refit on clean TRAIN features), reused when that protocol ran in the same evaluation, else
  fitted the same way (the same probe: it is deterministic). It never sees a swapped image.

Metrics: ``bg/linear_top1`` (original test images; equals ``linear/top1``), ``bg/linear_top1_swapped``,
``bg/drop`` = the difference in points (lower is more robust), ``bg/foreground`` (the mean percent of
pixels the masks keep).
"""

from __future__ import annotations

from typing import Any

import torch

from evals.features import extract_features
from evals.linear import linear_probe, topk_accuracy
from harness.data.saliency import composite, derangement, foreground_mask
from harness.data.store import iter_batches


def mask_images(x, saliency: str, threshold: str, quantile: float, batch_size: int = 512,
               device: str | torch.device = "cpu") -> torch.Tensor:
    """Foreground masks (N, 1, H, W) bool (on the CPU) of an image store, computed batch by batch on ``device``."""
    out = []
    batches = iter_batches(x, (slice(i, i + batch_size) for i in range(0, len(x), batch_size)))
    try:
        for _, xb in batches:
            out.append(foreground_mask(xb.to(device), saliency, threshold, quantile).cpu())
    finally:
        batches.close()
    if not out:
        return torch.zeros((0, 1, *x.shape[2:]), dtype=torch.bool)
    return torch.cat(out)


def swap_partners(n: int, seed: int) -> torch.Tensor:
    """The fixed partner of every test image: a derangement drawn from ``seed`` alone (CPU generator)."""
    return derangement(n, torch.Generator().manual_seed(seed))


class SwappedImages:
    """An image store (``len``, ``shape``, ``x[key]`` -> uint8) of ``x`` with swapped backgrounds:
    image i is ``x[i]`` where ``masks[i]`` is 1, ``x[partners[i]]`` where it is 0. Read batch by batch
    (a streamed folder is decoded per batch, never all at once)."""

    def __init__(self, x, masks: torch.Tensor, partners: torch.Tensor):
        self.x, self.masks, self.partners = x, masks, partners
        self.shape = torch.Size(x.shape)
        self.dtype = torch.uint8

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key) -> torch.Tensor:
        idx = torch.arange(len(self))[key].reshape(-1)
        return composite(self.x[idx], self.masks[idx], self.x[self.partners[idx]])


def probe_top1(probe: dict[str, Any], features: torch.Tensor, labels) -> float:
    """Top-1 (percent) of the fitted probe (``std``, ``w``, ``b`` of :func:`evals.linear.linear_probe`)."""
    logits = torch.addmm(probe["b"], probe["std"](features), probe["w"])
    return topk_accuracy(logits, torch.as_tensor(labels).long(), ks=(1,))[0]


def background_eval(encoder, dataset, train_features: torch.Tensor, test_features: torch.Tensor, cfg,
                    probe: dict[str, Any] | None = None, seed: int = 0, device: str | torch.device = "cpu",
                    precision: str = "auto", progress: bool = True) -> dict[str, float]:
    """The protocol (module docstring): ``cfg`` is the evaluation config (``evals.config.EvalConfig``);
    ``probe`` the linear protocol's fitted probe (fitted here, identically, when None or empty)."""
    ds = dataset
    if not probe:
        probe = {}
        linear_probe(train_features, ds.y_train, test_features, ds.y_test, ds.num_classes, cfg.linear_epochs,
                     cfg.holdout_fraction, seed=seed, fitted=probe)
    masks = mask_images(ds.x_test, cfg.bg_saliency, cfg.bg_threshold, cfg.bg_quantile, cfg.batch_size, device)
    swapped = SwappedImages(ds.x_test, masks, swap_partners(len(ds.x_test), cfg.bg_seed))
    feats = extract_features(encoder, swapped, ds.mean, ds.std, cfg.batch_size, device, precision, progress,
                             desc="swapped-background test features")
    clean = probe_top1(probe, test_features, ds.y_test)
    swap = probe_top1(probe, feats, ds.y_test)
    return {"bg/linear_top1": clean, "bg/linear_top1_swapped": swap, "bg/drop": clean - swap,
            "bg/foreground": 100.0 * masks.float().mean().item() if masks.numel() else 0.0}
