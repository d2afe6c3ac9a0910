"""Evolving Losses (issue 18): the distillation term, a pretext loss and the Zipf fitness against
hand-computed cases; what the method refuses; the search writes one child MLflow run per candidate
and resumes without redoing finished trials; a SIGKILLed run resumes to an uninterrupted run's weights."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness.core.errors import ConfigError
from harness.data.video import synthetic_clips
from harness.method.contract import Batch, StepInfo
from harness.train.build import build_method, data_info
from harness.train.config import resolve, to_dict
from harness.train.trainer import Trainer
from methods.losses import distillation_l2

ZERO = {f"w_{m}_{t}": 0.0 for m in ("rgb", "flow", "gray") for t in ("recon", "order", "contrast")} | \
    {"w_distill_flow": 0.0, "w_distill_gray": 0.0}


def run_cfg(tmp_path, steps=3, **method_cfg):
    return resolve({"method": "evolving_loss", "backbone": "video_cnn_small", "data.name": "synthetic_clips",
                    "budget.kind": "steps", "budget.value": steps, "optim.batch_size": 16, "train.progress": False,
                    "train.precision": "fp32", "out_dir": str(tmp_path), "method_cfg": method_cfg})


def test_distillation_term_by_hand():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    t = torch.tensor([[0.0, 2.0], [1.0, 1.0]], requires_grad=True)
    loss = distillation_l2(s, t)
    assert loss.item() == pytest.approx((1 + 0 + 4 + 9) / 4)
    loss.backward()
    assert torch.allclose(s.grad, torch.tensor([[1.0, 0.0], [2.0, 3.0]]) * 2 / 4)
    assert t.grad is None or not t.grad.any()       # the other modality's network is the target


def test_zipf_fitness_by_hand():
    from evals.zipf import soft_assignments, zipf_kl, zipf_prior

    assert zipf_prior(3).tolist() == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    p = torch.tensor([[0.2, 0.5, 0.3]] * 4, dtype=torch.float64)          # cluster frequencies 0.2, 0.5, 0.3 -> ranked 0.5, 0.3, 0.2
    want = sum(a * math.log(a / b) for a, b in zip((0.5, 0.3, 0.2), (6 / 11, 3 / 11, 2 / 11)))
    assert zipf_kl(p) == pytest.approx(want)
    x, c = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    e = [1, math.exp(-1), math.exp(-4)]
    assert soft_assignments(x, c)[0].tolist() == pytest.approx([v / sum(e) for v in e])


def test_reconstruction_term_by_hand(tmp_path):
    """RGB reconstruction: a linear decoder regresses the clip's mean frame pooled to recon_size; with the
    decoder's weights zero its output is its bias b, so the term is mean((b - target)^2)."""
    ds = synthetic_clips(n_train=16, n_test=8, frames=4, size=16)
    cfg = run_cfg(tmp_path, **{**ZERO, "w_rgb_recon": 1.0, "modalities": ["rgb"], "recon_size": 2})
    info = data_info(ds)
    method = build_method(cfg, info)
    head = method.recon_head["rgb"]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.constant_(head.bias, 0.25)
    recipe = method.view_recipe(info).with_frames(4)
    views = recipe(ds.x_train[:8], torch.Generator().manual_seed(0), ds.mean, ds.std)
    out = method.training_step(Batch(views, torch.arange(8)), StepInfo(0, 0.0, 3, torch.Generator().manual_seed(1)))
    v = views.images[0].view(8, 4, 3, 16, 16).mean(1)                       # the clip's mean frame
    target = v.view(8, 3, 2, 8, 2, 8).mean((3, 5)).flatten(1)                # pooled to 2 x 2
    assert out["loss"].item() == pytest.approx(((0.25 - target) ** 2).mean().item(), rel=1e-5)
    assert out["loss_rgb_recon"].item() == pytest.approx(out["loss"].item())


def test_every_term_trains_and_the_search_space_is_the_weights(tmp_path):
    ds = synthetic_clips()
    cfg = run_cfg(tmp_path, steps=2)
    tr = Trainer(cfg, ds, tmp_path / "run")
    logged = []
    tr.log_fn = lambda m, s: logged.append(m)
    tr.fit()
    keys = {k for m in logged for k in m}
    terms = {f"train/loss_{m}_{t}" for m in ("rgb", "flow", "gray") for t in ("recon", "order", "contrast")}
    assert terms | {"train/loss_distill_flow", "train/loss_distill_gray"} <= keys
    space = type(tr.method).search_space(tr.method.cfg)
    assert sorted(space) == sorted(ZERO) and set(space.values()) == {(0.0, 1.0)}
    assert type(tr.method).search_space(type(tr.method).make_config({"modalities": ["rgb", "gray"]})).keys() == \
        {"w_rgb_recon", "w_rgb_order", "w_rgb_contrast", "w_gray_recon", "w_gray_order", "w_gray_contrast",
         "w_distill_gray"}


