"""Schedules as functions of training progress p in [0, 1], so every budget kind completes them."""

from __future__ import annotations

import math


def cosine(progress: float, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1)."""
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))


def warmup_cosine(progress: float, warmup: float, base: float, final: float = 0.0) -> float:
    """Linear warm-up over the first ``warmup`` fraction of progress, then cosine to ``final``."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return base * p / warmup
    q = (p - warmup) / (1 - warmup) if warmup < 1 else 1.0
    return cosine(q, base, final)


def momentum_schedule(progress: float, base: float, final: float = 1.0) -> float:
    """BYOL: tau = 1 - (1 - tau_base) * (cos(pi * p) + 1) / 2, i.e. cosine from base to 1."""
    return cosine(progress, base, final)
