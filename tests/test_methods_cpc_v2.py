"""CPC v2 (Henaff et al., 2020): patch grid, causal context, the InfoNCE against a hand
computation, clear refusals, and a short run."""

import math

import pytest
import torch
import torch.nn as nn

import methods.cpc_v2  # noqa: F401  (registers the method)
from harness.core.errors import ConfigError
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.cpc_v2 import ContextNetwork, cpc_loss, extract_patches, grid_size


def test_patch_grid():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    p = extract_patches(x, 4, 2)
    assert grid_size(6, 4, 2) == 2 and p.shape == (2, 2, 2, 1, 4, 4)
    assert torch.equal(p[1, 0, 1], x[1, :, 0:4, 2:6]) and torch.equal(p[0, 1, 0], x[0, :, 2:6, 0:4])
    assert grid_size(32, 16, 8) == 3 and grid_size(32, 8, 4) == 7 and grid_size(8, 16, 8) == 0


def test_context_is_causal_top_to_bottom():
    torch.manual_seed(0)
    net = ContextNetwork(4, 8, layers=3)
    z = torch.randn(2, 4, 5, 5, requires_grad=True)
    c = net(z)
    assert c.shape == (2, 8, 5, 5)
    c[:, :, 2].sum().backward()   # row 2 of the context ...
    assert torch.all(z.grad[:, :, 3:] == 0)          # ... never sees rows below it
    assert z.grad[:, :, :3].abs().sum(dim=(0, 1, 3)).gt(0).all()   # ... and sees rows 0..2 (all columns)


def test_cpc_loss_matches_hand_computation():
    # one image, D = 2, 2x2 grid: z00 = (1,0), z01 = (0,1), z10 = (1,1), z11 = (-1,0)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]).view(1, 2, 2, 2).permute(0, 3, 1, 2)
    # contexts c00 = (1,2), c01 = (0,-1) (row 1 unused with K = 1); W_1 = identity
    c = torch.tensor([[1.0, 2.0], [0.0, -1.0], [5.0, 5.0], [5.0, 5.0]]).view(1, 2, 2, 2).permute(0, 3, 1, 2)
    w = nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        w.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        w.bias.zero_()
    # hand: pred(0,0) = (1,2): scores vs [z00, z01, z10, z11] = [1, 2, 3, -1], positive z10 (index 2)
    #       pred(0,1) = (0,-1): scores [0, -1, -1, 0], positive z11 (index 3)
    l1 = -3 + math.log(math.e + math.e**2 + math.e**3 + math.e**-1)
    l2 = -0 + math.log(1 + 2 * math.e**-1 + 1)
    loss, acc = cpc_loss(z, c, nn.ModuleList([w]))
    assert abs(loss.item() - (l1 + l2) / 2) < 1e-5
    assert abs(acc.item() - 0.5) < 1e-6  # pred(0,0) picks z10 (right); pred(0,1) ties z00/z11 -> argmax z00 (wrong)


def _cfg(**kw):
    return resolve({"method": "cpc_v2", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "method_cfg.patch_size": 8, "method_cfg.patch_stride": 4, "method_cfg.pred_steps": 2,
                    "method_cfg.context_dim": 32, "method_cfg.context_layers": 2, **kw})


@pytest.mark.parametrize("num_negatives", [0, 50])
def test_cpc_v2_trains_three_steps(synthetic, tmp_path, num_negatives):
    from harness.run.plugins import get_method

    assert get_method("cpc_v2").family == "contrastive"
    tr = Trainer(_cfg(**{"method_cfg.num_negatives": num_negatives}), synthetic, tmp_path)
    assert tr.method.grid == 3   # 16 px images, 8 px patches, stride 4
    res = tr.fit()
    assert res.steps == 3 and math.isfinite(res.final_loss) and res.final_loss > 0


def test_cpc_v2_refuses_what_it_cannot_do(synthetic, tmp_path):
    with pytest.raises(ConfigError, match="too few rows"):
        Trainer(_cfg(**{"method_cfg.patch_size": 64, "method_cfg.patch_stride": 32}), synthetic, tmp_path)
    with pytest.raises(ConfigError, match="convolutional backbone"):
        Trainer(_cfg(backbone="vit_mini_p4"), synthetic, tmp_path)
    from harness.data.sources import synthetic as make

    with pytest.raises(ConfigError, match="at least 16 px"):
        Trainer(_cfg(), make(n_train=64, n_test=16, image_size=8), tmp_path)


@pytest.mark.parametrize("key, value", [("method_cfg.pred_steps", 0), ("method_cfg.patch_size", -1),
                                        ("method_cfg.patch_stride", -2)])
def test_cpc_v2_config_checks_name_the_key(synthetic, tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"'{key}': must be >= "):
        Trainer(_cfg(**{key: value}), synthetic, tmp_path)
