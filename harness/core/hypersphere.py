"""Alignment and uniformity of L2-normalised features (Wang & Isola, 2020, "Understanding
Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere").

* ``align(alpha) = E_{(x, x+)} ||f(x) - f(x+)||_2^alpha`` over positive pairs (alpha = 2): lower is
  better (positives map close together).
* ``uniform(t) = log E_{x, y} exp(-t ||f(x) - f(y)||_2^2)`` over distinct pairs (t = 2): lower is
  better (features spread over the sphere).

Pure, differentiable functions of normalised features, in one place: the evaluator
(``evals.align_uniform``) scores every encoder with them and the ``align_uniform`` method
trains with them.
"""

from __future__ import annotations

import math

import torch

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
