import math
from dataclasses import dataclass

import pytest
import torch

from harness.core.device import bf16_supported
from harness.core.errors import CheckpointError, ConfigError, TrainingDiverged
from harness.core.schedules import warmup_cosine
from harness.data.views import ViewRecipe
from harness.method.contract import Method
from harness.method.registry import register_method
from harness.train.budget import total_steps
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer

BASE = {"method": "simclr", "backbone": "cnn4", "data.name": "synthetic", "optim.batch_size": 32,
        "train.progress": False, "train.precision": "fp32", "method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 32}


def cfg(**kw):
    return resolve({**BASE, **{k.replace("__", "."): v for k, v in kw.items()}})


@pytest.mark.parametrize("kind, value, expected", [("steps", 7, 7), ("epochs", 2, 16), ("samples", 100, 4)])
def test_budget_to_steps(synthetic, kind, value, expected):
    c = cfg(budget__kind=kind, budget__value=value)
    assert total_steps(c, len(synthetic.x_train)) == expected


@pytest.mark.parametrize("kind, value", [("steps", 3), ("samples", 96), ("epochs", 0.25), ("seconds", 1.5)])
def test_every_budget_completes(synthetic, tmp_path, kind, value):
    c = cfg(budget__kind=kind, budget__value=value)
    lrs = []
    tr = Trainer(c, synthetic, tmp_path, log_fn=lambda m, s: lrs.append(m["train/lr"]))
    r = tr.fit()
    assert tr.progress() >= 1.0 and r.steps >= 1 and math.isfinite(r.final_loss)
    if kind != "seconds":
        assert r.steps == total_steps(c, 256)
    assert r.checkpoint.exists()


def test_schedule_is_a_function_of_progress():
    assert warmup_cosine(0.0, 0.1, 1.0) == 0.0
    assert warmup_cosine(0.05, 0.1, 1.0) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1, 1.0) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1, 1.0) == pytest.approx(0.0)


def test_steps_budget_must_be_whole(synthetic, tmp_path):
    with pytest.raises(ConfigError, match="whole number"):
        Trainer(cfg(budget__kind="steps", budget__value=2.5), synthetic, tmp_path)


@dataclass
class _NaNConfig:
    at_step: int = 2


@register_method("_nan_test", family="test", paper="none")
class _NaNMethod(Method):
    Config = _NaNConfig

    def __init__(self, backbone, cfg, info):
        super().__init__(backbone, cfg, info)

    def view_recipe(self, info):
        return ViewRecipe.light(info.image_size)

    def training_step(self, batch, step):
        loss = self.backbone(batch.views.images[0]).pow(2).mean()
        return {"loss": loss * float("nan") if step.step >= self.cfg.at_step else loss}


def test_nan_guard_stops_with_clear_error(synthetic, tmp_path):
    c = resolve({**{k: v for k, v in BASE.items() if not k.startswith("method_cfg")}, "method": "_nan_test",
                 "budget.kind": "steps", "budget.value": 10, "train.checkpoint_every_steps": 1})
    tr = Trainer(c, synthetic, tmp_path)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2"):
        tr.fit()
    # the last checkpoint (step 2) is intact and finite
    method, _, state = load_trained_method(tmp_path / "checkpoint.pt")
    assert state["step"] == 2 and all(torch.isfinite(p).all() for p in method.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_in_process_equals_uninterrupted(synthetic, tmp_path, precision):
    """bf16 on CPU also exercises the GEMM weight gradient of the small-map convs (cnn4 at 16 px)."""
    if precision == "bf16" and not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 support")
    c = cfg(budget__kind="steps", budget__value=6, train__precision=precision)
    full = Trainer(c, synthetic, tmp_path / "a")
    full.fit()
    part = Trainer(c, synthetic, tmp_path / "b")
    part.fit(stop_after=3)  # stop early, as a kill after the step-3 checkpoint would
    resumed = Trainer(c, synthetic, tmp_path / "b")
    resumed.fit(resume=True)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_config(synthetic, tmp_path):
    Trainer(cfg(budget__kind="steps", budget__value=2), synthetic, tmp_path).fit()
    other = Trainer(cfg(budget__kind="steps", budget__value=2, seed=1), synthetic, tmp_path)
    with pytest.raises(CheckpointError, match="seed"):
        other.fit(resume=True)


def test_checkpoint_with_pickle_payload_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/sslbench_ckpt_pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, p)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_trained_method(p)
    assert not os.path.exists("/tmp/sslbench_ckpt_pwned")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_trained_method(tmp_path / "trunc.pt")


def test_seconds_budget_progress_bar_survives_a_long_last_step(synthetic, tmp_path):
    """The main job once crashed in tqdm when the last step overshot a seconds budget."""
    c = cfg(budget__kind="seconds", budget__value=1.0, train__progress=True)
    tr = Trainer(c, synthetic, tmp_path)
    bar = tr._bar()
    bar.bar.mininterval = 0  # refresh on every update, as a slow step does
    bar.update(10, 0.6, 0.6, 1.0, 32)
    bar.update(11, 2.3, 1.7, 1.0, 32)  # overshoots the 1 s budget
    assert bar.bar.n == pytest.approx(1.0)
    bar.close()


def test_flops_budget_measures_the_first_step_and_runs_floor_budget_over_step_flops(synthetic, tmp_path):
    from harness.train.config import resolve
    from harness.train.trainer import Trainer

    base = {"method": "simclr", "backbone": "cnn4", "data.name": "synthetic", "optim.batch_size": 32,
            "train.progress": False, "train.precision": "fp32", "budget.kind": "flops"}
    tr = Trainer(resolve({**base, "budget.value": 1.0}), synthetic, tmp_path / "a")
    assert tr.fit().steps == 1                      # less than one step's FLOPs: one step
    fps = tr.flops_per_step
    assert fps > 1e8                                # cnn4 forward + backward on 2 x 32 views of 16 px
    cfg = resolve({**base, "budget.value": 3.5 * fps})
    tr2 = Trainer(cfg, synthetic, tmp_path / "b")
    res = tr2.fit()
    assert res.steps == 3 and tr2.flops_per_step == fps and tr2.progress() == 1.0
    assert cfg.budget.label.endswith("flops") and "+" not in cfg.budget.label


def test_threads_none_is_torchs_default_even_after_a_run_that_set_one():
    # a run with train.threads=None in a process where an earlier run set 1 thread must not inherit it:
    # the thread count changes reduction order, so results (the kill test compares bit for bit)
    from harness.core import device

    before = torch.get_num_threads()
    try:
        device.apply_threads(1)
        assert torch.get_num_threads() == 1
        device.apply_threads(None)
        assert torch.get_num_threads() == device._DEFAULT_THREADS
    finally:
        torch.set_num_threads(before)
