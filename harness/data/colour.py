"""Colour operations for pretext and multi-view methods: batched on the training device.

* :func:`rgb_to_lab` / :func:`lab_to_rgb`: sRGB (D65) <-> CIE L*a*b*, images in [0, 1].
* :func:`ab_gamut_bins`: the quantised ab plane (grid 10) restricted to the sRGB gamut, computed
  here (Zhang, Isola & Efros, 2016, quantise ab in 10-unit bins and keep the in-gamut ones).
* :func:`soft_encode`: a distribution over bins from ab values (k nearest bins, Gaussian weights).
* :func:`rebalancing_weights`: class-rebalancing weights from an empirical bin prior.
* :func:`drop_channels`: keep one colour channel per image and replace the others with faint noise
  (Doersch et al., 2015: the counter-measure to chromatic aberration).
"""

from __future__ import annotations

import functools

import torch

# sRGB primaries, D65 white (IEC 61966-2-1)
_RGB2XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_DELTA = 6.0 / 29.0


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c > 0.04045, ((c.clamp(min=0) + 0.055) / 1.055) ** 2.4, c / 12.92)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c > 0.0031308, 1.055 * c.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * c)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (..., 3, H, W) -> Lab (..., 3, H, W): L in [0, 100], a and b roughly in [-110, 110]."""
    m = (_RGB2XYZ / _WHITE.view(3, 1)).to(x.device, x.dtype)
    lin = _srgb_to_linear(x)
    xyz = torch.einsum("ij,...jhw->...ihw", m, lin)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp(min=1e-12) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Lab (..., 3, H, W) -> sRGB (..., 3, H, W), clipped to [0, 1] unless ``clip=False``."""
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29))
    minv = torch.linalg.inv(_RGB2XYZ / _WHITE.view(3, 1)).to(lab.device, lab.dtype)
    rgb = _linear_to_srgb(torch.einsum("ij,...jhw->...ihw", minv, xyz))
    return rgb.clamp(0, 1) if clip else rgb


@functools.lru_cache(maxsize=4)
def ab_gamut_bins(grid: float = 10.0) -> torch.Tensor:
    """The in-gamut ab bins, (Q, 2) float32 bin centres (multiples of ``grid``), sorted by (a, b).

    A bin is the square cell of side ``grid`` around its centre; it is in gamut when some sRGB colour
    (any lightness) has its ab in the cell. The ab projection of the sRGB solid is the projection
    of its surface, so the six faces of the RGB cube, sampled at 8-bit resolution (6 x 256^2
    colours), decide it. With ``grid=10`` this gives Q = 261 bins (our computation; the authors
    released a 313-bin table computed by a procedure the paper does not state, whose extra bins
    reach beyond the sRGB gamut, e.g. a = -90 at b = 50)."""
    v = torch.linspace(0, 1, 256, dtype=torch.float64)
    u, w = torch.meshgrid(v, v, indexing="ij")
    u, w = u.reshape(-1), w.reshape(-1)
    faces = []
    for axis in range(3):
        for val in (0.0, 1.0):
            cols = [u, w]
            cols.insert(axis, torch.full_like(u, val))
            faces.append(torch.stack(cols, 0))
    rgb = torch.cat(faces, 1).view(3, -1, 1)                  # (3, N, 1): an "image" of N x 1 pixels
    lab = rgb_to_lab(rgb).view(3, -1)
    q = torch.round(lab[1:] / grid).long()                    # nearest bin centre
    cells = torch.unique(q.t(), dim=0)                        # sorted lexicographically by (a, b)
    return (cells.to(torch.float32) * grid).contiguous()


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Soft-encoded targets: ab values (N, 2) -> (N, Q) distributions over ``bins`` (Q, 2) with mass
    on the ``k`` nearest bins, weighted by a Gaussian kernel exp(-d^2 / (2 sigma^2)) of the distance
    and normalised to sum to 1 (Zhang et al., 2016, Section 2.1: k = 5, sigma = 5)."""
    d2 = torch.cdist(ab.float(), bins.float()).pow(2)         # (N, Q)
    dk, ik = d2.topk(k, dim=1, largest=False)
    wk = torch.softmax(-dk / (2 * sigma ** 2), dim=1)         # = exp(-d^2/2s^2) / sum, stable
    out = torch.zeros_like(d2)
    return out.scatter_(1, ik, wk)


def smoothed_prior(counts: torch.Tensor, bins: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """The empirical bin distribution p (from ``counts``, (Q,)) smoothed with a Gaussian kernel of
    ``sigma`` over the bin centres and renormalised: p~ (Q,)."""
    p = counts.double() / counts.double().sum().clamp(min=1)
    d2 = torch.cdist(bins.double(), bins.double()).pow(2)
    kern = torch.exp(-d2 / (2 * sigma ** 2))
    ps = kern @ p
    return (ps / ps.sum()).float()


def rebalancing_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Class-rebalancing weights (Zhang et al., 2016, eq. 4): w ∝ ((1 - lambda) p~ + lambda / Q)^-1,
    normalised so that the expectation under p~ is 1: sum_q p~_q w_q = 1."""
    q = prior.numel()
    w = 1.0 / ((1 - lam) * prior.double() + lam / q)
    w = w / (prior.double() * w).sum()
    return w.float()


def drop_channels(x: torch.Tensor, gen: torch.Generator, noise: float = 0.01) -> torch.Tensor:
    """Keep one colour channel per image, chosen uniformly, and replace the other two with Gaussian
    noise of standard deviation ``noise`` times the kept channel's (per-image) standard deviation
    (Doersch et al., 2015, Section 3: "color dropping"). (B, 3, H, W) -> (B, 3, H, W)."""
    b, c = x.shape[:2]
    keep = torch.randint(0, c, (b,), generator=gen, device=x.device)
    mask = torch.nn.functional.one_hot(keep, c).to(x.dtype).view(b, c, 1, 1)
    kept = (x * mask).sum(1, keepdim=True)
    std = kept.flatten(1).std(1).view(b, 1, 1, 1)
    z = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * std * noise
    return mask * x + (1 - mask) * z
