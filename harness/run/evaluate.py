"""Scoring an encoder with the shared evaluator and recording it: a trained checkpoint, or a
random-init encoder of a backbone (the floor of every leaderboard)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from evals.evaluate import evaluate
from harness.core.config import flatten
from harness.core.device import resolve_device
from harness.data.dataset import ImageDataset
from harness.data.sources import load_dataset
from harness.method.registry import RANDOM_INIT
from harness.models.backbones import build_backbone
from harness.run.naming import log, run_name, run_tags, write_json_atomic
from harness.run.plugins import load_plugins
from harness.tracking.runs import TrackedRun
from harness.train.build import load_trained_method
from harness.train.config import RunConfig, to_dict


def eval_params(cfg: RunConfig) -> dict[str, Any]:
    return {f"eval.{k}": v for k, v in flatten(cfg.eval).items()}


def evaluate_encoder(encoder: torch.nn.Module, ds: ImageDataset, cfg: RunConfig, device: torch.device) -> dict[str, float]:
    cache = Path(cfg.out_dir) / "feature-cache"
    return evaluate(encoder, ds, cfg.eval, device=device, cache_dir=cache, seed=cfg.seed, progress=cfg.train.progress)


def log_eval(run: TrackedRun, metrics: dict[str, float], cfg: RunConfig) -> None:
    def is_knob(k: str, v) -> bool:
        return k.startswith("eval/") and not k.startswith("eval/time/") or not isinstance(v, (int, float))

    scalars = {k: float(v) for k, v in metrics.items() if not is_knob(k, v)}
    knobs = {k: v for k, v in metrics.items() if is_knob(k, v)}
    run.log_metrics(scalars)
    run.log_params(knobs)
    run.log_dict({"metrics": scalars, "protocol": {**knobs, **eval_params(cfg)}}, "eval_report.json")


def evaluate_target(target: str, cfg: RunConfig, dataset: ImageDataset | None = None) -> dict[str, Any]:
    """``target`` is a checkpoint path (logged to its pretraining run when known) or a
    backbone name (a random-init encoder, logged as method ``random_init``)."""
    load_plugins()
    device = resolve_device(cfg.train.device)
    p = Path(target)
    if p.suffix == ".pt" or p.exists():
        method, tcfg, _ = load_trained_method(p, map_location=str(device))
        cfg = dataclasses.replace(tcfg, eval=cfg.eval, tracking=cfg.tracking, train=cfg.train,
                                  data=cfg.data if cfg.data != RunConfig().data else tcfg.data)
        ds = dataset or load_dataset(cfg.data)
        run_json = p.parent / "run.json"
        run_id = json.loads(run_json.read_text()).get("run_id") if run_json.exists() else None
        encoder = method.encoder().to(device)
        metrics = evaluate_encoder(encoder, ds, cfg, device)
        params = flatten(cfg)
        run = TrackedRun(cfg.tracking.experiment, run_name(cfg), cfg.tracking.uri, run_id=run_id,
                                  tags=None if run_id else run_tags(cfg, device.type))
        changed = run.conflicting_params({**params, **{k: v for k, v in metrics.items() if k.startswith("eval/")
                                                       and not k.startswith("eval/time/") and k != "eval/seed"}})
        if changed:
            # evaluated before under other knobs: the old record stays as it was; this is a new run
            log(f"{run_name(cfg)}: evaluated before with other settings ({', '.join(changed[:3])}); "
                f"logging a new run (tag evaluation_of={run_id})")
            run.end("FINISHED")
            run = run.fork(run_name(cfg), params, {"command": run_tags(cfg, device.type)["command"]})
        else:
            run.log_params(params)
        log_eval(run, metrics, cfg)
        run.end("FINISHED")
        return {"run_id": run.run_id, "metrics": metrics}
    return random_init(cfg, target, dataset)


def random_init(cfg: RunConfig, backbone: str, dataset: ImageDataset | None = None, resume: bool = False) -> dict[str, Any]:
    """Score a randomly initialised encoder of ``backbone`` (the floor of every leaderboard)."""
    device = resolve_device(cfg.train.device)
    cfg = dataclasses.replace(cfg, method=RANDOM_INIT, backbone=backbone, method_cfg={})
    run_dir = Path(cfg.out_dir) / cfg.tracking.experiment / run_name(cfg)
    state_path = run_dir / "run.json"
    if resume and state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("evaluated") and state.get("config") == to_dict(cfg):
            log(f"{run_name(cfg)}: already evaluated (run {state['run_id']}); skipping")
            return state
    ds = dataset or load_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    encoder = build_backbone(backbone, ds.channels, ds.image_size).to(device)
    t0 = time.time()
    metrics = evaluate_encoder(encoder, ds, cfg, device)
    with TrackedRun(cfg.tracking.experiment, run_name(cfg), cfg.tracking.uri, params=flatten(cfg),
                             tags=run_tags(cfg, device.type)) as run:
        log_eval(run, metrics, cfg)
        run.log_metrics({"eval/seconds": time.time() - t0})
    state = {"run_id": run.run_id, "config": to_dict(cfg), "evaluated": True, "metrics": metrics}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_path, state)
    return state
