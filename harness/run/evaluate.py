"""Scoring an encoder with the shared evaluator and recording it: a trained checkpoint, or a
random-init encoder of a backbone (the floor of every leaderboard)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from evals.budgets import finetune_budget
from evals.evaluate import evaluate
from evals.features import scored_encoder
from harness.core.config import flatten
from harness.core.device import apply_threads, resolve_device
from harness.core.errors import CheckpointError, DataError
from harness.core.identity import NOT_RESULT
from harness.core.identity import identity as run_identity
from harness.data.dataset import ImageDataset
from harness.data.sources import load_dataset
from harness.method.registry import RANDOM_INIT
from harness.models.backbones import build_backbone
from harness.run.lifecycle import RunBusy, RunDir, ensure_dir, recorded
from harness.run.naming import log, read_state, run_dir, run_name, run_tags, write_json_atomic
from harness.run.plugins import load_plugins
from harness.tracking.runs import TrackedRun, conflicts, ended_killed, recorded_params
from harness.tracking.store import client
from harness.train.build import load_trained_method, method_config_params
from harness.train.config import RunConfig, to_dict


def eval_params(cfg: RunConfig) -> dict[str, Any]:
    return {f"eval.{k}": v for k, v in flatten(cfg.eval).items()}


EVAL_ARTIFACTS = "eval_artifacts"   # a run folder's sub-folder for the files protocols write (the translation grid)


def artifact_folder(method, folder: Path) -> Path | None:
    """Where an evaluation of ``method`` writes its files: ``folder/eval_artifacts`` for a method whose
    protocols write any (a generator's translation grid), emptied first; None otherwise."""
    if method.translator() is None:
        return None
    out = folder / EVAL_ARTIFACTS
    if out.is_dir():
        for f in out.iterdir():
            if f.is_file():
                f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def evaluate_encoder(encoder: torch.nn.Module, ds: ImageDataset, cfg: RunConfig, device: torch.device,
                     projector: torch.nn.Module | None = None, zero_shot=None, translator=None,
                     artifact_dir: Path | None = None) -> dict[str, float]:
    """Score ``encoder`` (or what ``eval.features`` reads from it, or ``projector``) with the shared evaluator;
    ``zero_shot`` is the method's ``zero_shot_classifier`` hook (the ``zero_shot`` protocol), ``translator``
    its ``translator`` hook (the ``translation`` protocol, whose grid goes to ``artifact_dir``)."""
    cache = Path(cfg.out_dir) / "feature-cache"
    module = scored_encoder(encoder, projector, cfg.eval.features)
    steps, bs = finetune_budget(cfg.eval, cfg.budget.kind, cfg.budget.value)   # the pretraining budget's class
    ecfg = dataclasses.replace(cfg.eval, finetune_steps=steps, finetune_batch_size=bs)
    return evaluate(module, ds, ecfg, device=device, cache_dir=cache, seed=cfg.seed, progress=cfg.train.progress,
                    zero_shot=zero_shot, translator=translator, artifact_dir=artifact_dir)


def log_eval(run: TrackedRun, metrics: dict[str, float], cfg: RunConfig, artifact_dir: Path | None = None) -> None:
    """The evaluation's metrics, knobs (params) and report; with ``artifact_dir``, the files the protocols
    wrote there as artifacts (best effort: a failure is one warning line and the tag sslbench.artifact_error)."""
    def is_knob(k: str, v) -> bool:
        return k.startswith("eval/") and not k.startswith("eval/time/") or not isinstance(v, (int, float))

    scalars = {k: float(v) for k, v in metrics.items() if not is_knob(k, v)}
    knobs = {k: v for k, v in metrics.items() if is_knob(k, v)}
    run.log_metrics(scalars)
    run.log_params(knobs)
    run.log_dict({"metrics": scalars, "protocol": {**knobs, **eval_params(cfg)}}, "eval_report.json")
    files = sorted(f for f in artifact_dir.iterdir() if f.is_file()) if artifact_dir and artifact_dir.is_dir() else []
    for what, reason in run.try_log_artifacts(files).items():
        log(f"warning: {what} was not logged to the tracking store ({reason}); it is in {artifact_dir}")


def evaluation_config(ckpt_cfg: RunConfig, user: RunConfig, explicit: set[str]) -> RunConfig:
    """The config an evaluation of a checkpoint runs under: the trained run's (method, backbone, seed,
    budget, data name and shape), with the user's evaluation, device and tracking settings. Keys the
    user set (``explicit``) always win; paths never come from the checkpoint: ``out_dir`` and
    ``data.data_dir`` are the user's (a checkpoint is only read, it decides nowhere to write or read)."""
    def given(section: str) -> bool:
        return any(k == section or k.startswith(section + ".") for k in explicit)

    # data: the checkpoint's, with the keys the user set (data.data_dir=... alone keeps its dataset and size)
    keys = {k.split(".", 1)[1].split(".")[0] for k in explicit if k.startswith("data.")}
    data = user.data if "data" in explicit else dataclasses.replace(
        ckpt_cfg.data, **{"data_dir": user.data.data_dir, **{k: getattr(user.data, k) for k in keys if hasattr(user.data, k)}})
    tracking = dataclasses.replace(user.tracking, experiment=user.tracking.experiment
                                   if given("tracking.experiment") else ckpt_cfg.tracking.experiment)
    train = dataclasses.replace(ckpt_cfg.train, device=user.train.device, progress=user.train.progress,
                                threads=user.train.threads)
    return dataclasses.replace(ckpt_cfg, eval=user.eval, tracking=tracking, train=train, data=data,
                               out_dir=user.out_dir)


def evaluate_target(target: str, cfg: RunConfig, dataset: ImageDataset | None = None,
                    explicit: set[str] | None = None) -> dict[str, Any]:
    """``target`` is a checkpoint path (logged to its pretraining run when known) or a
    backbone name (a random-init encoder, logged as method ``random_init``)."""
    load_plugins()
    apply_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    p = Path(target)
    if not (p.suffix == ".pt" or p.exists()):
        return random_init(cfg, target, dataset)
    method, tcfg, state = load_trained_method(p, map_location=str(device))
    cfg = evaluation_config(tcfg, cfg, set(explicit if explicit is not None else {"tracking.experiment", "data"}))
    ensure_dir(Path(cfg.out_dir))
    client(cfg.tracking.uri)
    try:
        ds = dataset or load_dataset(cfg.data)
    except DataError as e:
        if cfg.data.data_dir or not tcfg.data.data_dir:
            raise
        # paths never come from a checkpoint, but saying where it was trained saves a search
        raise DataError(f"{e} (this checkpoint was trained with data.data_dir={tcfg.data.data_dir}: pass that, or "
                        f"where the same data is on this machine)") from None
    if ds.channels != method.info.channels:
        raise CheckpointError(f"{p} was trained on {method.info.channels}-channel images; the dataset "
                              f"{ds.name} has {ds.channels}: evaluate it on data like its training data")
    name = run_name(cfg, ds)
    # the record beside the checkpoint, unless the user sends this evaluation to another experiment
    run_id = _recorded_run_id(p.parent / "run.json") if cfg.tracking.experiment == tcfg.tracking.experiment else None
    encoder = method.encoder().to(device)
    artifacts = artifact_folder(method, run_dir(cfg, ds))
    metrics = evaluate_encoder(encoder, ds, cfg, device, method.projector(), zero_shot=method.zero_shot_classifier,
                               translator=method.translator, artifact_dir=artifacts)
    params = {**flatten(cfg), "data.fingerprint": ds.fingerprint(),
              **method_config_params(method)}
    knobs = {k: v for k, v in metrics.items() if k.startswith("eval/") and not k.startswith("eval/time/")
             and k != "eval/seed"}
    existing = recorded_params(cfg.tracking.uri, run_id) if run_id else None
    changed = [k for k in conflicts(existing or {}, {**params, **knobs})
               if k.startswith(("eval.", "eval/")) or not k.startswith(NOT_RESULT)]
    if existing is not None and changed:
        # evaluated before under other knobs: the old record stays as it was; this is a new run
        log(f"{name}: evaluated before with other settings ({', '.join(changed[:3])}); "
            f"logging a new run (tag evaluation_of={run_id})")
        run = TrackedRun.evaluation_of(run_id, cfg.tracking.experiment, name, cfg.tracking.uri, params,
                                       {"command": run_tags(cfg, device.type, ds)["command"]})
    elif existing is not None:
        run = TrackedRun(cfg.tracking.experiment, name, cfg.tracking.uri, run_id=run_id)
        run.log_params({k: v for k, v in params.items() if k not in existing})
    else:
        run = TrackedRun(cfg.tracking.experiment, name, cfg.tracking.uri, params=params,
                         tags=run_tags(cfg, device.type, ds))
    with recorded(run):
        run.set_tags(dict(zip(("sslbench.config_id", "sslbench.identity"), run_identity(run.params()))))
        log_eval(run, metrics, cfg, artifacts)
        run.end("FINISHED")
    return {"run_id": run.run_id, "metrics": metrics}


def _recorded_run_id(run_json: Path) -> str | None:
    """The MLflow run a checkpoint's folder records (``run.json`` beside it), if any."""
    try:
        rid = json.loads(run_json.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return rid if isinstance(rid, str) and rid else None


def random_init(cfg: RunConfig, backbone: str, dataset: ImageDataset | None = None, resume: bool = False) -> dict[str, Any]:
    """Score a randomly initialised encoder of ``backbone`` (the floor of every leaderboard)."""
    load_plugins()
    device = resolve_device(cfg.train.device)
    cfg = dataclasses.replace(cfg, method=RANDOM_INIT, backbone=backbone, method_cfg={})
    ensure_dir(Path(cfg.out_dir))
    client(cfg.tracking.uri)
    ds = dataset or load_dataset(cfg.data)
    name = run_name(cfg, ds)
    torch.manual_seed(cfg.seed)
    encoder = build_backbone(backbone, ds.channels, ds.image_size, frames=ds.frames).to(device)   # an unknown name fails before any write
    scored_encoder(encoder, None, cfg.eval.features)                           # so does a feature kind it cannot give
    try:
        with RunDir(run_dir(cfg, ds)) as folder:
            return _random_init(cfg, encoder, ds, name, folder.path, device, resume)
    except RunBusy as e:
        log(f"{name}: skipped, another process is evaluating it ({e.owner})")
        return {"skipped": True, "config": to_dict(cfg), "owner": e.owner}


def _random_init(cfg: RunConfig, encoder: torch.nn.Module, ds: ImageDataset, name: str, folder: Path, device,
                 resume: bool) -> dict[str, Any]:
    state_path = folder / "run.json"
    fingerprint = ds.fingerprint()
    before = read_state(state_path) if resume else {}
    if before.get("evaluated") and before.get("config") == to_dict(cfg) and \
            before.get("data_fingerprint", fingerprint) == fingerprint:
        log(f"{name}: already evaluated (run {before['run_id']}); skipping")
        return before
    params = {**flatten(cfg), "data.fingerprint": fingerprint}
    run = TrackedRun(cfg.tracking.experiment, name, cfg.tracking.uri, params=params, tags=run_tags(cfg, device.type, ds))
    if before.get("run_id") and not before.get("evaluated"):
        # an earlier attempt was killed mid-evaluation (SIGKILL leaves its record RUNNING): it ends KILLED,
        # naming the record that replaces it; an evaluation is scored again from the start, not continued
        ended_killed(cfg.tracking.uri, before["run_id"], f"killed before its evaluation finished; "
                                                         f"evaluated again as run {run.run_id}")
    write_json_atomic(state_path, {"run_id": run.run_id, "config": to_dict(cfg), "evaluated": False,
                                   "data_fingerprint": fingerprint})
    with recorded(run):
        run.set_tags(dict(zip(("sslbench.config_id", "sslbench.identity"), run_identity(params))))
        t0 = time.time()
        metrics = evaluate_encoder(encoder, ds, cfg, device)
        log_eval(run, metrics, cfg)
        run.log_metrics({"eval/seconds": time.time() - t0})
        run.end("FINISHED")
    state = {"run_id": run.run_id, "config": to_dict(cfg), "evaluated": True, "metrics": metrics,
             "data_fingerprint": fingerprint}
    write_json_atomic(state_path, state)
    return state
