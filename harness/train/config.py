"""A run's whole config: the sections put together, presets, and resolution of overrides.

Precedence, lowest first: a method's paper defaults (its ``Config`` dataclass and its declared
optimiser, ``Method.optim``) -> a preset YAML (small-image settings) -> a suite YAML ->
``key=value`` on the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from evals.config import EvalConfig
from harness.core.config import CONFIG_DIR, apply_dict, load_yaml
from harness.core.errors import ConfigError, did_you_mean
from harness.core.schema import BudgetConfig, DataConfig, OptimConfig, TrackingConfig, TrainConfig, ViewsConfig


@dataclass
class RunConfig:
    method: str = "simclr"
    backbone: str = "cnn4"
    seed: int = 0
    out_dir: str = "runs"                # checkpoints live under out_dir/<run name>
    preset: str | None = None            # a YAML under harness/configs/presets, e.g. "small"
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)   # options for every method's views (background)
    method_cfg: dict[str, Any] = field(default_factory=dict)  # the method's own Config keys


def preset_overrides(preset: str | None, method: str) -> dict[str, Any]:
    """A preset YAML has a ``defaults`` section and one section per method name."""
    if not preset:
        return {}
    path = CONFIG_DIR / "presets" / f"{preset}.yaml"
    if not path.exists():
        avail = sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml"))
        raise ConfigError(f"unknown preset '{preset}'{did_you_mean(preset, avail)}; valid choices: {', '.join(avail)}")
    data = load_yaml(path)
    out = dict(data.get("defaults") or {})
    out.update(data.get(method) or {})
    return out


def resolve(overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> RunConfig:
    """Build a RunConfig: preset (chosen by base/overrides) < base < overrides."""
    base = dict(base or {})
    overrides = dict(overrides or {})
    probe = RunConfig()
    apply_dict(probe, {k: v for k, v in {**base, **overrides}.items() if k in ("method", "preset")})
    cfg = RunConfig()
    apply_dict(cfg, preset_overrides(probe.preset, probe.method))
    apply_dict(cfg, base)
    apply_dict(cfg, overrides)
    cfg.method, cfg.preset = probe.method, probe.preset
    return cfg


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> RunConfig:
    cfg = RunConfig()
    apply_dict(cfg, d)
    return cfg
