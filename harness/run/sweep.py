"""Sweeps: a suite expanded into self-contained run specs, handed to an executor.

A spec is one run's whole resolved config plus its kind (``pretrain`` or ``random_init``); its id is
the run's identity hash without the data's contents (:mod:`harness.core.identity`: everything that
changes the result, seed included; not the tracking store, the output folder or the thread count).
Executing a spec always means "finish this run": a finished run is skipped, an interrupted one
resumes from its checkpoint, and a spec whose config changed has another id, so it is a new run.
Resubmitting a sweep is therefore idempotent.

Executors:

* ``inprocess`` (default): the specs one after another in this process (what ``sslbench run`` does).
* ``local``: submitit's local executor, each run its own process, at most ``max_parallel`` at once.
* ``slurm``: submitit's Slurm executor, one array job (``%max_parallel``), requeued on preemption
  or timeout through the run's checkpoint (:class:`SpecJob` is ``submitit.helpers.Checkpointable``).

submitit is an optional extra (``pip install 'sslbench[cluster]'``); it is imported only here and
only when a ``local`` or ``slurm`` executor is asked for.

Every run writes its log to ``sweep.log`` in its run folder (beside its ``checkpoint.pt``), and a
marker ``<out_dir>/<experiment>/.sweep/<spec id>.json`` says where that folder is and how the
last attempt ended, which ``sslbench sweep --dry-run`` shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from harness.core.errors import ConfigError, SSLBenchError, TrainingDiverged
from harness.method.registry import RANDOM_INIT
from harness.run.naming import log, read_state, run_dir, write_json_atomic
from harness.run.suites import load_suite, run_key, suite_configs
from harness.train.config import RunConfig, from_dict, to_dict

EXECUTORS = ("inprocess", "local", "slurm")
PRETRAIN, RANDOM = "pretrain", "random_init"
LOG_NAME = "sweep.log"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    id: str                      # 12 hex digits of the run's identity (seed included, data contents not)
    kind: str                    # pretrain | random_init
    config: dict[str, Any]       # the whole resolved RunConfig (for random_init: the config it is scored under)

    @property
    def cfg(self) -> RunConfig:
        return from_dict(self.config)

    def describe(self) -> str:
        c = self.config
        what = "random init" if self.kind == RANDOM else c["method"]
        return (f"{self.id}  {what:<22} {c['backbone']:<16} {c['data'].get('label') or c['data']['name']:<14} "
                f"{c['budget']['kind']}={float(c['budget']['value']):g}  seed {c['seed']}")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "config": self.config}


def spec_id(cfg: RunConfig, kind: str) -> str:
    return run_key(cfg, floor=kind == RANDOM)


def _random_init_cfg(cfg: RunConfig) -> RunConfig:
    return dataclasses.replace(cfg, method_cfg={})


def sweep_specs(spec: str | dict[str, Any], overrides: dict[str, Any]) -> list[RunSpec]:
    """The suite's runs (methods x grid x seeds, per-method settings applied), then one random-init
    row per (backbone, seed, data) when the suite has them; duplicates (the same identity) once."""
    suite = load_suite(spec)
    out: dict[str, RunSpec] = {}
    cfgs = suite_configs(suite, overrides)
    for cfg in cfgs:
        out.setdefault(spec_id(cfg, PRETRAIN), RunSpec(spec_id(cfg, PRETRAIN), PRETRAIN, to_dict(cfg)))
    if suite.random_init:
        for cfg in cfgs:
            cfg = _random_init_cfg(cfg)
            out.setdefault(spec_id(cfg, RANDOM), RunSpec(spec_id(cfg, RANDOM), RANDOM, to_dict(cfg)))
    return list(out.values())


# ---------------------------------------------------------------- the state of a spec, for --dry-run

def marker_path(spec: RunSpec) -> Path:
    c = spec.config
    return Path(c["out_dir"]) / c["tracking"]["experiment"] / ".sweep" / f"{spec.id}.json"


def spec_status(spec: RunSpec) -> str:
    """``new``, ``finished``, ``interrupted`` (a checkpoint to resume from) or ``failed: ...``, from the
    marker and the run folder it names (no data is read)."""
    marker = read_state(marker_path(spec))
    if not marker:
        return "new"
    state = read_state(Path(marker.get("run_dir", "")) / "run.json")
    if state.get("evaluated"):
        return "finished"
    if marker.get("status", "").startswith("failed"):
        return marker["status"]
    ckpt = Path(marker.get("run_dir", "")) / "checkpoint.pt"
    return "interrupted (resumes from its checkpoint)" if ckpt.exists() else "started (no checkpoint yet)"


# ---------------------------------------------------------------- running one spec

class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()

    def isatty(self):
        return False


@contextlib.contextmanager
def _logged_to(path: Path) -> Iterator[None]:
    """The run's stderr (its progress lines and messages) also appended to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} pid {os.getpid()}\n")
        with contextlib.redirect_stderr(_Tee(sys.stderr, f)):
            yield


