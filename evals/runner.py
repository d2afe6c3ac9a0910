"""One entry point for the pinned evaluation suite (see the protocol table in DESIGN.md).

``evaluate(encoder, dataset, cfg)`` extracts TRAIN and TEST features once (cached on disk when
``cache_dir`` is given), runs the protocols named in ``cfg.protocols`` and returns one flat dict:
metrics under stable names (``knn/top1@20``, ``linear/top1``, ``align``, ...) plus every knob
under ``eval/...`` so the tracking module can log them as parameters.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import nn

from evals.align_uniform import align_uniform_eval
from evals.features import FeatureCache, cached_features
from evals.knn import knn_eval, resolve_backend
from evals.linear import LBFGS_WD_GRID, LR_GRID, WD_GRID, lbfgs_probe, linear_probe
from harness.config import PROTOCOLS, EvalConfig
from harness.data import ImageDataset
from harness.errors import ConfigError
from harness.trainer import resolve_precision

EXTRA_PROTOCOLS = ("linear_lbfgs",)


def evaluate(encoder: nn.Module, dataset: ImageDataset, cfg: EvalConfig | None = None, device: str | torch.device = "cpu",
             cache_dir: str | None = None, seed: int = 0, progress: bool = True, precision: str = "auto",
             label_fractions: Sequence[float] = ()) -> dict[str, float | str]:
    """Run ``cfg.protocols`` ("knn", "linear", "align_uniform"; also "linear_lbfgs") on ``encoder``.

    Linear probes are selected on a hold-out of TRAIN only; alignment/uniformity use TEST images
    (label-free). ``label_fractions`` (e.g. ``(0.01, 0.1)``) adds ``linear@1%/top1``-style probes
    trained on stratified, seeded subsets of TRAIN. Timings go under ``eval/time/<protocol>``.
    ``cfg.features`` only names the cache entry: pass the module to score (e.g. backbone +
    projector for ``features="projector"``). ``cfg.au_pairs`` test images give the positive
    pairs for ``align`` and all their distinct pairs for ``uniform``.
    """
    cfg = cfg or EvalConfig()
    label_fractions = tuple(label_fractions) or tuple(cfg.label_fractions)
    unknown = [p for p in cfg.protocols if p not in PROTOCOLS + EXTRA_PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown eval protocol(s) {unknown}; valid choices: {', '.join(PROTOCOLS + EXTRA_PROTOCOLS)}")
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    cache = FeatureCache(cache_dir) if cache_dir else None
    out: dict[str, float | str] = {
        "eval/protocols": ",".join(cfg.protocols), "eval/features": cfg.features, "eval/precision": prec,
        "eval/seed": seed, "eval/batch_size": cfg.batch_size,
    }
    feats = {}

    def features(split: str) -> torch.Tensor:
        if split not in feats:
            t0 = time.perf_counter()
            feats[split] = cached_features(encoder, dataset, split, cache, kind=cfg.features, batch_size=cfg.batch_size,
                                           device=device, precision=prec, progress=progress)
            out[f"eval/time/features_{split}"] = time.perf_counter() - t0
        return feats[split]

    def timed(name: str, fn, splits: tuple[str, ...] = ("train", "test")):
        for split in splits:           # extraction is timed on its own (eval/time/features_*), not in the protocol's time
            features(split)
        t0 = time.perf_counter()
        out.update(fn())
        out[f"eval/time/{name}"] = time.perf_counter() - t0

    c = dataset.num_classes
    if "knn" in cfg.protocols:
        out.update({"eval/knn_k": ",".join(map(str, cfg.knn_k)), "eval/knn_temperature": cfg.knn_temperature,
                    "eval/knn_metric": "cosine", "eval/knn_index": cfg.knn_index,
                    "eval/knn_backend": resolve_backend(cfg.knn_backend, cfg.knn_index, device)})
        timed("knn", lambda: knn_eval(features("train"), dataset.y_train, features("test"), dataset.y_test,
                                      cfg.knn_k, cfg.knn_temperature, c, backend=cfg.knn_backend, index=cfg.knn_index,
                                      device=device))
    if "linear" in cfg.protocols:
        out.update({"eval/linear_epochs": cfg.linear_epochs, "eval/holdout_fraction": cfg.holdout_fraction,
                    "eval/linear_version": "2 (selection and refit heads in one pass)",
                    "eval/linear_lr_grid": ",".join(map(str, LR_GRID)), "eval/linear_wd_grid": ",".join(map(str, WD_GRID))})
        for frac in [1.0, *label_fractions]:
            prefix = "linear" if frac >= 1 else f"linear@{frac * 100:g}%"
            timed(prefix, lambda frac=frac, prefix=prefix: linear_probe(
                features("train"), dataset.y_train, features("test"), dataset.y_test, c, cfg.linear_epochs,
                cfg.holdout_fraction, label_fraction=frac, seed=seed, prefix=prefix))
    if "linear_lbfgs" in cfg.protocols:
        out["eval/linear_lbfgs_wd_grid"] = ",".join(map(str, LBFGS_WD_GRID))
        timed("linear_lbfgs", lambda: lbfgs_probe(features("train"), dataset.y_train, features("test"), dataset.y_test,
                                                  c, holdout_fraction=cfg.holdout_fraction, seed=seed))
    if "finetune" in cfg.protocols:
        from evals.finetune import CONVNET_LRS, VIT_LRS, finetune_eval
        from harness.backbones import is_vit

        out.update({"eval/finetune_steps": cfg.finetune_steps, "eval/finetune_batch_size": cfg.finetune_batch_size,
                    "eval/finetune_lr_grid": ",".join(map(str, VIT_LRS if is_vit(encoder) else CONVNET_LRS))})
        for frac in [1.0, *label_fractions]:
            prefix = "finetune" if frac >= 1 else f"finetune@{frac * 100:g}%"
            timed(prefix, lambda frac=frac, prefix=prefix: finetune_eval(
                encoder, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, c, dataset.mean, dataset.std,
                steps=cfg.finetune_steps, batch_size=cfg.finetune_batch_size, holdout_fraction=cfg.holdout_fraction,
                label_fraction=frac, seed=seed, device=device, precision=prec, progress=progress, prefix=prefix),
                splits=())
    if "semisup" in cfg.protocols:
        from evals.semisup import semisup_eval

        out.update({"eval/semisup_fractions": ",".join(map(str, cfg.semisup_fractions)),
                    "eval/distill_temperature": cfg.distill_temperature,
                    "eval/finetune_steps": cfg.finetune_steps, "eval/finetune_batch_size": cfg.finetune_batch_size})
        for frac in cfg.semisup_fractions:
            timed(f"semisup@{frac * 100:g}%", lambda frac=frac: semisup_eval(
                encoder, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, c, dataset.mean, dataset.std,
                label_fraction=frac, steps=cfg.finetune_steps, batch_size=cfg.finetune_batch_size,
                holdout_fraction=cfg.holdout_fraction, temperature=cfg.distill_temperature, seed=seed, device=device,
                precision=prec, progress=progress), splits=())
    if "align_uniform" in cfg.protocols:
        out.update({"eval/au_pairs": cfg.au_pairs, "eval/au_alpha": 2.0, "eval/au_t": 2.0})
        timed("align_uniform", lambda: align_uniform_eval(
            encoder, dataset.x_test, dataset.mean, dataset.std, cfg.au_pairs, features=features("test"), seed=seed,
            batch_size=cfg.batch_size, device=device, precision=prec, progress=progress), splits=("test",))
    return out


def report(metrics: dict[str, float | str]) -> str:
    """A plain two-column table of the metrics (knobs and timings omitted)."""
    rows = [(k, v) for k, v in metrics.items() if not k.startswith("eval/")]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v:8.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows)
