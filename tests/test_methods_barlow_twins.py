"""Barlow Twins: the loss against hand computations, the bias LR scale, and a short run whose
weights come back from the checkpoint."""

import math

import numpy as np
import pytest
import torch

import methods.barlow_twins  # noqa: F401  (registers the method)
from harness.core.errors import ConfigError
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import barlow_twins_loss


def test_barlow_twins_loss_matches_hand_computation():
    # two samples: every dimension already has mean 0 and (biased) variance 1
    za = np.array([[1.0, 1.0], [-1.0, -1.0]])
    zb = np.array([[1.0, -1.0], [-1.0, 1.0]])
    # C = za^T zb / 2 = [[1, -1], [1, -1]]: on-diagonal (1-1)^2 + (1+1)^2 = 4, off-diagonal 1 + 1 = 2
    lam = 0.1
    c = 1 / (1 + 1e-5)  # eps in the standardisation rescales C by 1 / (1 + eps)
    expected = (1 - c) ** 2 + (1 + c) ** 2 + lam * (c**2 + c**2)
    assert abs(expected - (4.0 + lam * 2.0)) < 1e-4
    got = barlow_twins_loss(torch.tensor(za), torch.tensor(zb), lambd=lam).item()
    assert abs(got - expected) < 1e-6  # float32


def test_barlow_twins_loss_matches_loops_on_random_case():
    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(5, 3)) * 3 + 1, rng.normal(size=(5, 3))
    lam, eps = 5e-3, 1e-5

    def std(z):
        out = np.zeros_like(z)
        for j in range(z.shape[1]):
            col = z[:, j]
            out[:, j] = (col - col.mean()) / math.sqrt(((col - col.mean()) ** 2).mean() + eps)
        return out

    a, b = std(za), std(zb)
    loss = 0.0
    for i in range(3):
        for j in range(3):
            c = sum(a[n, i] * b[n, j] for n in range(5)) / 5
            loss += (1 - c) ** 2 if i == j else lam * c**2
    got = barlow_twins_loss(torch.tensor(za), torch.tensor(zb), lambd=lam).item()
    assert abs(got - loss) < 1e-5
    # identical views: the invariance term is (almost) zero
    z = torch.tensor(za)
    assert barlow_twins_loss(z, z, lambd=0.0).item() < 1e-6


def _cfg(**kw):
    return resolve({"method": "barlow_twins", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 64, "method_cfg.blur": False, **kw})


def test_barlow_twins_trains_and_is_checkpointed(synthetic, tmp_path):
    tr = Trainer(_cfg(), synthetic, tmp_path)
    m = tr.method
    scales = sorted(g["base_lr_scale"] for g in tr.optimizer.param_groups)
    assert scales == [0.024, 1.0]  # biases/BN at 0.0048 / 0.2 of the weights' LR
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    # at initialisation C is far from the identity: the loss is of the order of D
    assert math.isfinite(res.final_loss) and 0.0 < res.final_loss < 64 * 4 + 5e-3 * 64 * 63  # (1 - C_ii)^2 <= 4, C_ij^2 <= 1
    after = m.state_dict()
    assert not torch.equal(before["projector_head.0.weight"], after["projector_head.0.weight"])
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k


@pytest.mark.parametrize("key, value", [("method_cfg.lambd", -1.0), ("method_cfg.proj_layers", 0)])
def test_barlow_twins_config_checks_name_the_key(synthetic, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        Trainer(_cfg(**{key: value}), synthetic, tmp_path)