def run_spec(spec: RunSpec) -> dict[str, Any]:
    """Finish one spec's run: skip it when finished, resume it when interrupted, train it otherwise.

    Returns {"id", "status": "skipped" | "trained" | "failed: ...", "run_dir", "run_id"}."""
    from harness.data.sources import load_dataset
    from harness.run.evaluate import random_init
    from harness.run.pretrain import pretrain

    cfg = spec.cfg
    ds = load_dataset(cfg.data)
    folder = run_dir(dataclasses.replace(cfg, method=RANDOM_INIT) if spec.kind == RANDOM else cfg, ds)
    before = read_state(folder / "run.json")
    done_before = bool(before.get("evaluated"))
    marker = marker_path(spec)
    write_json_atomic(marker, {"id": spec.id, "run_dir": str(folder.resolve()), "status": "running",
                               "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
    status = "skipped" if done_before else "trained"
    result: dict[str, Any] = {}
    try:
        with _logged_to(folder / LOG_NAME):
            if spec.kind == RANDOM:
                result = random_init(cfg, cfg.backbone, ds, resume=True)
            else:
                result = pretrain(cfg, resume=True, dataset=ds)
        if result.get("skipped"):            # another process owns the folder right now
            status = "skipped (busy)"
        elif done_before and before.get("config", {}).get("eval") != result.get("config", {}).get("eval"):
            status = "re-evaluated"
    except TrainingDiverged as e:
        status = f"failed: {e}"
    except SSLBenchError as e:
        status = f"failed: {e}"
        raise
    finally:
        write_json_atomic(marker, {**read_state(marker), "status": status, "ended": time.time()})
    return {"id": spec.id, "status": status, "run_dir": str(folder), "run_id": result.get("run_id")}


try:   # the job object submitit pickles; requeued (resumed from its checkpoint) on preemption / timeout
    from submitit.helpers import Checkpointable as _Base
except ImportError:   # submitit not installed: the in-process executor needs none of this
    _Base = object


class SpecJob(_Base):
    """One spec as a submitit job. On a multi-task job (several GPUs of one node, or several nodes)
    submitit's environment is exported as torchrun's (RANK, WORLD_SIZE, MASTER_ADDR, ...), so the
    run is DDP exactly as under ``torchrun``. Its ``checkpoint()`` (submitit's default) resubmits the
    same spec, which resumes from the run's last checkpoint."""

    def __call__(self, spec_json: dict[str, Any]) -> dict[str, Any]:
        from harness.core import interrupts

        interrupts.install()
        if int(os.environ.get("SLURM_NTASKS", os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) or 1) > 1:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return run_spec(RunSpec(**spec_json))


# ---------------------------------------------------------------- executors

@dataclasses.dataclass
class SlurmOptions:
    partition: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    time_min: int = 240             # per run (the job is requeued from its checkpoint when it runs out)
    nodes: int = 1
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()     # shell lines before the run (module load ..., source venv/bin/activate)

    def parameters(self, max_parallel: int, job_name: str) -> dict[str, Any]:
        """submitit SlurmExecutor parameters (the names of its sbatch builder)."""
        if self.gpus_per_node < 0 or self.time_min < 1 or self.nodes < 1:
            raise ConfigError("--gpus-per-node must be >= 0, --time-min and --nodes >= 1")
        p: dict[str, Any] = {"job_name": job_name, "time": int(self.time_min), "nodes": int(self.nodes),
                             "ntasks_per_node": max(1, int(self.gpus_per_node)), "array_parallelism": int(max_parallel),
                             "signal_delay_s": 120}
        if self.gpus_per_node:
            p["gpus_per_node"] = int(self.gpus_per_node)
        for key, value in (("partition", self.partition), ("cpus_per_task", self.cpus_per_task),
                           ("account", self.account), ("qos", self.qos), ("constraint", self.constraint)):
            if value is not None:
                p[key] = value
        if self.mem_gb:
            p["mem"] = f"{int(self.mem_gb)}GB"
        if self.setup:
            p["setup"] = list(self.setup)
        return p


def _submitit():
    try:
        import submitit
    except ImportError:
        raise SSLBenchError("the local and slurm executors need submitit: pip install 'sslbench[cluster]' "
                            "(or pip install submitit)") from None
    return submitit


def jobs_folder(specs: list[RunSpec]) -> Path:
    c = specs[0].config
    return Path(c["out_dir"]) / c["tracking"]["experiment"] / ".sweep" / "jobs"


def slurm_script(specs: list[RunSpec], opts: SlurmOptions, max_parallel: int) -> str:
    """The sbatch script submitit submits for these specs (one array job), built without a cluster."""
    from submitit.slurm.slurm import _make_sbatch_string  # the builder SlurmExecutor itself uses

    _submitit()
    folder = jobs_folder(specs).resolve()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder / "%j"))])
    return _make_sbatch_string(command=command, folder=folder / "%j", map_count=len(specs),
                               **opts.parameters(max_parallel, "sslbench"))


