"""One entry point for the pinned evaluation suite (the protocol table: ``evals.protocols``).

``evaluate(encoder, dataset, cfg)`` extracts TRAIN and TEST features once (cached on disk when
``cache_dir`` is given), runs the protocols named in ``cfg.protocols`` in the table's order and
returns one flat dict: metrics under stable names (``knn/top1@20``, ``linear/top1``, ``align``,
...) plus every knob under ``eval/...`` so the tracking layer can log them as parameters.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import nn

from evals.config import EvalConfig
from evals.features import FeatureCache, cached_features
from evals.protocols import PROTOCOLS, Context
from harness.core.config import validate
from harness.core.device import resolve_precision
from harness.core.errors import ConfigError
from harness.data.dataset import ImageDataset


def check_fits(cfg: EvalConfig, dataset: ImageDataset) -> None:
    """Refuse knobs the dataset cannot satisfy (before any training or extraction)."""
    validate(cfg, prefix="eval.")
    if "state_probe" in cfg.protocols and not dataset.state_train:
        raise ConfigError(f"eval.protocols has state_probe but dataset '{dataset.name}' has no state variables "
                          "(data.name=atari has them: an Atari game's RAM); remove state_probe")
    if dataset.state_train and dataset.num_classes < 2:
        classy = [p for p in cfg.protocols if p not in ("state_probe", "align_uniform")]
        if classy:
            raise ConfigError(f"dataset '{dataset.name}' has no classes for {', '.join(classy)}; score its state "
                              "variables with eval.protocols=[state_probe] (align_uniform also works)")
    if "knn" in cfg.protocols and max(cfg.knn_k) > len(dataset.x_train):
        raise ConfigError(f"eval.knn_k={cfg.knn_k} asks for more neighbours than the {len(dataset.x_train)} training "
                          f"images; use k <= {len(dataset.x_train)}")


def evaluate(encoder: nn.Module, dataset: ImageDataset, cfg: EvalConfig | None = None, device: str | torch.device = "cpu",
             cache_dir: str | None = None, seed: int = 0, progress: bool = True, precision: str = "auto",
             label_fractions: Sequence[float] = (), zero_shot=None, translator=None,
             artifact_dir=None) -> dict[str, float | str]:
    """Run ``cfg.protocols`` (names of :data:`evals.protocols.PROTOCOLS`) on ``encoder``.

    Linear probes are selected on a hold-out of TRAIN only; alignment/uniformity use TEST images
    (label-free). ``label_fractions`` (e.g. ``(0.01, 0.1)``) adds ``linear@1%/top1``-style probes
    trained on stratified, seeded subsets of TRAIN. Timings go under ``eval/time/<protocol>``.
    ``cfg.features`` only names the cache entry: pass the module to score (e.g. backbone +
    projector for ``features="projector"``). ``cfg.au_pairs`` test images give the positive
    pairs for ``align`` and all their distinct pairs for ``uniform``. ``zero_shot`` is the method's
    ``zero_shot_classifier`` hook (the ``zero_shot`` protocol; None: nothing to report); ``translator``
    its ``translator`` hook (the ``translation`` protocol). Files a protocol writes (the translation grid)
    go to ``artifact_dir`` (none when None).
    """
    cfg = cfg or EvalConfig()
    validate(cfg, prefix="eval.")
    label_fractions = tuple(label_fractions) or tuple(cfg.label_fractions)
    check_fits(cfg, dataset)
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    cache = FeatureCache(cache_dir) if cache_dir else None
    out: dict[str, float | str] = {
        "eval/protocols": ",".join(cfg.protocols), "eval/features": cfg.features, "eval/precision": prec,
        "eval/seed": seed, "eval/batch_size": cfg.batch_size,
    }
    feats: dict[str, torch.Tensor] = {}

    def features(split: str) -> torch.Tensor:
        if split not in feats:
            t0 = time.perf_counter()
            feats[split] = cached_features(encoder, dataset, split, cache, kind=cfg.features, batch_size=cfg.batch_size,
                                           device=device, precision=prec, progress=progress)
            out[f"eval/time/features_{split}"] = time.perf_counter() - t0
        return feats[split]

    def timed(name: str, fn, splits: tuple[str, ...] = ("train", "test")) -> None:
        for split in splits:           # extraction is timed on its own (eval/time/features_*), not in the protocol's time
            features(split)
        t0 = time.perf_counter()
        out.update(fn())
        out[f"eval/time/{name}"] = time.perf_counter() - t0

    ctx = Context(encoder, dataset, cfg, device, prec, seed, progress, label_fractions, features, timed,
                  zero_shot=zero_shot, translator=translator, artifact_dir=artifact_dir)
    for name, protocol in PROTOCOLS.items():
        if name in cfg.protocols:
            out.update(protocol.run(ctx))
    return out


def report(metrics: dict[str, float | str]) -> str:
    """A plain two-column table of the metrics (knobs and timings omitted)."""
    rows = [(k, v) for k, v in metrics.items() if not k.startswith("eval/")]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v:8.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows)
