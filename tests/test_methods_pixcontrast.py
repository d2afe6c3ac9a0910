"""PixContrast / PixPro (Xie et al., 2021): the crop geometry against hand values and against the
real view recipe, the losses against hand computations, refusals, and short runs."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import methods.pixcontrast  # noqa: F401  (registers the method)
from harness.core.errors import ConfigError
from harness.data.geometry import pixel_centres, positive_mask
from harness.data.views import random_resized_crop
from harness.models.backbones import feature_map
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.pixcontrast import pixcontrast_loss, pixel_propagation, pixpro_consistency

FULL = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
QUARTER = torch.tensor([[0.5, 0.0, 1.0, 0.5]])   # the top-right quarter
NO, YES = torch.tensor([False]), torch.tensor([True])


def test_pixel_centres_hand_values():
    c = pixel_centres(FULL, NO, 2, 2)[0].numpy()
    assert np.allclose(c, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    c = pixel_centres(FULL, YES, 2, 2)[0].numpy()   # flipped: column 0 shows the right half
    assert np.allclose(c, [[0.75, 0.25], [0.25, 0.25], [0.75, 0.75], [0.25, 0.75]])
    c = pixel_centres(QUARTER, NO, 2, 2)[0].numpy()
    assert np.allclose(c, [[0.625, 0.125], [0.875, 0.125], [0.625, 0.375], [0.875, 0.375]])


def test_positive_mask_hand_values():
    # full view vs its mirror image: cells coincide pairwise (distance 0); all other pairs are at
    # least half a side apart = 0.707 cell diagonals > 0.7
    m = positive_mask(FULL, NO, FULL, YES, 2, 2)[0]
    assert torch.equal(m, torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool))
    # full view (cell diagonal .707) vs top-right quarter (.354): normalised by .707;
    # e.g. (.25,.25)-(.625,.125): .395/.707 = .56 < .7; (.25,.25)-(.875,.125): .637/.707 = .90
    m = positive_mask(FULL, NO, QUARTER, NO, 2, 2)[0]
    expected = [[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]]
    assert torch.equal(m, torch.tensor(expected, dtype=torch.bool))
    # threshold is a knob
    assert positive_mask(FULL, NO, QUARTER, NO, 2, 2, threshold=2.0).all()


def test_pixel_centres_match_the_view_recipe_crops():
    # a source whose value is its own x coordinate (and a second channel with y): after the
    # trainer's crop + flip, each view pixel must show the source position pixel_centres predicts
    s = 64
    ramp = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    src = torch.stack([ramp.view(1, s).expand(s, s), ramp.view(s, 1).expand(s, s)]).unsqueeze(0).repeat(16, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    out, box, flip = random_resized_crop(src, 8, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, g)
    assert flip.any() and (~flip).any()
    pred = pixel_centres(box, flip, 8, 8)                         # (16, 64, 2)
    seen = out.permute(0, 2, 3, 1).reshape(16, 64, 2)
    inner = (pred > 1.5 / s) & (pred < 1 - 1.5 / s)               # away from the reflection padding
    assert torch.allclose(seen[inner], pred[inner], atol=1e-3)


def test_pixcontrast_loss_hand_values():
    tau = 0.5
    q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    k = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    # only query 0 has a positive (key 0): -log(e^{1/tau} / (e^{1/tau} + e^{.6/tau}))
    m = torch.tensor([[[True, False], [False, False]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
    assert abs(pixcontrast_loss(q, k, m, tau, "image").item() - expected) < 1e-5
    # several positives: query 0 has both keys (loss 0), query 1 only key 1: scores [0, .8] / tau
    m = torch.tensor([[[True, True], [False, True]]])
    expected = (0 + -math.log(math.exp(1.6) / (1 + math.exp(1.6)))) / 2
    assert abs(pixcontrast_loss(q, k, m, tau, "image").item() - expected) < 1e-5
    # batch negatives: 2 images x 1 pixel; each query's other-image key joins its denominator
    q2, k2 = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]), torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])
    m2 = torch.ones(2, 1, 1, dtype=torch.bool)
    expected = (-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (1 + math.exp(1.6)))) / 2
    assert abs(pixcontrast_loss(q2, k2, m2, tau, "batch").item() - expected) < 1e-5
    assert pixcontrast_loss(q2, k2, m2, tau, "image").item() == pytest.approx(0.0, abs=1e-6)
    # no positive anywhere: 0, still differentiable
    q3 = q.clone().requires_grad_(True)
    loss = pixcontrast_loss(q3, k, torch.zeros(1, 2, 2, dtype=torch.bool), tau)
    loss.backward()
    assert loss.item() == 0.0 and q3.grad is not None


def test_pixpro_propagation_and_consistency_hand_values():
    x = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]]])
    y = pixel_propagation(x, nn.Identity(), gamma=2.0)[0]
    # s = max(cos, 0)^2: [[1, .36, 0], [.36, 1, 0], [0, 0, 1]]; values = normalised x
    assert torch.allclose(y[0], torch.tensor([1 + 0.36 * 0.6, 0.36 * 0.8]), atol=1e-6)
    assert torch.allclose(y[1], torch.tensor([0.36 + 0.6, 0.8]), atol=1e-6)
    assert torch.allclose(y[2], torch.tensor([-1.0, 0.0]), atol=1e-6)
    yy = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    kk = torch.tensor([[[0.6, 0.8], [0.0, 1.0]]])
    m = torch.tensor([[[True, True], [False, False]]])
    # cos(y0, k0) = .6, cos(y0, k1) = 0: -2 * (.6 + 0) / 2
    assert abs(pixpro_consistency(yy, kk, m).item() - (-0.6)) < 1e-5


def _cfg(variant, **kw):
    return resolve({"method": "pixcontrast", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "optim.name": "sgd", "train.progress": False,
                    "train.precision": "fp32", "method_cfg.variant": variant, "method_cfg.proj_hidden": 64,
                    "method_cfg.proj_dim": 32, "method_cfg.blur": False, "method_cfg.crop_min_scale": 0.3, **kw})


@pytest.mark.parametrize("variant", ["pixpro", "pixcontrast"])
def test_pixcontrast_trains_three_steps_and_target_checkpointed(synthetic, tmp_path, variant):
    from harness.run.plugins import get_method

    assert get_method("pixcontrast").family == "contrastive"
    tr = Trainer(_cfg(variant), synthetic, tmp_path)
    m = tr.method
    assert m.map_size == (2, 2)   # cnn4 on 16 px images
    before = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("target.")}
    res = tr.fit()
    assert res.steps == 3 and math.isfinite(res.final_loss)
    after = m.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_feature_map_and_refusals(synthetic, tmp_path):
    from harness.models.backbones import build_backbone

    f = feature_map(build_backbone("cnn4", 3, 32), torch.zeros(2, 3, 32, 32))
    assert f.shape == (2, 256, 4, 4)
    f = feature_map(build_backbone("resnet18_cifar", 3, 32), torch.zeros(2, 3, 32, 32))
    assert f.shape == (2, 512, 4, 4)
    with pytest.raises(ConfigError, match="spatial feature map"):
        Trainer(_cfg("pixpro", backbone="vit_mini_p4"), synthetic, tmp_path)
    with pytest.raises(ConfigError, match="valid choices"):
        Trainer(_cfg("pixel"), synthetic, tmp_path)


@pytest.mark.parametrize("key, value", [("method_cfg.ppm_layers", 3), ("method_cfg.ppm_layers", -1),
                                        ("method_cfg.temperature", 0.0), ("method_cfg.pos_threshold", 0.0)])
def test_pixcontrast_config_checks_name_the_key(synthetic, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        Trainer(_cfg("pixcontrast", **{key: value}), synthetic, tmp_path)
