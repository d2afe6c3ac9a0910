"""Suites: several methods x seeds under one config, plus random-init rows, run one after another."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from typing import Any

from harness.core.config import flatten, load_yaml
from harness.core.errors import ConfigError, TrainingDiverged
from harness.core.identity import identity
from harness.data.dataset import ImageDataset
from harness.data.sources import load_dataset
from harness.method.registry import RANDOM_INIT
from harness.run.evaluate import random_init
from harness.run.naming import log, run_name
from harness.run.plugins import get_method
from harness.run.pretrain import pretrain
from harness.train.config import RunConfig, resolve, to_dict


@dataclasses.dataclass
class Suite:
    name: str
    methods: list[str]
    seeds: list[int]
    common: dict[str, Any]                   # overrides for every run
    per_method: dict[str, dict[str, Any]]    # overrides per method (e.g. mae: backbone)
    random_init: bool = True
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)   # key: [values], every combination


def load_suite(spec: str | dict[str, Any]) -> Suite:
    data = load_yaml(spec) if isinstance(spec, str) else dict(spec)
    unknown = set(data) - {"name", "methods", "seeds", "common", "per_method", "random_init", "description", "grid"}
    if unknown:
        raise ConfigError(f"unknown suite key(s) {', '.join(sorted(unknown))}; valid: name, methods, seeds, common, "
                          "per_method, random_init, grid")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError("a suite's 'grid' maps config keys to non-empty lists of values, e.g. "
                          "grid: {backbone: [cnn4, resnet18_cifar], budget.value: [60, 240]}")
    methods = data.get("methods") or []
    if not methods:
        raise ConfigError("a suite needs a non-empty 'methods' list")
    return Suite(str(data.get("name", "suite")), [str(m) for m in methods], [int(s) for s in data.get("seeds", [0])],
                 dict(data.get("common") or {}), {str(k): dict(v or {}) for k, v in (data.get("per_method") or {}).items()},
                 bool(data.get("random_init", True)), {str(k): list(v) for k, v in grid.items()})


def run_key(cfg: RunConfig, floor: bool = False) -> str:
    """12 hex digits naming one run before its data is read: its identity (``harness.core.identity``:
    what changes its result, seed included; for ``floor``, the random-init row of its backbone, which
    no training knob or caption changes) plus where the data lives (the contents are fingerprinted
    only once loaded, so two folders are two runs here)."""
    params = {**flatten(cfg), "data.location": cfg.data.data_dir or ""}
    if floor:
        params["method"] = RANDOM_INIT
    return identity(params)[1][:12]


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid's values ({} for no grid)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def suite_configs(suite: Suite, overrides: dict[str, Any]) -> list[RunConfig]:
    """methods x grid points x seeds: common < grid point < per-method settings < overrides (a method's
    own constraints, e.g. MAE's ViT, win over the grid; the same config twice is kept once)."""
    cfgs, seen = [], set()
    for m in suite.methods:
        get_method(m)  # fail early on an unknown name
        for point in grid_points(suite.grid):
            for s in suite.seeds:
                base = {"tracking.experiment": suite.name, **suite.common, **point, **suite.per_method.get(m, {}),
                        "method": m, "seed": s}
                cfg = resolve(overrides, base=base)
                key = json.dumps(to_dict(cfg), sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    cfgs.append(cfg)
    return cfgs


def run_suite(spec: str | dict[str, Any], overrides: dict[str, Any], resume: bool = False) -> list[dict[str, Any]]:
    suite = load_suite(spec)
    cfgs = suite_configs(suite, overrides)  # validates every config before any training
    datasets: dict[str, ImageDataset] = {}

    def data_for(cfg: RunConfig) -> ImageDataset:
        key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
        if key not in datasets:
            datasets[key] = load_dataset(cfg.data)
        return datasets[key]

    results = []
    t0 = time.time()
    for i, cfg in enumerate(cfgs):
        ds = data_for(cfg)
        log(f"[{i + 1}/{len(cfgs)}] {run_name(cfg, ds)} ({time.time() - t0:.0f}s elapsed)")
        try:
            results.append(pretrain(cfg, resume=resume, dataset=ds))
        except TrainingDiverged as e:
            log(f"{run_name(cfg, ds)} FAILED: {e}")
            results.append({"failed": str(e), "config": to_dict(cfg)})
    if suite.random_init:
        done = set()
        for cfg in cfgs:
            key = run_key(cfg, floor=True)
            if key in done:
                continue
            done.add(key)
            log(f"random-init baseline: {cfg.backbone} seed {cfg.seed}")
            results.append(random_init(cfg, cfg.backbone, data_for(cfg), resume=resume))
    log(f"suite '{suite.name}' done in {time.time() - t0:.0f}s")
    return results
