"""Unsupervised foreground masks: a saliency estimate per image, batched on the device, deterministic.

Background augmentations (Ryali, Schwab & Morcos, 2021, arXiv:2103.12719) and the
background-robustness protocol (``evals.background``) need a foreground mask per image. The paper
takes it from a saliency network (DeepUSPS); we have no weights, so the mask comes from a classical
estimate computed in closed form on the batch (no learnt parameters, no randomness):

* ``spectral_residual`` (Hou & Zhang, CVPR 2007): on the intensity ``I``, ``A = log |F(I)|``,
  ``P = arg F(I)``, the spectral residual ``R = A - h_3 * A`` (a 3x3 local mean of the
  log-amplitude, circular since the spectrum is periodic), the map
  ``S = g * |F^-1(exp(R + iP))|^2`` with ``g`` a Gaussian of sigma = 1/8 of the side (the paper's
  sigma = 8 at its 64-px working size). Images larger than 64 px are computed at 64 px (the
  paper's working size) and the map is resized back.
* ``frequency_tuned`` (Achanta, Hemami, Estrada & Suesstrunk, CVPR 2009):
  ``S(p) = || I_mu - (G * I)(p) ||_2`` in CIE Lab (``harness.data.colour.rgb_to_lab``; for a
  1-channel image the intensity alone), ``I_mu`` the image's mean colour and ``G`` a small Gaussian
  (5x5 binomial in the paper; sigma = 1 px here, a side/32 beyond 32 px).

``frequency_tuned`` is the default: it segments whole objects that differ from the image's mean
colour (a bright square on a flat, textured background: IoU > 0.9, ``tests/test_background.py``);
``spectral_residual`` marks what is *unexpected* in the spectrum (edges, small objects) and
under-segments large uniform objects (IoU ~0.3 on the same square): an option, not the default.

Each map is min-max normalised per image and thresholded into a binary mask: ``otsu`` (Otsu's
between-class variance over a 64-bin histogram, per image) or ``quantile`` (pixels above the
``quantile`` of the image's map are foreground). An image whose map is flat (no pixel above the
threshold) gets an all-foreground mask: nothing in it is replaced.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.core.schema import SALIENCY_METHODS
from harness.core.schema import SALIENCY_THRESHOLDS as THRESHOLDS
from harness.data.colour import rgb_to_lab

__all__ = ["SALIENCY_METHODS", "THRESHOLDS", "saliency_map", "foreground_mask", "composite", "derangement"]
WORK_SIDE = 64          # Hou & Zhang's working resolution
OTSU_BINS = 64


def _gauss1d(sigma: float, radius: int, device, dtype) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def gaussian_smooth(s: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of ``sigma`` pixels over (B, C, H, W), reflect padding (radius <= side - 1)."""
    if sigma <= 0:
        return s
    b, c, h, w = s.shape
    r = max(1, min(int(math.ceil(3 * sigma)), h - 1, w - 1))
    if h < 2 or w < 2:
        return s
    k = _gauss1d(sigma, r, s.device, s.dtype)
    y = s.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.view(b, c, h, w)


