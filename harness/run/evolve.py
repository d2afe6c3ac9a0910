"""``sslbench evolve``: an evolutionary search of a method's loss weights, then the final training with
the best weights and the shared evaluation (Evolving Losses, Piergiovanni, Angelova & Ryoo, 2020).

The search space is the method's ``search_space`` (``evolving_loss``: every task weight lambda_{m,t}
and distillation weight lambda_d, each in [0, 1]). The search is Optuna's CMA-ES sampler
(``optuna.samplers.CmaEsSampler``, seeded with the run's seed; Optuna's ``cmaes`` package does the
evolution strategy). The first generation is fixed: trial 0 is the config's own weights (the
un-evolved loss), then (unless ``--no-screen``) each weight alone at 1 with the others at 0; CMA-ES
then starts at the best of them with step size ``--sigma0``. Our choice, not the paper's: the terms'
scales differ by an order of magnitude (InfoNCE terms near ln(batch), distillation and reconstruction
terms below 1), so a CMA-ES started at the centre of [0, 1]^11 with a few-trial budget only tries
mixtures that the contrastive terms dominate. Each candidate is a short training (``--trial-budget``,
same seed, data and batches for every candidate) of its own, scored by a fitness:

* ``zipf`` (default; the paper's, no label read): the RGB encoder's features of ``--fitness-clips``
  TRAIN clips drawn at random (seeded), k-means into ``--clusters`` clusters, KL divergence of the
  clusters' soft frequencies from Zipf's law (``evals.zipf``; lower is better).
* ``knn_holdout`` (uses TRAIN labels, never TEST): weighted kNN top-1 (k = 20) of a stratified fifth
  of those clips against the other four fifths (higher is better). The final runs are then tagged
  ``sslbench.uses_labels`` (their loss was chosen with labels) and leaderboards mark them.

The budget: ``--trials`` candidates in all (finished ones count across resumes), and optionally
``--timeout`` seconds of trials in all (the sum of the finished trials' times; a trial started
before the limit is finished).

Records: the search is one MLflow run (tag ``sslbench.kind=evolve``; never a leaderboard row) and
every candidate a child run of it (tags ``mlflow.parentRunId``, ``sslbench.kind=evolve_trial``) with its
weights as params, its training curve and ``evolve/fitness``. The final training is an ordinary
pretraining run per seed (``harness.run.pretrain``: checkpoint, shared evaluation, a leaderboard row)
with the best weights as ``method_cfg``, tagged as a child of the search (``sslbench.evolved_by``).
All seeds' final runs share the weights (found once, at the first seed), hence one leaderboard row.

Files: ``out_dir/<experiment>/evolve-<run name>-<search id>/``: ``optuna.journal`` (Optuna's journal
storage: every trial, its weights, state and fitness, and the CMA-ES state), ``search.json`` (the
search's MLflow run), ``best.json`` (the best weights and fitness), ``trial-<weights hash>/`` (each
candidate's checkpoint).

Resume (``--resume``; without it a search starts over): finished trials are never redone (Optuna's
storage holds them); a trial killed mid-training (left RUNNING) is marked failed, its MLflow run ends
KILLED, and the same weights are tried again, continuing from that trial's last checkpoint; the
sampler's later candidates may differ from an uninterrupted search's (its random state is not
stored, only its trials). Finished final runs are skipped, interrupted ones resume from their
checkpoints, as ``sslbench run --resume`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from evals.features import extract_features
from harness.core.config import flatten
from harness.core.device import apply_threads, resolve_device, resolve_precision
from harness.core.errors import ConfigError
from harness.core.schema import BudgetConfig
from harness.data.dataset import ImageDataset, stratified_take
from harness.data.sources import load_dataset
from harness.run.evaluate import random_init
from harness.run.lifecycle import RunBusy, RunDir, ensure_dir, recorded
from harness.run.naming import LABELS_TAG, log, read_state, run_name, run_tags, write_json_atomic
from harness.run.plugins import get_method
from harness.run.pretrain import pretrain
from harness.run.suites import load_suite, run_key, suite_configs
from harness.tracking.runs import KIND_TAG, PARENT_TAG, TrackedRun, ended_killed, tag_run
from harness.tracking.store import client
from harness.train.config import RunConfig, to_dict
from harness.train.trainer import Trainer

FITNESS = {"zipf": "minimize", "knn_holdout": "maximize"}
SEARCH_KIND, TRIAL_KIND = "evolve", "evolve_trial"
STUDY = "evolve"


@dataclasses.dataclass
class SearchSettings:
    """What a search is (its identity: the folder and the Optuna study), and its budget (not identity:
    a search resumed with more trials or a longer timeout continues the same study)."""

    trial_budget: BudgetConfig = dataclasses.field(default_factory=lambda: BudgetConfig("steps", 100.0))
    fitness: str = "zipf"
    fitness_clips: int = 1000
    clusters: int = 10
    zipf_s: float = 1.0
    popsize: int | None = None       # CMA-ES's population (None: its default, 4 + 3 ln(dimensions))
    # CMA-ES's initial step size: 0.3 of the [0, 1] range (Optuna's default, range / 6, keeps a search of a
    # few generations near the centre, 0.5 for every weight, where it never tries to drop a task)
    sigma0: float = 0.3
    screen: bool = True              # the first generation tries each weight alone (CMA-ES starts at the best)
    trials: int = 16                 # budget
    timeout: float | None = None     # budget: seconds of finished trials in all

    def __post_init__(self):
        if self.fitness not in FITNESS:
            raise ConfigError(f"--fitness must be one of {', '.join(FITNESS)}, got '{self.fitness}'")
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if self.fitness_clips < max(2 * self.clusters, 25):
            raise ConfigError(f"--fitness-clips={self.fitness_clips} is too few for {self.clusters} clusters; use at "
                              f"least {max(2 * self.clusters, 25)}")
        if self.clusters < 2:
            raise ConfigError(f"--clusters must be at least 2, got {self.clusters}")
        if self.popsize is not None and self.popsize < 2:
            raise ConfigError(f"--popsize must be at least 2, got {self.popsize}")
        if not 0 < self.sigma0 <= 1:
            raise ConfigError(f"--sigma0 must be in (0, 1], got {self.sigma0}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"--timeout must be positive seconds, got {self.timeout}")

    def identity(self) -> dict[str, Any]:
        return {"evolve.trial_budget": self.trial_budget.text, "evolve.fitness": self.fitness,
                "evolve.fitness_clips": self.fitness_clips, "evolve.clusters": self.clusters,
                "evolve.zipf_s": self.zipf_s, "evolve.popsize": self.popsize or 0, "evolve.sigma0": self.sigma0,
                "evolve.screen": self.screen}


def weights_of(cfg: RunConfig, space: dict[str, tuple[float, float]]) -> dict[str, float]:
    """The config's current value of every searched field (its method config with the overrides)."""
    mcfg = get_method(cfg.method).cls.make_config(cfg.method_cfg)
    return {k: float(getattr(mcfg, k)) for k in space}


