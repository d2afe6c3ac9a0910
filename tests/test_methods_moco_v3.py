"""MoCo v3: the loss against a hand computation, the momentum schedule, the frozen random
patch projection of a ViT, and a short run whose momentum encoder moves and comes back from
the checkpoint."""

import math

import numpy as np
import pytest
import torch

import methods.moco_v3  # noqa: F401  (registers the method)
from harness.core.errors import ConfigError
from harness.method.contract import DataInfo
from harness.train.build import build_method, load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import moco_v3_loss


def _ctr(q, k, tau):
    """ctr(q, k) = 1/N sum_i -log softmax_j(q_i . k_j / tau)[i], by loops."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    out = 0.0
    for i in range(len(q)):
        logits = [q[i] @ k[j] / tau for j in range(len(k))]
        out += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return out / len(q)


def test_moco_v3_loss_matches_hand_computation():
    q1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    q2 = np.array([[1.0, 1.0], [1.0, -1.0]])
    k1 = np.array([[2.0, 0.0], [0.0, -1.0]])
    k2 = np.array([[1.0, 0.0], [1.0, 1.0]])
    tau = 0.2
    # hand, first term of ctr(q1, k2): q1_0 = (1, 0) vs k2 = (1, 0), (1, 1)/sqrt2
    first = -1 / tau + math.log(math.exp(1 / tau) + math.exp(math.sqrt(0.5) / tau))
    second = -math.sqrt(0.5) / tau + math.log(math.exp(0.0) + math.exp(math.sqrt(0.5) / tau))
    assert abs(_ctr(q1, k2, tau) - (first + second) / 2) < 1e-12
    expected = 2 * tau * (_ctr(q1, k2, tau) + _ctr(q2, k1, tau))
    t = [torch.tensor(a, requires_grad=True) for a in (q1, q2, k1, k2)]
    loss = moco_v3_loss(*t, tau)
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    assert t[0].grad is not None and t[2].grad is None and t[3].grad is None   # keys: no gradient


def _cfg(**kw):
    return resolve({"method": "moco_v3", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "optim.name": "sgd", "method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 32,
                    "method_cfg.pred_hidden": 64, "method_cfg.blur": False, **kw})


def test_moco_v3_momentum_schedule_and_vit_patch_projection_frozen():
    m = build_method(_cfg(backbone="vit_mini_p4"), DataInfo("synthetic", 3, 16, 256, 4))
    assert abs(m.momentum(0.0) - 0.99) < 1e-12 and abs(m.momentum(0.5) - 0.995) < 1e-12 and abs(m.momentum(1.0) - 1.0) < 1e-12
    proj = m.backbone.patch_embed.proj
    assert not proj.weight.requires_grad and not proj.bias.requires_grad
    trainable = {id(p) for g in m.param_groups() for p in g["params"]}
    assert id(proj.weight) not in trainable
    assert sum(isinstance(x, torch.nn.Linear) for x in m.projector_head) == 3   # 3-layer projector for ViTs
    m2 = build_method(_cfg(**{"backbone": "vit_mini_p4", "method_cfg.freeze_patch_embed": False}),
                      DataInfo("synthetic", 3, 16, 256, 4))
    assert m2.backbone.patch_embed.proj.weight.requires_grad


def test_moco_v3_trains_and_momentum_encoder_is_checkpointed(synthetic, tmp_path):
    tr = Trainer(_cfg(), synthetic, tmp_path)
    m = tr.method
    assert sum(isinstance(x, torch.nn.Linear) for x in m.projector_head) == 2   # 2-layer projector for convnets
    assert all(not p.requires_grad for p in m.momentum_encoder.parameters())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    assert math.isfinite(res.final_loss) and 0.0 < res.final_loss < 2 * 0.2 * 2 * (math.log(32) + 2 / 0.2)  # ctr <= log N + 2/tau
    after = m.state_dict()
    kk = [k for k in after if k.startswith("momentum_encoder.") and after[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in kk), "momentum encoder did not move"
    assert not torch.equal(after["momentum_encoder.module.0.features.0.weight"], after["backbone.features.0.weight"])
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k


@pytest.mark.parametrize("kw, frag", [
    ({"method_cfg.base_momentum": 0.999, "method_cfg.final_momentum": 0.99},
     "'method_cfg': need base_momentum <= final_momentum"),
    ({"method_cfg.final_momentum": 1.5}, "'method_cfg.final_momentum': must be <= 1"),
    ({"method_cfg.temperature": 0.0}, "'method_cfg.temperature': must be > 0"),
    ({"method_cfg.proj_layers": -1}, "'method_cfg.proj_layers': must be >= 0"),
])
def test_moco_v3_config_checks_name_the_key(synthetic, tmp_path, kw, frag):
    with pytest.raises(ConfigError, match=frag):
        Trainer(_cfg(**kw), synthetic, tmp_path)
