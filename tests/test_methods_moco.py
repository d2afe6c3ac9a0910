"""MoCo v1/v2: InfoNCE against the queue by hand, shuffled split-BN keeps rows in order, and a
short run whose queue and key encoder change and come back from the checkpoint."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from harness.core.errors import ConfigError
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import info_nce
from methods.moco import split_bn_forward


def test_info_nce_with_queue_matches_hand_computation():
    q = np.array([[1.0, 0.0], [0.0, 2.0]])
    k = np.array([[1.0, 1.0], [0.0, 1.0]])
    queue = np.array([[1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
    tau = 0.5
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=1, keepdims=True)
    # hand: l_pos = [1/sqrt2, 1]; l_neg = [[1, 0, -1], [0, -1, 0]]
    pos = np.array([1 / math.sqrt(2), 1.0])
    neg = np.array([[1.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
    assert np.allclose(pos, (qn * kn).sum(1)) and np.allclose(neg, qn @ queue.T)
    hand = np.mean([-pos[i] / tau + math.log(math.exp(pos[i] / tau) + np.exp(neg[i] / tau).sum()) for i in range(2)])
    got = info_nce(torch.tensor(q), torch.tensor(k), tau, queue=torch.tensor(queue)).item()
    assert abs(got - hand) < 1e-6


def test_split_bn_forward_keeps_row_order():
    torch.manual_seed(0)
    x = torch.randn(16, 5)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    net.eval()  # running statistics: the result must equal the plain forward, row by row
    assert torch.allclose(split_bn_forward(net, x, 4, generator=g), net(x), atol=1e-6)
    net.train()  # batch statistics: each of the 4 groups normalised on its own
    out = split_bn_forward(nn.BatchNorm1d(5, affine=False), x, 4)
    assert torch.allclose(out[:4], nn.functional.batch_norm(x[:4], None, None, training=True), atol=1e-5)
    # with shuffling, the identity comes back in the original order
    assert torch.equal(split_bn_forward(nn.Identity(), x, 4, generator=g), x)


def _cfg(method, **kw):
    return resolve({"method": method, "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "method_cfg.queue_size": 64, "method_cfg.bn_splits": 2, **kw})


@pytest.mark.parametrize("method", ["moco_v2", "moco"])
def test_moco_trains_queue_and_key_encoder_checkpointed(synthetic, tmp_path, method):
    extra = {"method_cfg.proj_hidden": 64, "method_cfg.blur": False} if method == "moco_v2" else {}
    tr = Trainer(_cfg(method, **extra), synthetic, tmp_path)
    m = tr.method
    assert isinstance(m.projector_head, nn.Linear) == (method == "moco")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    assert math.isfinite(res.final_loss) and res.final_loss > 0
    after = m.state_dict()
    assert int(after["queue.ptr"]) == (3 * 32) % 64
    assert not torch.equal(before["queue.keys"], after["queue.keys"])
    assert torch.allclose(after["queue.keys"].norm(dim=1), torch.ones(64), atol=1e-5)
    kk = [k for k in after if k.startswith("key_encoder.") and after[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in kk), "key encoder did not move"
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k


@pytest.mark.parametrize("method", ["moco", "moco_v2"])
@pytest.mark.parametrize("key, value", [("method_cfg.momentum", 1.5), ("method_cfg.queue_size", 0),
                                        ("method_cfg.bn_splits", 0)])
def test_moco_config_checks_name_the_key(synthetic, tmp_path, method, key, value):
    with pytest.raises(ConfigError, match=key):
        Trainer(_cfg(method, **{key: value}), synthetic, tmp_path)
