"""SimSiam: the loss against a hand computation, the predictor's fixed LR, and a short run
whose weights come back from the checkpoint."""

import math

import numpy as np
import pytest
import torch

import methods.simsiam  # noqa: F401  (registers the method)
from harness.core.errors import ConfigError
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import simsiam_loss


def test_simsiam_loss_matches_hand_computation():
    p1 = np.array([[1.0, 0.0], [0.0, 3.0]])
    p2 = np.array([[1.0, 1.0], [2.0, 0.0]])
    z1 = np.array([[0.0, 5.0], [-1.0, 0.0]])
    z2 = np.array([[2.0, 2.0], [0.0, -1.0]])
    # hand: cos(p1, z2) = [1/sqrt2, -1]; cos(p2, z1) = [1/sqrt2, -1]
    expected = 0.5 * -np.mean([1 / math.sqrt(2), -1.0]) + 0.5 * -np.mean([1 / math.sqrt(2), -1.0])
    t = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (p1, p2, z1, z2)]
    loss = simsiam_loss(*t)
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    assert t[0].grad is not None and t[2].grad is None and t[3].grad is None  # stop-gradient on z
    # identical directions reach the minimum, -1
    a = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert abs(simsiam_loss(a, 2 * a, 3 * a, a).item() + 1.0) < 1e-6


def _cfg(**kw):
    return resolve({"method": "simsiam", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 64, "method_cfg.pred_hidden": 16,
                    "method_cfg.blur": False, **kw})


def test_simsiam_trains_with_fixed_predictor_lr_and_is_checkpointed(synthetic, tmp_path):
    tr = Trainer(_cfg(), synthetic, tmp_path)
    m = tr.method
    assert isinstance(m.projector_head[-1], torch.nn.BatchNorm1d)  # last BN (no affine)
    pred = {id(p) for p in m.predictor.parameters()}
    groups = tr.optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in m.parameters() if p.requires_grad)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    assert math.isfinite(res.final_loss) and -1.0 <= res.final_loss <= 1.0
    for g in groups:
        is_pred = all(id(p) in pred for p in g["params"])
        assert bool(g.get("fixed_lr")) == is_pred
        if is_pred:
            assert g["lr"] == tr.base_lr          # not decayed (nor warmed up)
        else:
            assert g["lr"] < tr.base_lr           # cosine-decayed at progress 2/3
    after = m.state_dict()
    assert not torch.equal(before["predictor.0.weight"], after["predictor.0.weight"])
    assert not torch.equal(before["backbone.features.1.running_mean"], after["backbone.features.1.running_mean"])
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_simsiam_predictor_lr_decays_when_not_fixed(synthetic, tmp_path):
    tr = Trainer(_cfg(**{"method_cfg.fix_pred_lr": False, "budget.value": 2}), synthetic, tmp_path)
    tr.fit()
    assert all(not g.get("fixed_lr") and g["lr"] < tr.base_lr for g in tr.optimizer.param_groups)


def test_simsiam_needs_two_projector_layers(synthetic, tmp_path):
    with pytest.raises(ConfigError, match="'method_cfg.proj_layers': must be >= 2"):
        Trainer(_cfg(**{"method_cfg.proj_layers": 1}), synthetic, tmp_path)
