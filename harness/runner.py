"""What the CLI commands do: pretrain one run, evaluate an encoder, run a suite.

Flow of one run: config -> registry -> dataset + view recipe -> backbone -> method ->
trainer -> checkpoint -> evaluator -> metrics -> MLflow. A run directory
``out_dir/<experiment>/<run name>/`` holds ``checkpoint.pt``, the resolved ``config.yaml``
and ``run.json`` (the MLflow run id, and ``evaluated: true`` once metrics are logged).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from harness import tracking
from harness.config import RunConfig, flatten, load_yaml, resolve, to_dict
from harness.data import ImageDataset, load_dataset
from harness.errors import ConfigError, TrainingDiverged
from harness.trainer import Trainer, load_trained_method, resolve_device, trajectory_diff

RANDOM_INIT = "random_init"


def budget_label(cfg: RunConfig) -> str:
    v = cfg.budget.value
    if cfg.budget.kind == "flops":
        return f"{v:.3g}flops".replace("+", "")
    return f"{int(v) if float(v).is_integer() else v}{ {'seconds': 's', 'steps': 'steps', 'epochs': 'ep', 'samples': 'img'}[cfg.budget.kind] }"


def run_name(cfg: RunConfig) -> str:
    return f"{cfg.method}-{cfg.backbone}-{cfg.data.name}-{budget_label(cfg)}-s{cfg.seed}"


def run_tags(cfg: RunConfig, device: str) -> dict[str, str]:
    tags = tracking.environment_tags(device)
    import shlex

    argv = [os.path.basename(sys.argv[0]) if i == 0 else a for i, a in enumerate(sys.argv)]
    tags["command"] = "sslbench " + " ".join(shlex.quote(a) for a in argv[1:]) if argv else ""
    tags.update({"method": cfg.method, "backbone": cfg.backbone, "dataset": cfg.data.name,
                 "budget": f"{cfg.budget.kind}={cfg.budget.value}", "seed": str(cfg.seed)})
    return tags


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(f"sslbench: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- evaluation


def eval_params(cfg: RunConfig) -> dict[str, Any]:
    return {f"eval.{k}": v for k, v in flatten(cfg.eval).items()}


def evaluate_encoder(encoder: torch.nn.Module, ds: ImageDataset, cfg: RunConfig, device: torch.device) -> dict[str, float]:
    from evals import evaluate

    cache = Path(cfg.out_dir) / "feature-cache"
    return evaluate(encoder, ds, cfg.eval, device=device, cache_dir=cache, seed=cfg.seed, progress=cfg.train.progress)


def _log_eval(run: tracking.TrackedRun, metrics: dict[str, float], cfg: RunConfig) -> None:
    def is_knob(k: str, v) -> bool:
        return k.startswith("eval/") and not k.startswith("eval/time/") or not isinstance(v, (int, float))

    scalars = {k: float(v) for k, v in metrics.items() if not is_knob(k, v)}
    knobs = {k: v for k, v in metrics.items() if is_knob(k, v)}
    run.log_metrics(scalars)
    run.log_params(knobs)
    run.log_dict({"metrics": scalars, "protocol": {**knobs, **eval_params(cfg)}}, "eval_report.json")


# ----------------------------------------------------------------------------- pretrain


def pretrain(cfg: RunConfig, resume: bool = False, evaluate: bool = True, dataset: ImageDataset | None = None) -> dict[str, Any]:
    """Train one run under its budget, then (optionally) evaluate it; everything is logged."""
    from harness import distributed as dist

    device = resolve_device(cfg.train.device)
    dist.init_from_env(device.type)
    ds = dataset or load_dataset(cfg.data)
    run_dir = Path(cfg.out_dir) / cfg.tracking.experiment / run_name(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "run.json"
    state = json.loads(state_path.read_text()) if (resume and state_path.exists()) else {}
    if state and trajectory_diff(state["config"], to_dict(cfg)):
        log(f"{run_name(cfg)}: the config changed since the last attempt "
            f"({', '.join(trajectory_diff(state['config'], to_dict(cfg))[:3])}); starting this run over")
        state, resume = {}, False
    if state.get("evaluated") and state.get("config", {}).get("eval") == to_dict(cfg)["eval"]:
        log(f"{run_name(cfg)}: already finished and evaluated (run {state['run_id']}); skipping")
        return state
    ckpt_path = state.get("checkpoint")
    if state.get("evaluated") and ckpt_path and Path(ckpt_path).exists():
        # finished, evaluated under other knobs: re-score the checkpoint as `sslbench eval` does (a new
        # MLflow run tagged evaluation_of when a knob changed; the old record is never edited)
        if not dist.is_main():
            return {}
        log(f"{run_name(cfg)}: already finished; evaluating it under the new eval settings")
        out = evaluate_target(ckpt_path, cfg, dataset=ds)
        state.update(run_id=out["run_id"], metrics=out["metrics"])
        state["config"]["eval"] = to_dict(cfg)["eval"]
        _write_json_atomic(state_path, state)
        return state
    if not resume and (run_dir / "checkpoint.pt").exists():
        (run_dir / "checkpoint.pt").unlink()

    trainer = Trainer(cfg, ds, run_dir)  # validates method, backbone, budget and data before any run is logged
    is_main = dist.is_main()
    run = None
    if is_main:
        run = tracking.TrackedRun(cfg.tracking.experiment, run_name(cfg), cfg.tracking.uri, run_id=state.get("run_id"),
                                  params=flatten(cfg), tags=run_tags(cfg, device.type) if not state.get("run_id") else None)
        trainer.log_fn = run.log_metrics
        state = {"run_id": run.run_id, "config": to_dict(cfg), "evaluated": False}
        _write_json_atomic(state_path, state)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    try:
        result = trainer.fit(resume=resume)
    except (TrainingDiverged, KeyboardInterrupt) as e:
        if run:
            run.set_tags({"error": str(e)[:400]})
            run.end("FAILED" if isinstance(e, TrainingDiverged) else "KILLED")
        raise
    except Exception as e:
        if run:
            run.set_tags({"error": f"{type(e).__name__}: {str(e)[:400]}"})
            run.end("FAILED")
        raise
    if not is_main:
        return {}
    run.log_metrics({"pretrain/throughput": result.throughput, "pretrain/seconds": result.seconds,
                     "pretrain/steps": result.steps, "pretrain/images": result.images,
                     "pretrain/final_loss": result.final_loss}, step=result.steps)
    if trainer.flops_per_step:
        run.log_metrics({"pretrain/flops_per_step": trainer.flops_per_step,
                         "pretrain/flops": trainer.flops_per_step * result.steps}, step=result.steps)
    run.set_tags({"precision": result.precision, "channels_last": str(result.channels_last),
                  "view_notes": "; ".join(result.notes) or "none"})
    run.log_dict(to_dict(cfg), "config.json")
    for note in result.notes:
        log(f"{cfg.method}: {note}")
    metrics: dict[str, float] = {}
    if evaluate:
        metrics = evaluate_encoder(trainer.method.encoder(), ds, cfg, device)
        _log_eval(run, metrics, cfg)
    run.end("FINISHED")
    state.update({"evaluated": evaluate, "checkpoint": str(result.checkpoint), "metrics": metrics})
    _write_json_atomic(state_path, state)
    return state


def evaluate_target(target: str, cfg: RunConfig, dataset: ImageDataset | None = None) -> dict[str, Any]:
    """``target`` is a checkpoint path (logged to its pretraining run when known) or a
    backbone name (a random-init encoder, logged as method ``random_init``)."""
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
        run = tracking.TrackedRun(cfg.tracking.experiment, run_name(cfg), cfg.tracking.uri, run_id=run_id,
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
        _log_eval(run, metrics, cfg)
        run.end("FINISHED")
        return {"run_id": run.run_id, "metrics": metrics}
    return random_init(cfg, target, dataset)


def random_init(cfg: RunConfig, backbone: str, dataset: ImageDataset | None = None, resume: bool = False) -> dict[str, Any]:
    """Score a randomly initialised encoder of ``backbone`` (the floor of every leaderboard)."""
    from harness.backbones import build_backbone

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
    with tracking.TrackedRun(cfg.tracking.experiment, run_name(cfg), cfg.tracking.uri, params=flatten(cfg),
                             tags=run_tags(cfg, device.type)) as run:
        _log_eval(run, metrics, cfg)
        run.log_metrics({"eval/seconds": time.time() - t0})
    state = {"run_id": run.run_id, "config": to_dict(cfg), "evaluated": True, "metrics": metrics}
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(state_path, state)
    return state


# ----------------------------------------------------------------------------- suites


@dataclasses.dataclass
class Suite:
    name: str
    methods: list[str]
    seeds: list[int]
    common: dict[str, Any]                   # overrides for every run
    per_method: dict[str, dict[str, Any]]    # overrides per method (e.g. mae: backbone)
    random_init: bool = True


def load_suite(spec: str | dict[str, Any]) -> Suite:
    data = load_yaml(spec) if isinstance(spec, str) else dict(spec)
    unknown = set(data) - {"name", "methods", "seeds", "common", "per_method", "random_init", "description"}
    if unknown:
        raise ConfigError(f"unknown suite key(s) {', '.join(sorted(unknown))}; valid: name, methods, seeds, common, per_method, random_init")
    methods = data.get("methods") or []
    if not methods:
        raise ConfigError("a suite needs a non-empty 'methods' list")
    return Suite(str(data.get("name", "suite")), [str(m) for m in methods], [int(s) for s in data.get("seeds", [0])],
                 dict(data.get("common") or {}), {str(k): dict(v or {}) for k, v in (data.get("per_method") or {}).items()},
                 bool(data.get("random_init", True)))


def suite_configs(suite: Suite, overrides: dict[str, Any]) -> list[RunConfig]:
    from harness.registry import get_method

    cfgs = []
    for m in suite.methods:
        get_method(m)  # fail early on an unknown name
        for s in suite.seeds:
            base = {"tracking.experiment": suite.name, **suite.common, **suite.per_method.get(m, {}), "method": m, "seed": s}
            cfgs.append(resolve(overrides, base=base))
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
        log(f"[{i + 1}/{len(cfgs)}] {run_name(cfg)} ({time.time() - t0:.0f}s elapsed)")
        try:
            results.append(pretrain(cfg, resume=resume, dataset=data_for(cfg)))
        except TrainingDiverged as e:
            log(f"{run_name(cfg)} FAILED: {e}")
            results.append({"failed": str(e), "config": to_dict(cfg)})
    if suite.random_init:
        done = set()
        for cfg in cfgs:
            key = (cfg.backbone, cfg.seed, cfg.data.name)
            if key in done:
                continue
            done.add(key)
            log(f"random-init baseline: {cfg.backbone} seed {cfg.seed}")
            results.append(random_init(cfg, cfg.backbone, data_for(cfg), resume=resume))
    log(f"suite '{suite.name}' done in {time.time() - t0:.0f}s")
    return results
