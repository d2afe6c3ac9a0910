"""InvaSpread (Ye et al., 2019): the loss against a hand computation, and a short run."""

import math

import numpy as np
import pytest
import torch

import methods.invaspread  # noqa: F401  (registers the method)
from harness.core.errors import ConfigError
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import invaspread_loss


def test_invaspread_loss_matches_hand_computation():
    z1 = np.array([[1.0, 0.0], [0.6, 0.8]])
    z2 = np.array([[0.8, 0.6], [0.0, 1.0]])
    tau = 0.5
    v = np.concatenate([z1, z2])
    s = v @ v.T  # hand: s01 = .6, s02 = .8, s03 = 0, s12 = .96, s13 = .8, s23 = .6
    assert np.allclose(s[0], [1, 0.6, 0.8, 0.0]) and np.allclose(s[1, 2:], [0.96, 0.8])
    total = 0.0
    for i in range(4):
        p = (i + 2) % 4
        den = sum(math.exp(s[i, k] / tau) for k in range(4) if k != i)
        prob = {k: math.exp(s[i, k] / tau) / den for k in range(4) if k != i}
        total += math.log(prob[p]) + sum(math.log(1 - prob[k]) for k in prob if k != p)
    expected = -total / 4
    got = invaspread_loss(torch.tensor(2 * z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32), tau)
    assert abs(got.item() - expected) < 1e-5


def test_invaspread_loss_gradient_is_finite_for_confident_predictions():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = invaspread_loss(z, z.detach().clone(), 0.01)  # P of the positive ~ 1
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_invaspread_trains_three_steps(synthetic, tmp_path):
    from harness.run.plugins import get_method

    assert get_method("invaspread").family == "contrastive"
    cfg = resolve({"method": "invaspread", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32"})
    tr = Trainer(cfg, synthetic, tmp_path)
    assert isinstance(tr.method.projector_head, torch.nn.Linear) and tr.method.projector_head.out_features == 128
    res = tr.fit()
    assert res.steps == 3 and math.isfinite(res.final_loss) and res.final_loss > 0


@pytest.mark.parametrize("value", [0.0, -0.1])
def test_invaspread_temperature_must_be_positive(synthetic, tmp_path, value):
    with pytest.raises(ConfigError, match="'method_cfg.temperature': must be > 0"):
        Trainer(resolve({"method": "invaspread", "backbone": "cnn4", "data.name": "synthetic",
                         "method_cfg.temperature": value}), synthetic, tmp_path)
