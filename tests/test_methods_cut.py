"""CUT (issue 18): PatchNCE on a 2x2 feature map against a hand computation, the GAN objectives, the
trainer's multi-optimiser hook (phases in order, each optimiser its own parameters and state, the LR
schedule on both, checks), CUT's step and its networks, and SIGKILL + resume = uninterrupted."""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from harness.core.errors import ConfigError
from harness.data.domains import select_domains
from harness.data.sources import synthetic
from harness.data.views import ViewRecipe
from harness.method.contract import Method, OptimDefaults, OptimPhase
from harness.method.registry import METHODS, register_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import gan_loss, patch_nce

TINY = {"backbone": "cut_encoder_small", "method_cfg.nce_layers": [0, 4, 8, 12], "method_cfg.num_patches": 8,
        "method_cfg.head_dim": 16, "method_cfg.decoder_blocks": 1, "method_cfg.ndf": 8, "method_cfg.d_layers": 2}


def run_cfg(steps=4, **extra):
    over = {"method": "cut", "data.name": "synthetic", "data.domains": ["0", "1"], "budget.kind": "steps",
            "budget.value": steps, "optim.batch_size": 8, "optim.lr": 2e-4, "train.progress": False,
            "train.precision": "fp32", **TINY}
    over.update({k.replace("__", "."): v for k, v in extra.items()})
    return resolve(over)


def two_domains(n_train=64, n_test=16):
    return select_domains(synthetic(n_train=n_train, n_test=n_test, image_size=16), ["0", "1"])


# ---------------------------------------------------------------------------- the losses
def test_patch_nce_on_a_2x2_feature_map_equals_the_hand_computation():
    # one image, a 2x2 map of 2-d features (4 locations, row-major): the output's features q, the input's k
    q = torch.tensor([[[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, -1.0]]])
    k = torch.tensor([[[1.0, 0.0], [0.0, 5.0], [2.0, 2.0], [0.0, -1.0]]])
    tau = 0.5
    unit = [[1, 0], [0, 1], [1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(2), -1 / math.sqrt(2)]]
    unit_k = [[1, 0], [0, 1], [1 / math.sqrt(2), 1 / math.sqrt(2)], [0, -1]]
    want = 0.0
    for i in range(4):   # location i: positive = the input's location i, negatives = its other 3 locations
        s = [sum(a * b for a, b in zip(unit[i], unit_k[j])) / tau for j in range(4)]
        want += -math.log(math.exp(s[i]) / sum(math.exp(v) for v in s))
    want /= 4
    got = patch_nce(q, k, tau)
    assert got.item() == pytest.approx(want, abs=1e-6)
    # negatives come from the same image only: a second image leaves the first's term unchanged (mean of the two)
    other = torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(0))
    both = patch_nce(torch.cat([q, other]), torch.cat([k, other.flip(1)]), tau)
    assert both.item() == pytest.approx((want + patch_nce(other, other.flip(1), tau).item()) / 2, abs=1e-6)
    # the input side is a fixed target: no gradient reaches it
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    patch_nce(qg, kg, tau).backward()
    assert kg.grad is None and qg.grad.abs().sum() > 0


def test_gan_objectives_equal_their_formulas():
    d = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    assert gan_loss(d, True, "lsgan").item() == pytest.approx(((0.5 - 1) ** 2 + 4 + 1 + 1) / 4)
    assert gan_loss(d, False, "lsgan").item() == pytest.approx((0.25 + 1 + 4 + 0) / 4)
    sp = [math.log1p(math.exp(v)) for v in (-0.5, 1.0, -2.0, 0.0)]     # softplus(-D) for real
    assert gan_loss(d, True, "nonsaturating").item() == pytest.approx(sum(sp) / 4)
    with pytest.raises(ValueError, match="unknown GAN mode"):
        gan_loss(d, True, "wgan")


# ---------------------------------------------------------------------------- the multi-optimiser hook
@dataclass
class ToyCfg:
    pass