def execute(specs: list[RunSpec], executor: str = "inprocess", max_parallel: int = 1,
            slurm: SlurmOptions | None = None, wait: bool = True, poll_s: float = 2.0) -> list[dict[str, Any]]:
    """Run every spec through ``executor``; returns one result per spec (for slurm without ``wait``: the job ids)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}'; valid choices: {', '.join(EXECUTORS)}")
    if max_parallel < 1:
        raise ConfigError(f"--max-parallel {max_parallel} must be >= 1")
    if not specs:
        return []
    t0 = time.time()
    if executor == "inprocess":
        out = []
        for i, spec in enumerate(specs):
            log(f"[{i + 1}/{len(specs)}] {spec.describe()} ({time.time() - t0:.0f}s elapsed)")
            out.append(run_spec(spec))
        return out
    submitit = _submitit()
    folder = jobs_folder(specs)
    if executor == "local":
        ex = submitit.LocalExecutor(folder=folder / "%j")
        ex.update_parameters(timeout_min=int((slurm or SlurmOptions()).time_min), tasks_per_node=1)
        return _bounded(ex, specs, max_parallel, poll_s, t0)
    opts = slurm or SlurmOptions()
    ex = submitit.SlurmExecutor(folder=folder / "%j")
    ex.update_parameters(**opts.parameters(max_parallel, "sslbench"))
    jobs = ex.map_array(SpecJob(), [s.to_json() for s in specs])
    log(f"submitted {len(jobs)} runs as Slurm array job {jobs[0].job_id.split('_')[0]} "
        f"(at most {max_parallel} at once); logs under {folder}")
    if not wait:
        return [{"id": s.id, "status": "submitted", "job_id": j.job_id} for s, j in zip(specs, jobs)]
    return [_result(s, j) for s, j in zip(specs, jobs)]


def _result(spec: RunSpec, job) -> dict[str, Any]:
    try:
        return job.result()
    except Exception as e:   # noqa: BLE001 - submitit re-raises the job's exception with its traceback as text
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "sslbench: error:" in ln or "Error" in ln), lines[-1] if lines else "")
        return {"id": spec.id, "status": f"failed: {reason.strip()[:300]}", "job_id": getattr(job, "job_id", "")}


def _bounded(ex, specs: list[RunSpec], max_parallel: int, poll_s: float, t0: float) -> list[dict[str, Any]]:
    """Submit to ``ex`` keeping at most ``max_parallel`` jobs in flight; results in spec order."""
    pending = list(enumerate(specs))
    running: dict[int, Any] = {}
    results: dict[int, dict[str, Any]] = {}
    try:
        while pending or running:
            while pending and len(running) < max_parallel:
                i, spec = pending.pop(0)
                running[i] = ex.submit(SpecJob(), spec.to_json())
                log(f"[{i + 1}/{len(specs)}] started {spec.describe()} as job {running[i].job_id} "
                    f"({time.time() - t0:.0f}s elapsed)")
            for i in [i for i, j in running.items() if j.done()]:
                results[i] = _result(specs[i], running.pop(i))
                log(f"[{i + 1}/{len(specs)}] {results[i]['status']}: {specs[i].describe()}")
            if running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for job in running.values():
            with contextlib.suppress(Exception):
                job.cancel()
        raise
    return [results[i] for i in range(len(specs))]


def summary(results: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        key = r["status"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def grid_overrides(items: list[str]) -> dict[str, list[Any]]:
    """``--grid KEY=V1,V2`` (repeatable) -> {KEY: [V1, V2]} (each value parsed as a config scalar)."""
    from harness.core.config import parse_scalar

    grid: dict[str, list[Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--grid '{item}' is not KEY=V1,V2,... (e.g. --grid budget.value=60,240)")
        key, values = item.split("=", 1)
        vals = [parse_scalar(v.strip()) for v in values.split(",") if v.strip()]
        if not key.strip() or not vals:
            raise ConfigError(f"--grid '{item}' names no key or no value (e.g. --grid backbone=cnn4,resnet18_cifar)")
        grid[key.strip()] = vals
    return grid


def write_specs(specs: list[RunSpec], path: Path) -> None:
    path.write_text("\n".join(json.dumps(s.to_json(), sort_keys=True) for s in specs) + "\n")
