"""The fine-tuning protocols' step budget, by the class of the pretraining budget (no evals imports:
``evals.protocols`` and ``evals.config`` both use it)."""

from __future__ import annotations

FINETUNE_BUDGETS = {"cpu": (100, 128), "full": (300, 256)}
CPU_CLASS = {"seconds": 600.0, "steps": 3000.0, "epochs": 10.0, "flops": 1e15}   # largest pretraining budgets of the class


def finetune_budget(cfg, budget_kind: str | None = None, budget_value: float | None = None) -> tuple[int, int]:
    """(steps per fit, batch size) of the fine-tuning protocols: explicit ``finetune_steps`` /
    ``finetune_batch_size`` win, else ``finetune`` (auto: the pretraining budget's class; without a
    budget, the full protocol)."""
    name = cfg.finetune
    if name == "auto":
        small = budget_kind in CPU_CLASS and budget_value is not None and float(budget_value) <= CPU_CLASS[budget_kind]
        name = "cpu" if small else "full"
    steps, bs = FINETUNE_BUDGETS[name]
    return cfg.finetune_steps or steps, cfg.finetune_batch_size or bs
