"""Pretraining one run: train under its budget, then evaluate it, everything recorded.

Flow of one run: config -> plugin registry -> dataset + view recipe -> backbone -> method ->
trainer -> checkpoint -> evaluator -> metrics -> MLflow. A run directory
``out_dir/<experiment>/<run name>/`` holds ``checkpoint.pt``, the resolved ``config.yaml``
and ``run.json`` (the MLflow run id, and ``evaluated: true`` once metrics are logged).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from harness.core import distributed as dist
from harness.core.config import flatten
from harness.core.device import resolve_device
from harness.core.errors import TrainingDiverged
from harness.data.dataset import ImageDataset
from harness.data.sources import load_dataset
from harness.run.evaluate import evaluate_encoder, evaluate_target, log_eval
from harness.run.naming import log, run_name, run_tags, write_json_atomic
from harness.run.plugins import load_plugins
from harness.tracking.runs import TrackedRun
from harness.train.build import trajectory_diff
from harness.train.config import RunConfig, to_dict
from harness.train.trainer import Trainer


def pretrain(cfg: RunConfig, resume: bool = False, evaluate: bool = True, dataset: ImageDataset | None = None) -> dict[str, Any]:
    """Train one run under its budget, then (optionally) evaluate it; everything is logged."""
    load_plugins()
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
        write_json_atomic(state_path, state)
        return state
    if not resume and (run_dir / "checkpoint.pt").exists():
        (run_dir / "checkpoint.pt").unlink()

    trainer = Trainer(cfg, ds, run_dir)  # validates method, backbone, budget and data before any run is logged
    is_main = dist.is_main()
    run = None
    if is_main:
        run = TrackedRun(cfg.tracking.experiment, run_name(cfg), cfg.tracking.uri, run_id=state.get("run_id"),
                                  params=flatten(cfg), tags=run_tags(cfg, device.type) if not state.get("run_id") else None)
        trainer.log_fn = run.log_metrics
        run.log_params(trainer.optim.params())   # the optimiser the run really got (declared defaults + overrides)
        state = {"run_id": run.run_id, "config": to_dict(cfg), "evaluated": False}
        write_json_atomic(state_path, state)
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
        log_eval(run, metrics, cfg)
    run.end("FINISHED")
    state.update({"evaluated": evaluate, "checkpoint": str(result.checkpoint), "metrics": metrics})
    write_json_atomic(state_path, state)
    return state
