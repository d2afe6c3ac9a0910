"""Building a method from a config (and from a checkpoint), and what must match to resume one."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from harness.core import checkpoint as ckpt
from harness.core.config import flatten
from harness.core.errors import CheckpointError
from harness.data.dataset import ImageDataset
from harness.method.contract import DataInfo, Method
from harness.method.registry import METHODS
from harness.models.backbones import build_backbone
from harness.train.config import RunConfig, from_dict


def data_info(ds: ImageDataset) -> DataInfo:
    return DataInfo(ds.name, ds.channels, ds.image_size, len(ds.x_train), ds.num_classes,
                    tuple(float(v) for v in ds.mean), tuple(float(v) for v in ds.std), frames=ds.frames)


def build_method(cfg: RunConfig, info: DataInfo, with_teacher: bool = True) -> Method:
    """The method of ``cfg`` on its backbone; a method that names a teacher checkpoint gets its encoder
    (``with_teacher=False`` when only the trained weights are needed: evaluation of a checkpoint)."""
    entry = METHODS.get(cfg.method)
    mcfg = entry.cls.make_config(cfg.method_cfg)
    backbone = build_backbone(cfg.backbone, info.channels, info.image_size, frames=info.frames)
    entry.cls.check_requirements(backbone, info, cfg.backbone)
    method = entry.cls(backbone, mcfg, info)
    ref = method.teacher_reference() if with_teacher else None
    if ref:
        method.attach_teacher(*load_teacher(ref, info, method.teacher_digest()))
    return method


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_teacher(path: str | Path, info: DataInfo, sha256: str = "") -> tuple[torch.nn.Module, dict[str, str]]:
    """A finished checkpoint's scored encoder, frozen, and its provenance (``teacher.*``: path, sha256,
    method, backbone, and the teacher run's own dataset), for a method that distils it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"teacher checkpoint {path} not found; pass the checkpoint.pt of a finished run "
                              f"(results/<experiment>/<run>/checkpoint.pt)")
    digest = file_sha256(p)
    if sha256 and digest != sha256:
        raise CheckpointError(f"teacher {path} changed since this run was configured (sha256 {digest[:12]} vs "
                              f"{sha256[:12]}); restore that file, or start a new run on the new teacher")
    method, tcfg, state = load_trained_method(p)
    if not state.get("finished", False):
        raise CheckpointError(f"teacher {path} is the checkpoint of an unfinished run; finish it "
                              f"(sslbench run ... --resume) or pass a finished run's checkpoint")
    tinfo = state["data_info"]
    if (tinfo.get("channels"), tinfo.get("image_size")) != (info.channels, info.image_size):
        raise CheckpointError(f"teacher {path} was trained on {tinfo.get('channels')}-channel "
                              f"{tinfo.get('image_size')}-px images; this run has {info.channels}-channel "
                              f"{info.image_size}-px images")
    encoder = method.encoder().eval()
    for q in encoder.parameters():
        q.requires_grad_(False)
    return encoder, {"teacher.path": str(p), "teacher.sha256": digest, "teacher.method": tcfg.method,
                     "teacher.backbone": tcfg.backbone, "teacher.data": str(tinfo.get("name"))}


def method_config_params(method: Method) -> dict[str, Any]:
    """The method's full resolved config as params (``method_config.*``), part of a run's identity."""
    cfg = dataclasses.asdict(method.cfg) if dataclasses.is_dataclass(method.cfg) else dict(method.cfg)
    return {f"method_config.{k}": v for k, v in flatten(cfg).items()}


def trajectory_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Config keys that change a run's trajectory and differ (devices, progress bars, evaluation,
    tracking and whether the data is streamed from disk or held in memory may change between
    attempts; method, data, budget, optimiser, seed may not)."""
    a, b = flatten(from_dict(saved)), flatten(from_dict(current))
    mutable = ("train.", "eval.", "tracking.", "out_dir", "data.memory_cap_mb", "data.workers")
    return [f"{k}={a.get(k)!r}->{b.get(k)!r}" for k in sorted(set(a) | set(b))
            if not k.startswith(mutable) and a.get(k) != b.get(k)]


RESUME_KEYS = ("model", "optimizer", "step", "elapsed", "rng", "config", "data_info")


def read_checkpoint(path: str | Path, map_location: str = "cpu", resume: bool = False) -> dict[str, Any]:
    """A checkpoint written by the trainer, checked: loadable with ``weights_only=True``, and holding
    what evaluating (or, with ``resume``, continuing) it needs. One loader for ``eval`` and ``--resume``."""
    state = ckpt.load(path, map_location=map_location)
    need = RESUME_KEYS if resume else ("model", "config", "data_info")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a complete sslbench checkpoint (missing {', '.join(missing)}); "
                              "rerun without --resume to start over" if resume else
                              f"{path}: not a complete sslbench checkpoint (missing {', '.join(missing)})")
    if not isinstance(state["config"], dict) or not isinstance(state["data_info"], dict):
        raise CheckpointError(f"{path}: not an sslbench checkpoint (config / data_info are not mappings)")
    return state


def load_weights(module: Method, state: dict[str, Any], path: str | Path) -> None:
    """``module.load_state_dict(state["model"])`` with one clear error for missing or mis-shaped weights."""
    try:
        module.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: weights do not match {type(module).name}/{state['config'].get('backbone')} "
                              f"({first})") from None


def load_trained_method(path: str | Path, map_location: str = "cpu") -> tuple[Method, RunConfig, dict[str, Any]]:
    """Rebuild a method (backbone included) from a checkpoint written by the trainer."""
    state = read_checkpoint(path, map_location)
    try:
        cfg = from_dict(state["config"])
        info = DataInfo(**state["data_info"])
    except TypeError as e:
        raise CheckpointError(f"{path}: not an sslbench checkpoint ({e})") from None
    method = build_method(cfg, info, with_teacher=False)
    load_weights(method, state, path)
    method.eval()
    return method, cfg, state
