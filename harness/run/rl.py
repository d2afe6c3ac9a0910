"""One agent run (``sslbench rl``): the run folder, the MLflow record, resume, and the final numbers.

The loop itself is ``harness.rl.agent.AgentLoop`` (beside the image trainer, not inside it); this layer
loads the method plugin (CURL), owns the run folder ``out_dir/<experiment>/<run name>/`` (a lock, the
checkpoint, ``run.json``) and records the run: params (the config, CURL's full config, the device),
episode returns and losses as they are checkpointed, and at the end ``rl/return_last`` (the mean return
of the last K training episodes), ``rl/eval_return`` (the mean of the evaluation episodes),
``rl/episodes``, ``rl/env_steps`` and ``rl/seconds``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from harness.core.config import flatten
from harness.core.device import apply_threads
from harness.core.identity import identity
from harness.rl.agent import AgentLoop, RLResult
from harness.rl.config import NOT_RESULT, RLConfig, to_dict
from harness.run.lifecycle import RunBusy, RunDir, ensure_dir, recorded
from harness.run.naming import log, read_state, write_json_atomic
from harness.run.plugins import get_method
from harness.tracking.provenance import environment_tags
from harness.tracking.runs import MetricBuffer, TrackedRun, relog_unlogged
from harness.tracking.store import client

UNLOGGED = "unlogged_metrics.jsonl"


def rl_identity(cfg: RLConfig) -> tuple[str, str]:
    """(config id without the seed, identity with it): everything in the config that changes the result."""
    params = {k: v for k, v in flatten(cfg).items() if v is not None and not k.startswith(NOT_RESULT)}
    params["kind"] = "rl"
    return identity(params)


def rl_run_name(cfg: RLConfig) -> str:
    """``rl-GAME-curl|dqn-BACKBONE-STEPSsteps-sSEED-CONFIG`` (``dqn``: curl_weight=0, the agent without CURL)."""
    arm = "curl" if cfg.curl_weight > 0 else "dqn"
    return f"rl-{cfg.game}-{arm}-{cfg.backbone}-{cfg.env_steps}steps-s{cfg.seed}-{rl_identity(cfg)[0][:6]}"


def summary(cfg: RLConfig, result: RLResult) -> dict[str, float]:
    return {"rl/return_last": result.last_mean, "rl/eval_return": result.eval_mean, "rl/episodes": result.episodes,
            "rl/env_steps": result.env_steps, "rl/seconds": result.seconds}


def train_agent(cfg: RLConfig, resume: bool = False) -> dict[str, Any]:
    """Train the agent under its env-step budget, evaluate it, record everything; a second process on the
    same run folder skips it (and says so)."""
    entry = get_method("curl")
    apply_threads(cfg.threads)
    ensure_dir(Path(cfg.out_dir))
    client(cfg.tracking.uri)                 # an unreachable or unusable store fails before any work
    name = rl_run_name(cfg)
    folder = Path(cfg.out_dir) / cfg.tracking.experiment / name
    loop = AgentLoop(cfg, entry.cls, folder)  # an unknown game or backbone fails before anything is written
    try:
        with RunDir(folder):
            return _train(cfg, loop, name, folder, resume)
    except RunBusy as e:
        log(f"{name}: skipped, another process is training it ({e.owner}; {folder})")
        return {"skipped": True, "config": to_dict(cfg), "owner": e.owner}


def _train(cfg: RLConfig, loop: AgentLoop, name: str, folder: Path, resume: bool) -> dict[str, Any]:
    state_path = folder / "run.json"
    state = read_state(state_path) if resume else {}
    if state.get("finished") and state.get("config") == to_dict(cfg):
        log(f"{name}: already finished (run {state['run_id']}); skipping")
        return state
    if resume:
        loop.restore()
    params = {**flatten(cfg), **loop.run_params()}
    config_id, ident = rl_identity(cfg)
    argv = [os.path.basename(sys.argv[0]) if i == 0 else a for i, a in enumerate(sys.argv)]
    tags = {**environment_tags(loop.device.type), "command": "sslbench " + " ".join(shlex.quote(a) for a in argv[1:]),
            "method": "curl" if cfg.curl_weight > 0 else "dqn", "game": str(cfg.game), "seed": str(cfg.seed),
            "budget": f"env_steps={cfg.env_steps}", "backbone": cfg.backbone}
    run = TrackedRun(cfg.tracking.experiment, name, cfg.tracking.uri, run_id=state.get("run_id"), params=params,
                     tags=tags if not state.get("run_id") else None)
    run.set_tags({"sslbench.config_id": config_id, "sslbench.identity": ident, "checkpoint": str(loop.checkpoint_path)})
    unlogged = folder / UNLOGGED
    if resume:
        n = relog_unlogged(run, unlogged)
        if n:
            log(f"{name}: logged the {n} metric points the last attempt kept while the store was away")
    else:
        unlogged.unlink(missing_ok=True)
    buffer = MetricBuffer(run, unlogged)
    loop.log_fn = buffer
    state = {"run_id": run.run_id, "config": to_dict(cfg), "finished": False}
    write_json_atomic(state_path, state)
    with recorded(run):
        result = loop.fit(resume=resume)
        buffer.flush(result.checkpoint)
        metrics = summary(cfg, result)
        run.log_metrics(metrics, step=result.env_steps)
        run.log_dict({"returns": result.returns, "eval_returns": result.eval_returns, "metrics": metrics},
                     "rl_returns.json")
        run.end("FINISHED")
    state.update(finished=True, checkpoint=str(result.checkpoint), metrics=metrics, eval_returns=result.eval_returns)
    write_json_atomic(state_path, state)
    return state
