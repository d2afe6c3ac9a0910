"""The evaluation section of a run's config (``eval.*``); its protocol names come from the table."""

from __future__ import annotations

from dataclasses import dataclass, field

from evals.linear import LINEAR_EPOCHS
from evals.protocols import DEFAULT_PROTOCOLS, PROTOCOLS
from harness.core.config import between, choices, list_of_choices, positive
from harness.core.schema import SALIENCY_METHODS, SALIENCY_THRESHOLDS


@dataclass
class EvalConfig:
    protocols: list[str] = list_of_choices(*PROTOCOLS, default=DEFAULT_PROTOCOLS)
    knn_k: list[int] = field(default_factory=lambda: [10, 20, 100, 200], metadata={"min": 1})
    knn_temperature: float = positive(0.07)
    knn_backend: str = choices("auto", "torch", "faiss", default="auto")  # auto: FAISS on GPU, exact torch GEMM on CPU
    knn_index: str = choices("flat", "ivf", "hnsw", default="flat")       # ivf/hnsw: approximate, for >= 1M features
    knn_shard_rows: int = positive(1 << 18)  # exact kNN: database rows per shard (= evals.knn.SHARD_ROWS; same result)
    label_fractions: list[float] = field(default_factory=list,            # extra linear probes on e.g. [0.01, 0.1] of train
                                         metadata={"min": 0, "max": 1, "strict": True})
    batch_size: int = positive(512)
    linear_epochs: int = positive(LINEAR_EPOCHS)   # evals.linear.LINEAR_EPOCHS (30 before 2026-12-07)
    features: str = choices("backbone", "projector", "cls", "mean_patch", default="backbone")  # evals.features.scored_encoder
    holdout_fraction: float = between(0.1, 0, 1, open_lo=True, open_hi=True)
    au_pairs: int = positive(4096)
    # fine-tuning budget per fit (LR grid + refit): cpu = 100 steps of 128, full = 300 of 256; auto = cpu for
    # pretraining budgets of the CPU class (<= 600 s, 3000 steps, 10 epochs or 1e15 FLOPs), else full
    finetune: str = choices("auto", "cpu", "full", default="auto")
    finetune_steps: int | None = positive(None)        # explicit steps per fit (overrides eval.finetune)
    finetune_batch_size: int | None = positive(None)   # explicit batch size (overrides eval.finetune)
    semisup_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1],  # SimCLR v2 protocol's label fractions
                                           metadata={"min": 0, "max": 1, "strict": True})
    distill_temperature: float = positive(1.0)
    # background robustness (evals.background): TEST masks from this saliency estimate, backgrounds swapped
    # by a derangement of this seed (fixed: the same swapped test set for every run and seed)
    bg_saliency: str = choices(*SALIENCY_METHODS, default="frequency_tuned")
    bg_threshold: str = choices(*SALIENCY_THRESHOLDS, default="otsu")
    bg_quantile: float = between(0.5, 0, 1, open_lo=True, open_hi=True)    # with bg_threshold=quantile
    bg_seed: int = 0
    # translation (evals.translation): the domain classifier's training steps, and the sample grid's width
    translation_steps: int = positive(600)
    translation_grid: int = positive(8, allow_zero=True)


from evals.budgets import CPU_CLASS, FINETUNE_BUDGETS, finetune_budget  # noqa: E402,F401,I001  (re-exported)
