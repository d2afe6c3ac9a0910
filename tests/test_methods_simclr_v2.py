"""SimCLR v2: NT-Xent and the queue loss against hand computations, the 3-layer head and its
fine-tuning layer, and short runs (with and without the memory) that come back from the
checkpoint."""

import math

import numpy as np
import pytest
import torch

import methods.simclr_v2  # noqa: F401  (registers the method)
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import nt_xent, symmetric_info_nce


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_nt_xent_matches_hand_computation():
    z1 = np.array([[1.0, 0.0], [0.0, 2.0]])
    z2 = np.array([[1.0, 1.0], [-3.0, 0.0]])
    tau = 0.5
    z = _unit(np.concatenate([z1, z2]))   # views 0, 1 | 2, 3; positives 0<->2, 1<->3
    pos = {0: 2, 1: 3, 2: 0, 3: 1}
    terms = []
    for i in range(4):
        s = [z[i] @ z[k] / tau for k in range(4)]
        denom = sum(math.exp(s[k]) for k in range(4) if k != i)
        terms.append(-math.log(math.exp(s[pos[i]]) / denom))
    # one entry by hand: view 0 = (1, 0) vs (0, 1), (1, 1)/sqrt2, (-1, 0)
    hand0 = -(math.sqrt(0.5) / tau) + math.log(math.exp(0.0) + math.exp(math.sqrt(0.5) / tau) + math.exp(-1 / tau))
    assert abs(terms[0] - hand0) < 1e-12
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), tau).item()
    assert abs(got - np.mean(terms)) < 1e-6


def test_symmetric_info_nce_with_queue_matches_hand_computation():
    q1, q2 = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    k1, k2 = np.array([[0.0, 2.0]]), np.array([[1.0, 1.0]])
    queue = np.array([[-1.0, 0.0], [0.0, -1.0]])
    tau = 0.2
    # q1 . k2 = 1/sqrt2, negatives q1 . queue = (-1, 0); q2 . k1 = 1, negatives (0, -1)
    l1 = -math.sqrt(0.5) / tau + math.log(math.exp(math.sqrt(0.5) / tau) + math.exp(-1 / tau) + 1.0)
    l2 = -1 / tau + math.log(math.exp(1 / tau) + 1.0 + math.exp(-1 / tau))
    got = symmetric_info_nce(*(torch.tensor(a) for a in (q1, q2, k1, k2)), tau, queue=torch.tensor(queue)).item()
    assert abs(got - (l1 + l2)) < 1e-6


def _cfg(**kw):
    return resolve({"method": "simclr_v2", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "optim.name": "sgd", "method_cfg.proj_hidden": 48, "method_cfg.proj_dim": 16,
                    "method_cfg.blur": False, **kw})


@pytest.mark.parametrize("queue", [0, 256])
def test_simclr_v2_trains_and_is_checkpointed(synthetic, tmp_path, queue):
    tr = Trainer(_cfg(**{"method_cfg.queue_size": queue, "method_cfg.momentum": 0.9}), synthetic, tmp_path)
    m = tr.method
    assert sum(isinstance(x, torch.nn.Linear) for x in m.projector_head) == 3
    with torch.no_grad():
        m.eval()
        assert m.projector()(torch.zeros(2, 3, 16, 16)).shape == (2, 48)   # backbone + first head layer
        m.train()
    assert hasattr(m, "queue") == (queue > 0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    assert math.isfinite(res.final_loss) and res.final_loss > 0
    after = m.state_dict()
    if queue:
        assert int(after["queue.ptr"]) == 3 * 2 * 32                 # both views' keys enqueued
        assert not torch.equal(before["queue.keys"], after["queue.keys"])
        kk = [k for k in after if k.startswith("key_encoder.") and after[k].is_floating_point()]
        assert any(not torch.equal(before[k], after[k]) for k in kk), "key encoder did not move"
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k
