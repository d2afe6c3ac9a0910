"""DINO: the loss, the centring and the head against hand computations, the teacher
temperature warm-up, multi-crop on a ViT, the image-size refusal, and a short run whose
teacher and centre move and come back from the checkpoint."""

import math

import numpy as np
import pytest
import torch

import methods.dino  # noqa: F401  (registers the method)
from harness.core.errors import ConfigError
from harness.data.sources import synthetic as make_synthetic
from harness.models.backbones import build_backbone
from harness.models.blocks import Centering
from harness.models.heads import DINOHead
from harness.models.multicrop import enable_multi_crop
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import dino_loss


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_dino_loss_matches_hand_computation():
    # 2 teacher globals, 3 student crops (2 globals + 1 local), K = 2, one image
    pt = [np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]])]
    s = [np.array([[0.0, 0.0]]), np.array([[math.log(3.0), 0.0]]), np.array([[0.0, math.log(4.0)]])]
    tau = 1.0
    # P_s: crop 0 (1/2, 1/2), crop 1 (3/4, 1/4), crop 2 (1/5, 4/5)
    # pairs (t=0, s=1), (0, 2), (1, 0), (1, 2):
    terms = [-math.log(3 / 4), -math.log(1 / 5),
             -(0.5 * math.log(1 / 2) + 0.5 * math.log(1 / 2)), -(0.5 * math.log(1 / 5) + 0.5 * math.log(4 / 5))]
    got = dino_loss([torch.tensor(p) for p in pt], [torch.tensor(x) for x in s], tau).item()
    assert abs(got - np.mean(terms)) < 1e-6
    # student temperature divides the logits
    ps = _softmax(np.array([[2.0, -1.0]]) / 0.1)
    want = -(np.array([[0.3, 0.7]]) * np.log(ps)).sum()
    got = dino_loss([torch.tensor([[0.3, 0.7]])], [torch.zeros(1, 2), torch.tensor([[2.0, -1.0]])], 0.1).item()
    assert abs(got - want) < 1e-5


def test_centering_sharpens_and_follows_the_batch_mean():
    c = Centering(3, momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.allclose(c(logits, 0.5), torch.softmax(logits / 0.5, dim=1))   # centre starts at 0
    c.update(logits)                            # batch mean (2, 2, 2): c = 0.1 * (2, 2, 2)
    assert torch.allclose(c.center, torch.full((1, 3), 0.2))
    c.update(torch.tensor([[0.0, 0.0, 12.0]]))  # c = 0.9 * 0.2 + 0.1 * (0, 0, 12)
    assert torch.allclose(c.center, torch.tensor([[0.18, 0.18, 1.38]]))
    want = _softmax((logits.numpy() - np.array([0.18, 0.18, 1.38])) / 0.04)
    assert np.allclose(c(logits, 0.04).numpy(), want, atol=1e-6)


def test_dino_head_is_weight_normalised_and_can_be_frozen():
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=5, hidden=16, bottleneck=4)
    x = torch.randn(3, 8)
    y = head(x)
    with torch.no_grad():
        head.last_layer.weight.mul_(torch.arange(1.0, 6.0)[:, None])   # rescale rows: same directions
    assert torch.allclose(head(x), y, atol=1e-6)
    z = head.bottleneck_features(x)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-6)
    assert not head.last_layer.scale.requires_grad                      # norm_last_layer: g fixed at 1
    head.last_layer.frozen_step = True
    head(x).sum().backward()
    assert torch.count_nonzero(head.last_layer.weight.grad) == 0        # zero, not None (DDP)
    assert head.mlp[0].weight.grad.abs().sum() > 0


def test_multi_crop_vit_accepts_local_crops_and_keeps_native_output():
    torch.manual_seed(0)
    vit = build_backbone("vit_mini_p4", 3, 16).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = vit(x)
        enable_multi_crop(vit, [16, 8])
        assert torch.allclose(vit(x), before, atol=1e-5)
        assert vit(torch.randn(2, 3, 8, 8)).shape == (2, 128)
    with pytest.raises(ConfigError, match="divisible by 4"):
        enable_multi_crop(build_backbone("vit_mini_p4", 3, 16), [16, 6])


def _cfg(**kw):
    return resolve({"method": "dino", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "optim.name": "sgd", "optim.lr": 0.05, "method_cfg.out_dim": 64, "method_cfg.head_hidden": 64,
                    "method_cfg.head_bottleneck": 16, "method_cfg.n_local": 2, "method_cfg.blur": False, **kw})


def test_dino_refuses_images_too_small_for_multi_crop(tmp_path):
    with pytest.raises(ConfigError, match="at least 16 px"):
        Trainer(_cfg(), make_synthetic(n_train=64, n_test=16, image_size=8), tmp_path)


def test_dino_trains_teacher_and_centre_checkpointed(synthetic, tmp_path):
    tr = Trainer(_cfg(), synthetic, tmp_path)
    m = tr.method
    assert [s.size for s in tr.recipe.specs] == [16, 16, 8, 8]   # 2 global + 2 local (96/224 of 16, >= 8 px)
    assert tr.recipe.specs[1].solarize_p == 0.2 and tr.recipe.specs[0].solarize_p == 0.0
    assert m.teacher_temperature(0.0) == 0.04 and abs(m.teacher_temperature(0.15) - 0.055) < 1e-12
    assert m.teacher_temperature(0.3) == 0.07 and m.teacher_temperature(1.0) == 0.07
    assert all(not p.requires_grad for p in m.teacher.parameters())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    assert math.isfinite(res.final_loss) and 0.0 < res.final_loss < 2 * math.log(64) + 10
    after = m.state_dict()
    assert not torch.equal(before["centering.center"], after["centering.center"])
    tk = [k for k in after if k.startswith("teacher.") and after[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in tk), "teacher did not move"
    assert not torch.equal(after["teacher.module.0.features.0.weight"], after["backbone.features.0.weight"])
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_dino_last_layer_frozen_early(synthetic, tmp_path):
    tr = Trainer(_cfg(**{"budget.value": 2, "method_cfg.freeze_last_layer": 1.0}), synthetic, tmp_path)
    w0 = tr.method.head.last_layer.weight.detach().clone()
    tr.fit()
    w1 = tr.method.head.last_layer.weight.detach()
    # only weight decay acts on it: every row keeps its direction (the layer is weight-normalised)
    assert torch.allclose(torch.nn.functional.normalize(w1, dim=1), torch.nn.functional.normalize(w0, dim=1), atol=1e-6)