class TwoPhaseToy(Method):
    """Phase "first" trains ``a`` (and the backbone) on mean(a(f(x)))^2; phase "second" trains ``b`` towards
    a's current weights (so it must see a after a's step), with its own declared optimiser."""

    Config = ToyCfg
    optim = OptimDefaults("sgd", base_lr=0.1 * 256 / 8, weight_decay=0.0, momentum=0.0)

    def __init__(self, backbone, cfg, info):
        super().__init__(backbone, cfg, info)
        self.a = nn.Linear(backbone.num_features, 1)
        self.b = nn.Parameter(torch.zeros(backbone.num_features))
        self.seen_a: list[torch.Tensor] = []

    def view_recipe(self, info):
        return ViewRecipe.simclr(info.image_size, n=1)

    def optimizer_phases(self):
        return [OptimPhase("first", self.param_groups(self.backbone, self.a)),
                OptimPhase("second", [{"params": [self.b]}], OptimDefaults("adamw", base_lr=0.05 * 256 / 8,
                                                                            weight_decay=0.0))]

    def training_step(self, batch, step):
        if step.phase == "first":
            return {"loss": self.a(self.backbone(batch.views.images[0])).mean() ** 2}
        self.seen_a.append(self.a.weight.detach().clone().flatten())
        return {"loss": (self.b - self.a.weight.detach().flatten()).pow(2).sum(), "b_norm": self.b.norm().detach()}


@pytest.fixture
def toy():
    register_method("two_phase_toy", family="applications", paper="test")(TwoPhaseToy)
    yield
    METHODS._items.pop("two_phase_toy", None)


def test_phases_step_in_order_each_with_its_own_optimiser_and_schedule(toy, tmp_path):
    cfg = resolve({"method": "two_phase_toy", "data.name": "synthetic", "budget.kind": "steps", "budget.value": 6,
                   "optim.batch_size": 8, "optim.warmup": 0.0, "train.progress": False, "train.precision": "fp32"})
    tr = Trainer(cfg, synthetic(n_train=32, n_test=8, image_size=16), tmp_path)
    assert [type(o).__name__ for o in tr.optimizers] == ["SGD", "AdamW"]
    assert [o.lr for o in tr.phase_optims] == pytest.approx([0.1, 0.05])
    first = {id(p) for g in tr.optimizers[0].param_groups for p in g["params"]}
    assert id(tr.method.b) not in first and id(tr.method.a.weight) in first
    logs = []
    tr.log_fn = lambda m, s: logs.append(m)
    a_before = tr.method.a.weight.detach().clone().flatten()
    tr.fit(stop_after=1)
    # phase "second" ran after "first" had stepped: it saw a's updated weights, not the initial ones
    assert not torch.equal(tr.method.seen_a[0], a_before) and torch.equal(tr.method.seen_a[0], tr.method.a.weight.flatten())
    assert tr.method.a.weight.grad is None      # every gradient is zeroed at each phase's start
    tr.fit()
    # the LR schedule (cosine over progress) applies to both optimisers, from their own base LRs
    lrs = [g["lr"] for o in tr.optimizers for g in o.param_groups[:1]]
    factor = lrs[0] / 0.1
    assert 0 < factor < 1 and lrs[1] == pytest.approx(0.05 * factor)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert sorted(state["optimizer"]) == ["first", "second"] and state["optimizer"]["second"]["state"]
    assert {"train/loss_first", "train/loss_second", "train/b_norm"} <= set(logs[-1])
    assert logs[-1]["train/loss"] == pytest.approx(logs[-1]["train/loss_first"] + logs[-1]["train/loss_second"])
    params = tr.run_params()
    assert params["optim.effective.second.name"] == "adamw" and params["optim.effective.name"] == "sgd"


def test_phase_resume_from_a_checkpoint_equals_uninterrupted(toy, tmp_path):
    cfg = resolve({"method": "two_phase_toy", "data.name": "synthetic", "budget.kind": "steps", "budget.value": 6,
                   "optim.batch_size": 8, "train.progress": False, "train.precision": "fp32"})
    ds = synthetic(n_train=32, n_test=8, image_size=16)
    full = Trainer(cfg, ds, tmp_path / "full")
    full.fit()
    part = Trainer(cfg, ds, tmp_path / "part")
    part.fit(stop_after=3)
    resumed = Trainer(cfg, ds, tmp_path / "part")
    resumed.fit(resume=True)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (torch.load(p / "checkpoint.pt", weights_only=True)["optimizer"] for p in (tmp_path / "full", tmp_path / "part"))
    assert torch.equal(sa["second"]["state"][0]["exp_avg"], sb["second"]["state"][0]["exp_avg"])


