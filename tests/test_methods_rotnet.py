"""RotNet: rotations and labels against numpy, cross-entropy against a hand computation, and
a short run that checkpoints."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.rotnet import rotate_batch


def test_rotate_batch_matches_numpy():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    xs, y = rotate_batch(x)
    assert xs.shape == (8, 1, 3, 3)
    assert y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        for i in range(2):
            assert np.array_equal(xs[k * 2 + i, 0].numpy(), np.rot90(x[i, 0].numpy(), k))
    # 90 degrees counter-clockwise: the top row becomes the left column, read bottom-up
    assert xs[2, 0, :, 0].tolist() == [2.0, 1.0, 0.0]


def test_rotation_cross_entropy_matches_hand_computation():
    logits = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 3.0]])
    y = np.array([0, 1, 2, 3])
    hand = -np.mean([2 - math.log(math.exp(2) + 3), 1 - math.log(math.e + 3), -math.log(4),
                     3 - math.log(math.e + 2 + math.exp(3))])
    got = F.cross_entropy(torch.tensor(logits), torch.tensor(y)).item()
    assert abs(got - hand) < 1e-9


def test_non_square_is_refused():
    with pytest.raises(ConfigError, match="square"):
        rotate_batch(torch.zeros(1, 1, 4, 5))


def test_rotnet_trains_and_checkpoints(synthetic, tmp_path):
    cfg = resolve({"method": "rotnet", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32"})
    tr = Trainer(cfg, synthetic, tmp_path)
    before = tr.method.head.weight.clone()
    res = tr.fit()
    assert math.isfinite(res.final_loss)
    assert not torch.equal(before, tr.method.head.weight)
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, tr.method.state_dict()[k]), k


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_rotnet_crop_min_scale_is_checked(synthetic, tmp_path, value):
    with pytest.raises(ConfigError, match="'method_cfg.crop_min_scale': must be"):
        Trainer(resolve({"method": "rotnet", "backbone": "cnn4", "data.name": "synthetic",
                         "method_cfg.crop_min_scale": value}), synthetic, tmp_path)
