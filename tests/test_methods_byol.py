"""BYOL: the loss against a hand computation, the momentum schedule, and a short run whose
EMA target changes and comes back from the checkpoint."""

import math

import numpy as np
import pytest
import torch

from harness.core.errors import ConfigError
from harness.core.schedules import momentum_schedule
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import byol_loss


def _cos(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_byol_loss_matches_hand_computation():
    p1 = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    p2 = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, -1.0]])
    z1 = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    z2 = np.array([[3.0, 0.0, 0.0], [-1.0, -1.0, 0.0]])
    # hand: cos(p1, z2) = [1, -1]; cos(p2, z1) = [1/sqrt2, -1]
    expected = np.mean(2 - 2 * np.array([1.0, -1.0])) + np.mean(2 - 2 * np.array([1 / math.sqrt(2), -1.0]))
    assert np.allclose(expected, np.mean(2 - 2 * _cos(p1, z2)) + np.mean(2 - 2 * _cos(p2, z1)))
    t = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (p1, p2, z1, z2)]
    loss = byol_loss(*t)
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    assert t[0].grad is not None and t[2].grad is None and t[3].grad is None  # stop-gradient on targets


def test_momentum_schedule_is_cosine_from_base_to_one():
    assert momentum_schedule(0.0, 0.996) == 0.996
    assert abs(momentum_schedule(1.0, 0.996) - 1.0) < 1e-12
    assert abs(momentum_schedule(0.5, 0.996) - 0.998) < 1e-12


def _cfg(**kw):
    return resolve({"method": "byol", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False,
                    "train.precision": "fp32", "method_cfg.proj_hidden": 64, "method_cfg.pred_hidden": 64,
                    "method_cfg.proj_dim": 32, **kw})


def test_byol_trains_and_target_is_checkpointed(synthetic, tmp_path):
    tr = Trainer(_cfg(), synthetic, tmp_path)
    m = tr.method
    assert m.encoder() is m.backbone
    assert all(not p.requires_grad for p in m.target.parameters())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    assert math.isfinite(res.final_loss) and 0.0 <= res.final_loss <= 8.0
    after = m.state_dict()
    target_keys = [k for k in after if k.startswith("target.") and after[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in target_keys), "EMA target did not move"
    # the target moves by (1 - tau) of the online step only: it lags the online weights
    assert not torch.equal(after["target.module.0.features.0.weight"], after["backbone.features.0.weight"])
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k


@pytest.mark.parametrize("kw, frag", [
    ({"method_cfg.base_momentum": 0.999, "method_cfg.final_momentum": 0.99},
     "'method_cfg': need base_momentum <= final_momentum"),
    ({"method_cfg.base_momentum": 1.5}, "'method_cfg.base_momentum': must be <= 1"),
    ({"method_cfg.final_momentum": -0.1}, "'method_cfg.final_momentum': must be >= 0"),
])
def test_byol_momentum_checks_name_the_key(synthetic, tmp_path, kw, frag):
    with pytest.raises(ConfigError, match=frag):
        Trainer(_cfg(**kw), synthetic, tmp_path)