def test_phases_that_share_or_miss_a_parameter_are_refused(toy, tmp_path):
    cfg = resolve({"method": "two_phase_toy", "data.name": "synthetic", "budget.kind": "steps", "budget.value": 1,
                   "optim.batch_size": 8, "train.progress": False})
    ds = synthetic(n_train=32, n_test=8, image_size=16)
    orig = TwoPhaseToy.optimizer_phases
    try:
        TwoPhaseToy.optimizer_phases = lambda self: [OptimPhase("x", [{"params": [self.b]}]),
                                                     OptimPhase("y", [{"params": [self.b]}])]
        with pytest.raises(ValueError, match="phases 'x' and 'y'"):
            Trainer(cfg, ds, tmp_path)
        TwoPhaseToy.optimizer_phases = lambda self: [OptimPhase("x", [{"params": [self.b]}]),
                                                     OptimPhase("y", self.param_groups(self.a))]
        with pytest.raises(ValueError, match="in no optimiser phase"):
            Trainer(cfg, ds, tmp_path)
    finally:
        TwoPhaseToy.optimizer_phases = orig


# ---------------------------------------------------------------------------- CUT
def test_cut_trains_discriminator_then_generator_and_translates(tmp_path):
    ds = two_domains()
    tr = Trainer(run_cfg(steps=3), ds, tmp_path)
    assert [ph.name for ph in tr.phases] == ["discriminator", "generator"]
    d_params = {id(p) for p in tr.method.discriminator.parameters()}
    assert {id(p) for g in tr.optimizers[0].param_groups for p in g["params"]} == d_params
    assert not d_params & {id(p) for g in tr.optimizers[1].param_groups for p in g["params"]}
    assert tuple(tr.optimizers[0].defaults["betas"]) == (0.5, 0.999) and tr.optimizers[0].defaults["weight_decay"] == 0
    logs = []
    tr.log_fn = lambda m, s: logs.append(m)
    result = tr.fit()
    assert result.steps == 3 and math.isfinite(result.final_loss)
    assert {"train/d_real", "train/d_fake", "train/g_gan", "train/nce", "train/nce_idt",
            "train/loss_discriminator", "train/loss_generator"} <= set(logs[-1])
    # the generator maps normalised images to normalised images of the same shape, within the pixel range
    x = torch.randn(2, 3, 16, 16)
    y = tr.method.translator()(x)
    lo = tr.method.info.normalize(torch.zeros(1, 3, 1, 1))
    hi = tr.method.info.normalize(torch.ones(1, 3, 1, 1))
    assert y.shape == x.shape and bool((y >= lo - 1e-5).all() and (y <= hi + 1e-5).all())
    # the encoder scored by the evaluator is the generator's encoder (the run's backbone)
    assert tr.method.encoder() is tr.method.backbone is tr.method.translator().encoder


def test_cut_modes_and_its_refusals():
    ds = two_domains()
    fast = Trainer(run_cfg(**{"method_cfg.mode": "fastcut"}), ds, "/nonexistent").method
    assert (fast.lambda_nce, fast.nce_idt, fast.flip_equivariance) == (10.0, False, True)
    cut = Trainer(run_cfg(), ds, "/nonexistent").method
    assert (cut.lambda_nce, cut.nce_idt, cut.flip_equivariance) == (1.0, True, False)
    with pytest.raises(ConfigError, match="use backbone=cut_encoder"):
        Trainer(run_cfg(backbone="cnn4"), ds, "/nonexistent")
    with pytest.raises(ConfigError, match="layers 0..14"):
        Trainer(run_cfg(**{"method_cfg.nce_layers": [0, 16]}), ds, "/nonexistent")
    with pytest.raises(ConfigError, match="a multiple of 2"):
        Trainer(run_cfg(**{"optim.batch_size": 7}), ds, "/nonexistent")


def test_cut_fastcut_flip_runs(tmp_path):
    tr = Trainer(run_cfg(steps=2, **{"method_cfg.mode": "fastcut"}), two_domains(), tmp_path)
    assert math.isfinite(tr.fit().final_loss)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    from test_kills_pretext import kill_then_resume

    kill_then_resume(tmp_path, ["cut"], lambda name, steps, **kw: run_cfg(steps=steps, **kw))
