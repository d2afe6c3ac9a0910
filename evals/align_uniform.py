"""Alignment and uniformity of L2-normalised features (Wang & Isola 2020, "Understanding
Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere").

* ``align(alpha) = E_{(x, x+)} ||f(x) - f(x+)||_2^alpha`` over positive pairs (alpha = 2): lower is
  better (positives map close together).
* ``uniform(t) = log E_{x, y} exp(-t ||f(x) - f(y)||_2^2)`` over distinct pairs (t = 2): lower is
  better (features spread over the sphere); its minimum for N points is reached by uniform spread.

:func:`align_loss` and :func:`uniform_loss` are pure, differentiable functions of normalised
features (reusable as a training loss); :func:`align_uniform_eval` scores an encoder on images,
making positive pairs with a fixed, seeded evaluation augmentation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.views import ViewSpec, augment

EXACT_MAX = 4096  # up to this many points, uniform_loss uses torch.pdist (all pairs at once)


def align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """``mean_i ||x_i - y_i||^alpha`` for normalised features x, y (N, D) of positive pairs."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniform_loss(x: torch.Tensor, t: float = 2.0, chunk_size: int | None = None, num_pairs: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` over the distinct pairs of normalised features x (N, D).

    * exact, all pairs: ``torch.pdist`` for N <= ``EXACT_MAX`` (O(N^2) memory), else row blocks of
      ``chunk_size`` combined by log-sum-exp (O(chunk_size * N) memory); pass ``chunk_size`` to force it.
    * sampled: ``num_pairs`` seeded random pairs (i != j), an unbiased estimate of the mean.
    """
    n = len(x)
    if n < 2:
        raise ValueError("uniform_loss needs at least two points")
    if num_pairs is not None:
        i = torch.randint(0, n, (num_pairs,), generator=generator, device=x.device)
        j = (i + torch.randint(1, n, (num_pairs,), generator=generator, device=x.device)) % n  # j != i
        d2 = (x[i] - x[j]).pow(2).sum(1)
        return torch.logsumexp(-t * d2, 0) - math.log(num_pairs)
    if chunk_size is None and n <= EXACT_MAX:
        return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()
    chunk = chunk_size or max(1, (1 << 24) // n)
    sq = x.pow(2).sum(1)
    parts = []
    for s in range(0, n - 1, chunk):
        rows = torch.arange(s, min(s + chunk, n), device=x.device)
        d2 = (sq[rows, None] + sq[None, :] - 2 * x[rows] @ x.T).clamp_min(0)
        upper = torch.arange(n, device=x.device)[None, :] > rows[:, None]  # j > i: each pair once
        parts.append(torch.logsumexp((-t * d2)[upper], 0))
    return torch.logsumexp(torch.stack(parts), 0) - math.log(n * (n - 1) / 2)


def eval_view_spec(size: int) -> ViewSpec:
    """The fixed evaluation augmentation: crop scale (0.2, 1), flip, light colour jitter, no grey/blur."""
    return ViewSpec(size, scale=(0.2, 1.0), flip=0.5, jitter=(0.2, 0.2, 0.1, 0.02), jitter_p=0.5, gray_p=0.0)


def align_uniform_eval(encoder: nn.Module, x_uint8: torch.Tensor, mean, std, num_images: int = 4096,
                       features: torch.Tensor | None = None, seed: int = 0, batch_size: int = 512,
                       device: str | torch.device = "cpu", precision: str = "auto", progress: bool = True,
                       alpha: float = 2.0, t: float = 2.0) -> dict[str, float]:
    """``align`` over two seeded augmented views of ``num_images`` (seeded sample of) images and
    ``uniform`` over all distinct pairs of their un-augmented features (``features``: precomputed
    eval-transform features of ``x_uint8``, e.g. from the cache; extracted if None).
    """
    from evals.features import extract_features

    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    sel = torch.randperm(len(x_uint8), generator=g)[:num_images].sort().values
    xs = x_uint8[sel]
    spec = eval_view_spec(x_uint8.shape[-1])
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def view(xb: torch.Tensor) -> torch.Tensor:
        return (augment(xb.float() / 255.0, spec, gen)[0] - m) / s

    kw = dict(batch_size=batch_size, device=device, precision=precision, progress=progress)
    f1 = F.normalize(extract_features(encoder, xs, mean, std, transform=view, desc="align views 1", **kw), dim=1)
    f2 = F.normalize(extract_features(encoder, xs, mean, std, transform=view, desc="align views 2", **kw), dim=1)
    f0 = features[sel] if features is not None else extract_features(encoder, xs, mean, std, **kw)
    f0 = F.normalize(f0.float(), dim=1)
    return {"align": align_loss(f1, f2, alpha).item(), "uniform": uniform_loss(f0, t).item()}
