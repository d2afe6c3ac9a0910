"""Budget arithmetic: how many optimisation steps a budget is (when it is known in advance)."""

from __future__ import annotations

import math

from harness.core.errors import ConfigError


def steps_per_epoch(n: int, batch: int, cap: int | None = None) -> int:
    s = max(1, n // batch)
    return min(s, cap) if cap else s


def total_steps(cfg, n_train: int) -> int | None:
    b = cfg.budget
    bs = cfg.optim.batch_size
    if b.kind == "steps":
        if not float(b.value).is_integer():
            raise ConfigError(f"bad value {b.value!r} for 'budget.value': a steps budget must be a whole number")
        return int(b.value)
    if b.kind == "epochs":
        return max(1, math.ceil(b.value * steps_per_epoch(n_train, bs, cfg.train.max_steps_per_epoch)))
    if b.kind == "samples":
        return max(1, math.ceil(b.value / bs))
    return None  # seconds; flops (known after the first step is measured)