def with_weights(cfg: RunConfig, weights: dict[str, float]) -> RunConfig:
    return dataclasses.replace(cfg, method_cfg={**cfg.method_cfg, **{k: float(v) for k, v in weights.items()}})


def search_space(cfg: RunConfig) -> dict[str, tuple[float, float]]:
    entry = get_method(cfg.method)
    space = entry.cls.search_space(entry.cls.make_config(cfg.method_cfg))
    if not space:
        raise ConfigError(f"method '{cfg.method}' has no loss weights to search (its search_space is empty); "
                          "sslbench evolve is for methods such as evolving_loss, train others with sslbench run")
    return space


def search_folder(cfg: RunConfig, ds: ImageDataset, settings: SearchSettings) -> tuple[Path, str]:
    """The search's folder and name: the base run's name (its config before the search, seed included)
    and 6 hex digits of the search's identity."""
    key = hashlib.sha256(json.dumps(settings.identity(), sort_keys=True).encode()).hexdigest()[:6]
    name = f"evolve-{run_name(cfg, ds)}-{key}"
    return Path(cfg.out_dir) / cfg.tracking.experiment / name, name


# ----------------------------------------------------------------------------- fitness

def fitness_sample(ds: ImageDataset, settings: SearchSettings, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The TRAIN clips a candidate is scored on (indices), and for ``knn_holdout`` which of them are queries.
    ``zipf`` draws them uniformly at random (no label read); ``knn_holdout`` stratified by class."""
    n = min(settings.fitness_clips, len(ds.y_train))
    if settings.fitness == "zipf":
        g = torch.Generator().manual_seed(seed)
        return torch.sort(torch.randperm(len(ds.y_train), generator=g)[:n]).values, None
    idx = stratified_take(ds.y_train, n, seed)
    query = torch.zeros(len(idx), dtype=torch.bool)
    query[stratified_take(ds.y_train[idx], max(1, len(idx) // 5), seed + 1)] = True
    return idx, query


def fitness(encoder: torch.nn.Module, ds: ImageDataset, settings: SearchSettings, sample, device, precision: str,
            seed: int) -> float:
    """The candidate's score on TRAIN clips only (see the module doc)."""
    idx, query = sample
    feats = extract_features(encoder, ds.x_train[idx], ds.mean, ds.std, batch_size=256, device=device,
                             precision=precision, progress=False)
    if settings.fitness == "zipf":
        from evals.zipf import zipf_fitness

        return zipf_fitness(feats, settings.clusters, settings.zipf_s, seed)
    from evals.knn import knn_eval

    y = ds.y_train[idx]
    k = min(20, int((~query).sum()))
    res = knn_eval(feats[~query], y[~query], feats[query], y[query], ks=(k,), num_classes=ds.num_classes,
                   backend="torch")
    return res[f"knn/top1@{k}"]


# ----------------------------------------------------------------------------- the search

def _optuna():
    try:
        import optuna
        from optuna.samplers import CmaEsSampler
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
    except ImportError:
        raise ConfigError("sslbench evolve needs Optuna and cmaes: pip install optuna cmaes (or 'sslbench[video]')") from None
    try:
        import cmaes  # noqa: F401  (Optuna's CMA-ES sampler imports it when it first samples)
    except ImportError:
        raise ConfigError("sslbench evolve's CMA-ES sampler needs the package cmaes: pip install cmaes") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna, CmaEsSampler, JournalStorage, JournalFileBackend


def _trial_dir(folder: Path, weights: dict[str, float]) -> Path:
    key = hashlib.sha256(json.dumps({k: round(v, 12) for k, v in sorted(weights.items())}).encode()).hexdigest()[:10]
    return folder / f"trial-{key}"


def first_generation(cfg: RunConfig, space: dict[str, tuple[float, float]], screen: bool) -> list[dict[str, float]]:
    """The candidates before CMA-ES: the config's own weights, then (``screen``) each weight alone at its
    upper bound with the others at their lower bound (one term of the loss at a time)."""
    out = [weights_of(cfg, space)]
    if screen:
        out += [{j: (hi if j == k else lo) for j, (lo, hi) in space.items()} for k in space]
    return out


def search(cfg: RunConfig, ds: ImageDataset, settings: SearchSettings, resume: bool = True) -> dict[str, Any]:
    """Run (or continue) the search for ``cfg`` (its seed is the search's); returns best.json's content."""
    space = search_space(cfg)
    folder, name = search_folder(cfg, ds, settings)
    try:
        with RunDir(folder):
            return _search(cfg, ds, settings, space, folder, name, resume)
    except RunBusy as e:
        raise ConfigError(f"{name}: another process is running this search ({e.owner}); wait for it, or stop it") from None


def _search(cfg: RunConfig, ds: ImageDataset, settings: SearchSettings, space: dict[str, tuple[float, float]],
            folder: Path, name: str, resume: bool) -> dict[str, Any]:
    optuna, CmaEsSampler, JournalStorage, JournalFileBackend = _optuna()
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    uri = cfg.tracking.uri
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    journal = folder / "optuna.journal"
    if not resume and journal.exists():
        journal.unlink()          # without --resume a search starts over (its old trials are discarded)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    direction = FITNESS[settings.fitness]
    study = optuna.create_study(study_name=STUDY, storage=storage, direction=direction, load_if_exists=True,
                                sampler=optuna.samplers.RandomSampler(seed=cfg.seed))   # replaced by CMA-ES below
    state = read_state(folder / "search.json") if resume else {}
    params = {**flatten(cfg), **settings.identity(), "data.fingerprint": ds.fingerprint(),
              "evolve.space": ",".join(space)}
    tags = {**run_tags(cfg, device.type, ds), KIND_TAG: SEARCH_KIND,
            **({LABELS_TAG: "true"} if settings.fitness == "knn_holdout" else {})}   # scored with TRAIN labels
    run = TrackedRun(cfg.tracking.experiment, name, uri, run_id=state.get("run_id"), params=params,
                     tags=None if state.get("run_id") else tags)
    write_json_atomic(folder / "search.json", {"run_id": run.run_id, "config": to_dict(cfg), **settings.identity()})
    distributions = {k: FloatDistribution(lo, hi) for k, (lo, hi) in space.items()}
    with recorded(run):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):   # killed mid-trial: tried again
            if t.user_attrs.get("mlflow_run_id"):
                ended_killed(uri, t.user_attrs["mlflow_run_id"], f"killed mid-trial; trial {t.number} is retried "
                                                                 "with the same weights from its checkpoint")
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            log(f"{name}: trial {t.number} was killed mid-training; retrying its weights")
        if not study.trials:      # the first generation: the config's own weights (the un-evolved loss), then screening
            for k, w in enumerate(first_generation(cfg, space, settings.screen)):
                study.enqueue_trial(w, user_attrs={"baseline": k == 0, "screen": True})
        sample = fitness_sample(ds, settings, cfg.seed)

        def finished():
            return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

        while len(finished()) < settings.trials:
            spent = sum(float(t.user_attrs.get("seconds", 0.0)) for t in finished())
            if settings.timeout is not None and spent >= settings.timeout:
                log(f"{name}: the search's time budget ({settings.timeout:g} s of trials) is spent after "
                    f"{len(finished())} trials")
                break
            if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) and \
                    not isinstance(study.sampler, CmaEsSampler):
                # CMA-ES from the best of the first generation (deterministic from the stored trials, so a
                # resumed search starts it at the same point); its state lives in the trials from then on
                start = [t for t in finished() if t.user_attrs.get("screen")]
                best = (min if direction == "minimize" else max)(start, key=lambda t: t.value)
                with warnings.catch_warnings():   # x0 / sigma0: deprecated since Optuna 4.9, kept until 6 (pinned < 6)
                    warnings.simplefilter("ignore", FutureWarning)
                    study.sampler = CmaEsSampler(x0={k: float(best.params[k]) for k in space}, sigma0=settings.sigma0,
                                                 seed=cfg.seed, popsize=settings.popsize, n_startup_trials=0,
                                                 warn_independent_sampling=False)
            trial = study.ask(distributions)
            weights = {k: float(trial.params[k]) for k in space}
            value, seconds = _trial(cfg, ds, settings, folder, name, run.run_id, trial, weights, sample, device,
                                    precision, resume)
            trial.set_user_attr("seconds", seconds)
            study.tell(trial, value)
            log(f"{name}: trial {trial.number}: fitness {value:.4f} ({settings.fitness}) in {seconds:.0f} s")
        done = finished()
        if not done:
            raise ConfigError(f"{name}: no trial finished within the search's budget; raise --timeout or --trials")
        best = study.best_trial
        out = {"weights": {k: float(best.params[k]) for k in space}, "fitness": float(best.value),
               "fitness_kind": settings.fitness, "direction": direction, "trial": best.number,
               "trials": len(done), "seconds": sum(float(t.user_attrs.get("seconds", 0.0)) for t in done),
               "search_run_id": run.run_id, "folder": str(folder),
               "baseline_fitness": next((float(t.value) for t in done if t.user_attrs.get("baseline")), None)}
        write_json_atomic(folder / "best.json", out)
        run.log_metrics({"evolve/best_fitness": out["fitness"], "evolve/trials": out["trials"],
                         "evolve/seconds": out["seconds"],
                         **({"evolve/baseline_fitness": out["baseline_fitness"]} if out["baseline_fitness"] is not None
                            else {})})
        run.log_dict(out, "best.json")
        run.end("FINISHED")
    return out


