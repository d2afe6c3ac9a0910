"""MAE: patchify/masking/loss against hand computations, the masked encoder agrees with timm's
forward when nothing is masked, and a short run on a ViT that checkpoints."""

import math

import numpy as np
import pytest
import torch

from harness import patchify, random_masking, sincos_pos_embed_2d, unpatchify
from harness.core.errors import ConfigError
from harness.train.build import build_method, data_info, load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import mae_loss


def test_patchify_layout_and_roundtrip():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (2, 4, 12)
    # patch 1 (top-right) of image 0: pixels (rows 0-1, cols 2-3), channel-last per pixel
    xn = x.numpy()
    hand = np.stack([xn[0, :, r, c] for r in (0, 1) for c in (2, 3)]).reshape(-1)
    assert np.array_equal(p[0, 1].numpy(), hand)
    assert torch.equal(unpatchify(p, 2, 3, 4, 4), x)


def test_random_masking_keeps_a_quarter_per_sample():
    g = torch.Generator().manual_seed(0)
    ids_keep, mask, ids_restore = random_masking(3, 16, 0.75, g)
    assert ids_keep.shape == (3, 4) and mask.shape == (3, 16)
    assert mask.sum(1).tolist() == [12.0, 12.0, 12.0]
    for b in range(3):
        assert mask[b, ids_keep[b]].sum() == 0  # kept patches are unmasked
    assert not torch.equal(ids_keep[0], ids_keep[1])  # per-sample masks


def test_mae_loss_matches_hand_computation():
    pred = np.array([[[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])
    target = np.array([[[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]]])
    mask = np.array([[1.0, 0.0]])  # only patch 0 is masked: patch 1 must not count
    t = target[0, 0]
    t_hat = (t - 2.5) / math.sqrt(np.var(t, ddof=1) + 1e-6)   # var = 5/3
    hand_norm = np.mean((0.0 - t_hat) ** 2)
    hand_raw = np.mean((0.0 - t) ** 2)                         # (1 + 4 + 9 + 16) / 4
    args = [torch.tensor(a, dtype=torch.float32) for a in (pred, target, mask)]
    assert abs(mae_loss(*args, norm_pix=True).item() - hand_norm) < 1e-5
    assert abs(mae_loss(*args, norm_pix=False).item() - hand_raw) < 1e-6 and hand_raw == 7.5


def test_sincos_pos_embed_shape_and_values():
    pe = sincos_pos_embed_2d(8, 2, 3, num_prefix=1)
    assert pe.shape == (7, 8) and torch.equal(pe[0], torch.zeros(8))
    # token (row 1, col 2): first half encodes the column (2), second half the row (1)
    w = [1.0, 1.0 / 100.0]
    hand = [math.sin(2 * w[0]), math.sin(2 * w[1]), math.cos(2 * w[0]), math.cos(2 * w[1]),
            math.sin(1 * w[0]), math.sin(1 * w[1]), math.cos(1 * w[0]), math.cos(1 * w[1])]
    assert np.allclose(pe[1 + 1 * 3 + 2].numpy(), hand, atol=1e-6)


def _cfg(**kw):
    return resolve({"method": "mae", "backbone": "vit_mini_p4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "method_cfg.decoder_dim": 32, "method_cfg.decoder_depth": 1, "method_cfg.decoder_heads": 4,
                    **kw})


def test_masked_encoder_equals_timm_forward_when_nothing_is_masked(synthetic):
    m = build_method(_cfg(), data_info(synthetic)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, mask, ids_restore = m.forward_encoder(x, 0.0, torch.Generator().manual_seed(0))
        patches = torch.gather(tokens[:, 1:], 1, ids_restore.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        ref = m.backbone.forward_features(x)          # timm: cls + patches, pos embed, blocks, (identity) norm
        ref = m.backbone.fc_norm(ref)                 # the LayerNorm timm applies after avg pooling
    assert mask.sum() == 0
    assert torch.allclose(patches, ref[:, 1:], atol=1e-5) and torch.allclose(tokens[:, 0], ref[:, 0], atol=1e-5)
    assert not m.backbone.pos_embed.requires_grad   # fixed sin-cos, as in the paper


def test_mae_needs_a_vit(synthetic, tmp_path):
    with pytest.raises(ConfigError, match="ViT"):
        Trainer(_cfg(backbone="cnn4"), synthetic, tmp_path)


def test_mae_trains_and_checkpoints(synthetic, tmp_path):
    tr = Trainer(_cfg(), synthetic, tmp_path)
    m = tr.method
    assert m.encoder() is m.backbone
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    assert math.isfinite(res.final_loss) and res.final_loss > 0
    after = m.state_dict()
    assert not torch.equal(before["mask_token"], after["mask_token"])
    assert not torch.equal(before["backbone.blocks.0.attn.qkv.weight"], after["backbone.blocks.0.attn.qkv.weight"])
    assert torch.equal(before["backbone.pos_embed"], after["backbone.pos_embed"])
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k
    # the evaluator scores the plain backbone: avg-pooled features of all patches
    feats = loaded.encoder()(torch.randn(2, 3, 16, 16))
    assert feats.shape == (2, 128)


def test_same_step_generator_gives_same_mask():
    # masks come from step.generator, which the trainer seeds per step: a resumed run masks alike
    a = random_masking(2, 16, 0.75, torch.Generator().manual_seed(5))
    b = random_masking(2, 16, 0.75, torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("kw, frag", [
    ({"method_cfg.mask_ratio": 1.0}, "'method_cfg.mask_ratio': must be < 1"),
    ({"method_cfg.mask_ratio": -0.1}, "'method_cfg.mask_ratio': must be >= 0"),
    ({"method_cfg.decoder_heads": 0}, "'method_cfg.decoder_heads': must be > 0"),
    ({"method_cfg.decoder_dim": 30}, "'method_cfg': need decoder_dim divisible by decoder_heads"),
])
def test_mae_config_checks_name_the_key(synthetic, tmp_path, kw, frag):
    with pytest.raises(ConfigError, match=frag):
        Trainer(_cfg(**kw), synthetic, tmp_path)
