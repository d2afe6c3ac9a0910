"""Pretraining one run: train under its budget, then evaluate it, everything recorded.

Flow of one run: config -> plugin registry -> dataset + view recipe -> backbone -> method ->
trainer -> checkpoint -> evaluator -> metrics -> MLflow. A run directory
``out_dir/<experiment>/<run name>/`` holds ``checkpoint.pt``, the resolved ``config.yaml``
and ``run.json`` (the MLflow run id, and ``evaluated: true`` once metrics are logged).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from evals.evaluate import check_fits
from evals.features import scored_encoder
from harness.core import distributed as dist
from harness.core.config import flatten
from harness.core.device import apply_threads, resolve_device
from harness.core.errors import ConfigError
from harness.core.identity import identity as run_identity
from harness.data.dataset import ImageDataset
from harness.data.sources import load_dataset
from harness.run.evaluate import artifact_folder, evaluate_encoder, evaluate_target, log_eval
from harness.run.lifecycle import RunBusy, RunDir, ensure_dir, recorded
from harness.run.naming import dataset_label, log, read_state, run_dir, run_name, run_tags, write_json_atomic
from harness.run.plugins import get_method
from harness.tracking.curves import LOSS_CURVE, loss_curve
from harness.tracking.query import checkpoint_of
from harness.tracking.runs import MetricBuffer, TrackedRun, one_line, recorded_params, relog_unlogged
from harness.tracking.store import client
from harness.train.build import file_sha256, trajectory_diff
from harness.train.config import RunConfig, to_dict
from harness.train.trainer import Trainer

UNLOGGED = "unlogged_metrics.jsonl"   # metric points kept while the tracking store was away


def pretrain(cfg: RunConfig, resume: bool = False, evaluate: bool = True, dataset: ImageDataset | None = None) -> dict[str, Any]:
    """Train one run under its budget, then (optionally) evaluate it; everything is logged.

    The run directory is owned by one process at a time: a second process (e.g. a second
    ``sslbench run --resume`` of the same suite) skips a run another process is training, and says so."""
    get_method(cfg.method)                       # an unknown name fails before any data is read
    cfg = resolve_run_references(cfg)            # method_cfg.teacher=EXPERIMENT/METHOD or a run id -> its checkpoint
    apply_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    dist.init_from_env(device.type)
    ensure_dir(Path(cfg.out_dir))
    if dist.is_main():
        client(cfg.tracking.uri)                 # an unreachable or unusable store fails before any work
    ds = dataset or load_dataset(cfg.data)
    if evaluate:
        check_fits(cfg.eval, ds)                 # what evaluation will refuse, refused before training
    name = run_name(cfg, ds)
    folder = run_dir(cfg, ds)
    trainer = Trainer(cfg, ds, folder)          # validates method, backbone, budget and data before anything is written
    if evaluate:                                # eval.features the method or backbone cannot give: refused now
        scored_encoder(trainer.method.encoder(), trainer.method.projector(), cfg.eval.features)
    if not dist.is_main():                      # rank 0 owns the folder and the record
        return _train(cfg, ds, trainer, name, device, resume, evaluate)
    try:
        with RunDir(folder):
            return _train(cfg, ds, trainer, name, device, resume, evaluate)
    except RunBusy as e:
        log(f"{name}: skipped, another process is training it ({e.owner}; {folder})")
        return {"skipped": True, "config": to_dict(cfg), "owner": e.owner}


def resolve_run_references(cfg: RunConfig) -> RunConfig:
    """A teacher named by a run (an MLflow run id, or EXPERIMENT/METHOD: the newest finished run of that
    method with this run's seed) becomes that run's checkpoint path; a path stays as it is. The
    teacher's file hash is logged by the run itself (``teacher.sha256``), whatever named it."""
    ref = (cfg.method_cfg or {}).get("teacher")
    if not isinstance(ref, str) or not ref:
        return cfg
    path = ref if Path(ref).expanduser().exists() else checkpoint_of(ref, cfg.seed, cfg.tracking.uri)
    if path is None or not Path(path).expanduser().is_file():
        return cfg                                 # the method's own loader says what is missing
    if path != ref:
        log(f"{cfg.method}: teacher {ref} -> {path}")
    path = str(Path(path).expanduser().resolve())   # one spelling of one file
    pinned = {"teacher": path, "teacher_sha256": file_sha256(Path(path))}
    return dataclasses.replace(cfg, method_cfg={**cfg.method_cfg, **pinned})


def _train(cfg: RunConfig, ds: ImageDataset, trainer: Trainer, name: str, device, resume: bool,
           evaluate: bool) -> dict[str, Any]:
    folder = trainer.run_dir
    state_path = folder / "run.json"
    state = read_state(state_path) if resume else {}
    fingerprint = ds.fingerprint()
    if state and (trajectory_diff(state.get("config", {}), to_dict(cfg)) or
                  state.get("data_fingerprint", fingerprint) != fingerprint):
        changed = trajectory_diff(state.get("config", {}), to_dict(cfg)) or ["the dataset's contents"]
        log(f"{name}: the config changed since the last attempt ({', '.join(changed[:3])}); starting this run over")
        state, resume = {}, False
    if state.get("evaluated") and state.get("config", {}).get("eval") == to_dict(cfg)["eval"]:
        log(f"{name}: already finished and evaluated (run {state['run_id']}); skipping")
        return state
    ckpt_path = state.get("checkpoint")
    if state.get("evaluated") and ckpt_path and Path(ckpt_path).exists():
        # finished, evaluated under other knobs: re-score the checkpoint as `sslbench eval` does (a new
        # MLflow run tagged evaluation_of when a knob changed; the old record is never edited)
        if not dist.is_main():
            return {}
        log(f"{name}: already finished; evaluating it under the new eval settings")
        out = evaluate_target(ckpt_path, cfg, dataset=ds)
        state.update(run_id=out["run_id"], metrics=out["metrics"])
        state["config"]["eval"] = to_dict(cfg)["eval"]
        write_json_atomic(state_path, state)
        return state
    # without --resume the run starts from scratch; its first checkpoint replaces the folder's old one
    # atomically (the folder holds one configuration, so an old checkpoint is never another run's)
    if resume:
        trainer.restore()          # a bad checkpoint fails here, before the run's record is touched
    is_main = dist.is_main()
    run = None
    if is_main:
        params = {**flatten(cfg), **trainer.run_params()}
        before = recorded_params(cfg.tracking.uri, state["run_id"]) if resume and state.get("run_id") else None
        key = "train.resolved.hardware"
        if before and key in before and key in params and before[key] != params[key]:
            raise ConfigError(f"{name} was started on '{before[key]}' and this is '{params[key]}': the rest of "
                              f"a seconds budget spent here would mix two machines' seconds; resume it there, "
                              f"or rerun it without --resume")
        config_id, identity = run_identity(params)
        run = TrackedRun(cfg.tracking.experiment, name, cfg.tracking.uri, run_id=state.get("run_id"), params=params,
                         tags=run_tags(cfg, device.type, ds) if not state.get("run_id") else None)
        run.set_tags({"sslbench.config_id": config_id, "sslbench.identity": identity, "sslbench.kernels": trainer.kernel_tag(),
                      "checkpoint": str((folder / "checkpoint.pt").resolve())})
        unlogged = folder / UNLOGGED
        if resume:   # what an attempt kept while the store was away arrives before anything new
            n = relog_unlogged(run, unlogged)
            if n:
                log(f"{name}: logged the {n} metric points the last attempt kept while the store was away")
        else:
            unlogged.unlink(missing_ok=True)
        buffer = MetricBuffer(run, unlogged)
        trainer.log_fn = buffer
        state = {"run_id": run.run_id, "config": to_dict(cfg), "evaluated": False, "data_fingerprint": fingerprint}
        write_json_atomic(state_path, state)
        (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    with recorded(run):
        result = trainer.fit(resume=resume)
        if not is_main:
            return {}
        buffer.flush(result.checkpoint)   # the store gone since mid-run: one line, the checkpoint is written
        run.log_metrics({"pretrain/throughput": result.throughput, "pretrain/seconds": result.seconds,
                         "pretrain/steps": result.steps, "pretrain/images": result.images,
                         "pretrain/final_loss": result.final_loss}, step=result.steps)
        if trainer.flops_per_step:
            run.log_metrics({"pretrain/flops_per_step": trainer.flops_per_step,
                             "pretrain/flops": trainer.flops_per_step * result.steps}, step=result.steps)
        run.set_tags({"precision": result.precision, "channels_last": str(result.channels_last),
                      "view_notes": "; ".join(result.notes) or "none"})
        run.log_dict(to_dict(cfg), "config.json")
        log_training_artifacts(run, cfg, trainer, name, dataset_label(cfg, ds))
        for note in result.notes:
            log(f"{cfg.method}: {note}")
        metrics: dict[str, float] = {}
        if evaluate:
            artifacts = artifact_folder(trainer.method, folder)
            metrics = evaluate_encoder(trainer.method.encoder(), ds, cfg, device, trainer.method.projector(),
                                       zero_shot=trainer.method.zero_shot_classifier,
                                       translator=trainer.method.translator, artifact_dir=artifacts)
            log_eval(run, metrics, cfg, artifacts)
        run.end("FINISHED")
    state.update({"evaluated": evaluate, "checkpoint": str(result.checkpoint), "metrics": metrics})
    write_json_atomic(state_path, state)
    return state



def log_training_artifacts(run: TrackedRun, cfg: RunConfig, trainer: Trainer, name: str, dataset: str) -> dict[str, str]:
    """At the end of training: the loss curve (``loss_curve.png``, also kept in the run folder) and, with
    ``tracking.log_checkpoint=true``, the final ``checkpoint.pt``, as artifacts of the run.

    Best effort: a failure (an unreachable store, a full disk) is one ``sslbench: warning:`` line and the
    tag ``sslbench.artifact_error``; the run's record goes on (metrics, evaluation, FINISHED) and its
    checkpoint in the run folder is never touched. Returns {artifact: reason} for what was not logged."""
    failed: dict[str, str] = {}
    files: list[Path] = []
    title = f"{cfg.method} / {cfg.backbone} / {dataset} / {cfg.budget.label} / seed {cfg.seed}"
    try:
        files.append(loss_curve(run.run_id, trainer.run_dir / LOSS_CURVE, title, cfg.tracking.uri))
    except Exception as e:   # noqa: BLE001 - the store or the disk: the curve is a convenience, never the record
        failed[LOSS_CURVE] = one_line(e)
    if cfg.tracking.log_checkpoint:
        files.append(trainer.checkpoint_path)
    failed = run.try_log_artifacts(files, failed)
    for what, reason in failed.items():
        log(f"warning: {name}: {what} was not logged to the tracking store ({reason}); the run's record "
            f"and its checkpoint {trainer.checkpoint_path} are intact")
    return failed
