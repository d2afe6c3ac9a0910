"""Building a method from a config (and from a checkpoint), and what must match to resume one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.core import checkpoint as ckpt
from harness.core.config import flatten
from harness.core.errors import CheckpointError
from harness.data.dataset import ImageDataset
from harness.method.contract import DataInfo, Method
from harness.method.registry import METHODS
from harness.models.backbones import build_backbone
from harness.train.config import RunConfig, from_dict


def data_info(ds: ImageDataset) -> DataInfo:
    return DataInfo(ds.name, ds.channels, ds.image_size, len(ds.x_train), ds.num_classes)


def build_method(cfg: RunConfig, info: DataInfo) -> Method:
    entry = METHODS.get(cfg.method)
    mcfg = entry.cls.make_config(cfg.method_cfg)
    backbone = build_backbone(cfg.backbone, info.channels, info.image_size)
    entry.cls.check_requirements(backbone, info, cfg.backbone)
    return entry.cls(backbone, mcfg, info)


def trajectory_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Config keys that change a run's trajectory and differ (devices, progress bars, evaluation
    and tracking may change between attempts; method, data, budget, optimiser, seed may not)."""
    a, b = flatten(from_dict(saved)), flatten(from_dict(current))
    mutable = ("train.", "eval.", "tracking.", "out_dir")
    return [f"{k}={a.get(k)!r}->{b.get(k)!r}" for k in sorted(set(a) | set(b))
            if not k.startswith(mutable) and a.get(k) != b.get(k)]


def load_trained_method(path: str | Path, map_location: str = "cpu") -> tuple[Method, RunConfig, dict[str, Any]]:
    """Rebuild a method (backbone included) from a checkpoint written by the trainer."""
    state = ckpt.load(path, map_location=map_location)
    try:
        cfg = from_dict(state["config"])
        info = DataInfo(**state["data_info"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not an sslbench checkpoint ({e})") from None
    method = build_method(cfg, info)
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match {cfg.method}/{cfg.backbone} ({str(e).splitlines()[0][:100]})") from None
    method.eval()
    return method, cfg, state