def _trial(cfg: RunConfig, ds: ImageDataset, settings: SearchSettings, folder: Path, name: str, parent: str, trial,
           weights: dict[str, float], sample, device, precision: str, resume: bool) -> tuple[float, float]:
    """One candidate: a short training with ``weights`` in its own folder (continued from its checkpoint
    when a killed attempt left one), its fitness, one child MLflow run."""
    tcfg = dataclasses.replace(with_weights(cfg, weights), budget=settings.trial_budget)
    tdir = _trial_dir(folder, weights)
    child = TrackedRun(cfg.tracking.experiment, f"{name}/trial-{trial.number}", cfg.tracking.uri,
                       params={**{f"method_cfg.{k}": v for k, v in weights.items()}, "evolve.trial": trial.number,
                               "budget.kind": tcfg.budget.kind, "budget.value": tcfg.budget.value, "seed": cfg.seed,
                               "method": cfg.method, "backbone": cfg.backbone},
                       tags={PARENT_TAG: parent, KIND_TAG: TRIAL_KIND, "trial_folder": str(tdir)})
    trial.set_user_attr("mlflow_run_id", child.run_id)
    points: list[tuple[dict[str, float], int]] = []
    with recorded(child):
        t0 = time.perf_counter()
        trainer = Trainer(tcfg, ds, tdir, log_fn=lambda m, s: points.append((m, s)))
        result = trainer.fit(resume=resume and (tdir / "checkpoint.pt").exists())
        value = fitness(trainer.method.encoder(), ds, settings, sample, device, precision, cfg.seed)
        seconds = time.perf_counter() - t0
        child.log_points(points)
        child.log_metrics({"evolve/fitness": value, "evolve/seconds": seconds, "pretrain/steps": result.steps,
                           "pretrain/final_loss": result.final_loss, "pretrain/seconds": result.seconds})
        child.end("FINISHED")
    return value, seconds


# ----------------------------------------------------------------------------- the whole measurement

def evolve(overrides: dict[str, Any], settings: SearchSettings, suite: str | None = None, seeds: list[int] | None = None,
           resume: bool = False, search_only: bool = False) -> list[dict[str, Any]]:
    """Search, then train the final runs (every seed) with the best weights, then the random-init rows.

    Without ``suite`` the run is the overrides' (as ``sslbench pretrain``), at ``seeds`` (default: its seed);
    with one, the suite's runs (``common`` < ``per_method`` < overrides) and its random-init rows. One search
    per configuration (seeds aside), at its first seed."""
    if suite:
        s = load_suite(suite)
        if seeds:
            s.seeds = list(seeds)
        cfgs, floor = suite_configs(s, overrides), s.random_init
    else:
        from harness.train.config import resolve

        base = resolve(overrides)
        cfgs = [dataclasses.replace(base, seed=sd) for sd in (seeds or [base.seed])]
        floor = False
    groups: dict[str, list[RunConfig]] = {}
    for c in cfgs:
        search_space(c)              # a method without weights to search is refused before any work
        groups.setdefault(json.dumps(to_dict(dataclasses.replace(c, seed=0)), sort_keys=True), []).append(c)
    apply_threads(cfgs[0].train.threads)
    datasets: dict[str, ImageDataset] = {}
    results = []
    for group in groups.values():
        first = group[0]
        key = json.dumps(to_dict(first.data), sort_keys=True)
        if key not in datasets:
            datasets[key] = load_dataset(first.data)      # bad data is refused before the store is touched
        ds = datasets[key]
        ensure_dir(Path(first.out_dir))
        client(first.tracking.uri)
        log(f"evolve: {first.method} on {ds.name}: searching {len(search_space(first))} weights with CMA-ES "
            f"({settings.trials} trials of {settings.trial_budget.text}, fitness {settings.fitness}, seed {first.seed})")
        best = search(first, ds, settings, resume=resume)
        results.append({"search": best})
        base = "-" if best["baseline_fitness"] is None else f"{best['baseline_fitness']:.4f}"
        log(f"evolve: best fitness {best['fitness']:.4f} (trial {best['trial']}; the config's own weights: {base}); "
            "weights " + ", ".join(f"{k}={v:.3f}" for k, v in best["weights"].items()))
        if search_only:
            continue
        for c in group:
            final = with_weights(c, best["weights"])
            state = pretrain(final, resume=resume, dataset=ds)
            if state.get("run_id"):
                tags = {PARENT_TAG: best["search_run_id"], "sslbench.evolved_by": best["search_run_id"],
                        "sslbench.search_fitness": settings.fitness}
                if settings.fitness == "knn_holdout":    # the weights were chosen with TRAIN labels
                    tags[LABELS_TAG] = "true"
                tag_run(c.tracking.uri, state["run_id"], tags)
            results.append(state)
        if floor:
            done = set()
            for c in group:
                if run_key(c, floor=True) not in done:
                    done.add(run_key(c, floor=True))
                    log(f"random-init baseline: {c.backbone} seed {c.seed}")
                    results.append(random_init(c, c.backbone, ds, resume=resume))
    return results