def test_refuses_images_and_image_backbones(tmp_path):
    from harness.data.sources import synthetic

    with pytest.raises(ConfigError, match="learns from video clips"):
        Trainer(run_cfg(tmp_path), synthetic(n_train=32, n_test=8, image_size=16), tmp_path / "a")
    with pytest.raises(ConfigError, match="video_cnn"):
        Trainer(dataclasses.replace(run_cfg(tmp_path), backbone="cnn4"), synthetic_clips(), tmp_path / "b")
    with pytest.raises(ConfigError, match="w_rgb_order"):
        Trainer(run_cfg(tmp_path, w_rgb_order=1.5), synthetic_clips(), tmp_path / "c")


def test_search_logs_one_child_run_per_trial_and_resumes(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    from harness.core.schema import BudgetConfig
    from harness.run.evolve import SearchSettings, evolve, first_generation, search_folder
    from harness.tracking.query import fetch_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    over = {"method": "evolving_loss", "backbone": "video_cnn_small", "data.name": "synthetic_clips",
            "budget.kind": "steps", "budget.value": 2, "optim.batch_size": 16, "train.progress": False,
            "train.precision": "fp32", "out_dir": str(tmp_path / "runs"), "tracking.uri": uri,
            "tracking.experiment": "evo", "eval.protocols": ["knn"], "eval.knn_k": [5],
            "method_cfg.modalities": ["rgb", "gray"]}
    settings = SearchSettings(BudgetConfig("steps", 2), "zipf", fitness_clips=40, clusters=4, trials=3, popsize=4,
                              screen=False)      # trial 0 (the config's weights), then CMA-ES's candidates
    res = evolve(over, settings)
    best, final = res[0]["search"], res[1]
    runs = fetch_runs(["evo"], uri, status="", file_runs=True)
    parent = runs[runs["tags.sslbench.kind"] == "evolve"]
    trials = runs[runs["tags.sslbench.kind"] == "evolve_trial"]
    assert len(parent) == 1 and parent["run_id"].iloc[0] == best["search_run_id"]
    assert len(trials) == 3 and set(trials["tags.mlflow.parentRunId"]) == {best["search_run_id"]}
    assert trials["metrics.evolve/fitness"].notna().all() and set(trials["status"]) == {"FINISHED"}
    assert best["fitness"] == min(trials["metrics.evolve/fitness"])
    assert best["baseline_fitness"] is not None                       # trial 0: the config's own weights
    row = runs[runs["run_id"] == final["run_id"]].iloc[0]               # the final run: the best weights, evaluated
    assert row["tags.mlflow.parentRunId"] == best["search_run_id"] and row["metrics.knn/top1@5"] >= 0
    assert float(row["params.method_config.w_rgb_order"]) == pytest.approx(best["weights"]["w_rgb_order"])
    space = {k: (0.0, 1.0) for k in best["weights"]}
    screen = first_generation(resolve(over), space, True)        # the screening generation: each weight alone
    assert len(screen) == 8 and screen[0]["w_rgb_order"] == 1.0 and screen[2] == {k: float(k == "w_rgb_order") for k in space}
    # a trial killed mid-training is left RUNNING: resumed, it is failed and its weights tried again
    folder, _ = search_folder(resolve(over), synthetic_clips(), settings)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="evolve", storage=JournalStorage(JournalFileBackend(str(folder / "optuna.journal"))))
    stale = study.ask({k: FloatDistribution(0, 1) for k in best["weights"]})
    res2 = evolve(over, dataclasses.replace(settings, trials=4), resume=True, search_only=True)
    study = optuna.load_study(study_name="evolve", storage=JournalStorage(JournalFileBackend(str(folder / "optuna.journal"))))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states[stale.number] == "FAIL"
    assert study.trials[-1].params == stale.params and study.trials[-1].user_attrs["retry_of"] == stale.number
    assert res2[0]["search"]["search_run_id"] == best["search_run_id"] and res2[0]["search"]["trials"] == 4
    runs = fetch_runs(["evo"], uri, status="", file_runs=True)
    assert (runs["tags.sslbench.kind"] == "evolve_trial").sum() == 4   # finished trials were not redone


DRIVER = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
from harness.run.plugins import load_plugins
load_plugins()
from harness.data.video import synthetic_clips
from harness.method.contract import Batch, StepInfo
from harness.train.config import from_dict
from harness.train.trainer import Trainer
cfg = from_dict(json.loads(sys.argv[1]))
Trainer(cfg, synthetic_clips(), sys.argv[2]).fit()
"""


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    from test_kills_pretext import _step

    cfg = dataclasses.replace(run_cfg(tmp_path, steps=12), train=dataclasses.replace(
        run_cfg(tmp_path).train, checkpoint_every_steps=1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    Trainer(cfg, synthetic_clips(), tmp_path / "warm")     # the flow cache, so both processes read one file
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(to_dict(cfg)), str(tmp_path / "killed"),
                             str(torch.get_num_threads())], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and _step(tmp_path / "killed" / "checkpoint.pt")[0] < 2 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step, finished = _step(tmp_path / "killed" / "checkpoint.pt")
    assert 2 <= step < 12 and not finished, (step, proc.stderr.read()[-500:])
    full = Trainer(cfg, synthetic_clips(), tmp_path / "full")
    full.fit()
    resumed = Trainer(cfg, synthetic_clips(), tmp_path / "killed")
    resumed.fit(resume=True)
    assert resumed.step == full.step == 12
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert not [k for k in a if not torch.equal(a[k], b[k])]