def _intensity(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def spectral_residual(x: torch.Tensor) -> torch.Tensor:
    """Hou & Zhang's saliency map of float images (B, C, H, W) in [0, 1] -> (B, 1, H, W), >= 0."""
    g = _intensity(x.float())
    spec = torch.fft.fft2(g)
    amp = torch.log(spec.abs().clamp_min(1e-8))
    phase = torch.angle(spec)
    local = F.avg_pool2d(F.pad(amp, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    resid = amp - local
    sal = torch.fft.ifft2(torch.exp(torch.complex(resid, torch.zeros_like(resid))) * torch.exp(1j * phase)).abs() ** 2
    return gaussian_smooth(sal, min(x.shape[-2:]) / 8.0)


def frequency_tuned(x: torch.Tensor) -> torch.Tensor:
    """Achanta et al.'s saliency map of float images (B, C, H, W) in [0, 1] -> (B, 1, H, W), >= 0."""
    x = x.float()
    feat = rgb_to_lab(x.clamp(0, 1)) if x.shape[1] == 3 else x * 100.0   # L-like scale for intensity
    blurred = gaussian_smooth(feat, max(1.0, min(x.shape[-2:]) / 32.0))
    mu = feat.mean(dim=(2, 3), keepdim=True)
    return (blurred - mu).pow(2).sum(1, keepdim=True).sqrt()


def saliency_map(x: torch.Tensor, method: str = "frequency_tuned") -> torch.Tensor:
    """Per-image min-max normalised saliency in [0, 1], (B, 1, H, W), of float images in [0, 1]
    (uint8 is scaled); computed at most at ``WORK_SIDE`` px and resized back."""
    if method not in SALIENCY_METHODS:
        raise ConfigError(f"unknown saliency estimator '{method}'; valid choices: {', '.join(SALIENCY_METHODS)}")
    xf = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    h, w = xf.shape[-2:]
    small = xf
    if max(h, w) > WORK_SIDE:
        f = WORK_SIDE / max(h, w)
        small = F.interpolate(xf, size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")
    s = (spectral_residual if method == "spectral_residual" else frequency_tuned)(small)
    if s.shape[-2:] != (h, w):
        s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
    lo = s.amin(dim=(2, 3), keepdim=True)
    hi = s.amax(dim=(2, 3), keepdim=True)
    return (s - lo) / (hi - lo).clamp_min(1e-12)


def otsu_threshold(s: torch.Tensor, bins: int = OTSU_BINS) -> torch.Tensor:
    """Otsu's threshold of each map in [0, 1] (B, ...) -> (B,): the bin edge maximising the
    between-class variance ``(mu_T w0 - mu0)^2 / (w0 (1 - w0))`` of a ``bins``-bin histogram."""
    b = s.shape[0]
    flat = s.reshape(b, -1).clamp(0, 1)
    idx = (flat * bins).long().clamp_(max=bins - 1)
    hist = torch.zeros(b, bins, device=s.device, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones_like(flat, dtype=torch.float64))
    p = hist / hist.sum(1, keepdim=True)
    centers = (torch.arange(bins, device=s.device, dtype=torch.float64) + 0.5) / bins
    w0 = p.cumsum(1)
    mu0 = (p * centers).cumsum(1)
    mu_t = mu0[:, -1:]
    between = (mu_t * w0 - mu0) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    between = torch.where((w0 > 0) & (w0 < 1), between, torch.full_like(between, -1.0))
    k = between.argmax(1)
    return ((k + 1).double() / bins).to(s.dtype)   # the upper edge of the last background bin


def foreground_mask(x: torch.Tensor, method: str = "frequency_tuned", threshold: str = "otsu",
                    quantile: float = 0.5) -> torch.Tensor:
    """A binary foreground mask (B, 1, H, W) bool of images (B, C, H, W) (uint8 or float in [0, 1]).

    ``threshold="otsu"``: per-image Otsu threshold of the normalised map; ``"quantile"``: pixels above
    the ``quantile`` of the image's map are foreground (``quantile=0.7`` keeps about 30%). A mask with
    no foreground pixel becomes all foreground (a flat image has no background to replace)."""
    if threshold not in THRESHOLDS:
        raise ConfigError(f"unknown saliency threshold '{threshold}'; valid choices: {', '.join(THRESHOLDS)}")
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"saliency quantile must be in (0, 1), got {quantile}")
    s = saliency_map(x, method)
    b = s.shape[0]
    if b == 0:
        return torch.zeros(s.shape, dtype=torch.bool, device=s.device)
    if threshold == "otsu":
        t = otsu_threshold(s)
    else:
        t = torch.quantile(s.reshape(b, -1).float(), quantile, dim=1).to(s.dtype)
    m = s > t.view(b, 1, 1, 1)
    empty = ~m.flatten(1).any(1)
    return m | empty.view(b, 1, 1, 1)


def composite(x: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` is 1 (the foreground, kept exactly), ``background`` where it is 0.
    ``mask`` (B, 1, H, W) broadcasts over channels; ``background`` broadcasts to ``x``."""
    return torch.where(mask, x, background.to(x.dtype).expand_as(x))


def derangement(n: int, gen: torch.Generator, device=None) -> torch.Tensor:
    """A random permutation with no fixed point (for n >= 2): one n-cycle through a random order,
    ``partner[order[i]] = order[i + 1]``; n = 1 maps to itself."""
    order = torch.randperm(n, generator=gen, device=device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner
