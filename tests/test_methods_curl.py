"""CURL: the bilinear logits and the loss against a hand computation, its crop (pixel by pixel against
pad-and-crop), a short run whose key encoder moves, and a run killed by SIGKILL that resumes to the
weights of an uninterrupted one."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from test_kills_pretext import kill_then_resume

from harness.data.views import ViewRecipe, random_shift
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import curl_logits, curl_loss


def test_bilinear_logits_and_loss_match_a_hand_computed_2x2_case():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    k = torch.tensor([[1.0, 1.0], [2.0, 0.0]], requires_grad=True)
    w = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    # by hand: W k_0 = (3, 1), W k_1 = (2, 0); q_0 = (1, 0) -> (3, 2); q_1 = (0, 2) -> (2, 0)
    raw = np.array([[3.0, 2.0], [2.0, 0.0]])
    for scale in (1.0, 0.1):
        logits = curl_logits(q, k, w, scale)
        shifted = scale * raw - (scale * raw).max(axis=1, keepdims=True)   # the row maximum subtracted
        assert np.allclose(logits.detach().numpy(), shifted)
        # the loss: row 0's positive is key 0 (3 vs 2), row 1's is key 1 (0 vs 2)
        expected = 0.5 * (-(3 * scale) + math.log(math.exp(3 * scale) + math.exp(2 * scale))
                          - 0 + math.log(math.exp(2 * scale) + math.exp(0)))
        loss = curl_loss(q, k, w, scale)
        assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    assert q.grad is not None and w.grad is not None and k.grad is None      # keys carry no gradient
    assert torch.allclose(loss, F.cross_entropy(torch.tensor(0.1 * raw, dtype=torch.float32), torch.arange(2)))


def test_random_shift_is_crop_pad_crop_and_moves_every_channel_alike():
    gen = torch.Generator().manual_seed(3)
    x = torch.arange(2 * 4 * 12 * 12, dtype=torch.float32).view(2, 4, 12, 12)
    out, box, flip = random_shift(x, 2, 0.0, torch.Generator().manual_seed(3))
    # the same draws, the slow way: crop 10 at o1, replicate-pad 2, crop 12 at o2 (curl_rainbow's three ops)
    o1 = torch.randint(0, 3, (2, 2), generator=gen)
    o2 = torch.randint(0, 3, (2, 2), generator=gen)
    for i in range(2):
        crop = x[i:i + 1, :, o1[i, 0]:o1[i, 0] + 10, o1[i, 1]:o1[i, 1] + 10]
        padded = F.pad(crop, (2, 2, 2, 2), mode="replicate")
        ref = padded[0, :, o2[i, 0]:o2[i, 0] + 12, o2[i, 1]:o2[i, 1] + 12]
        assert torch.equal(out[i], ref)
    assert not flip.any() and out.shape == x.shape
    assert torch.allclose(box[:, 2] - box[:, 0], torch.ones(2))
    # the recipe: two such views of a 4-channel batch, normalised, no colour operations
    views = ViewRecipe.shifted(12, 2)(x.to(torch.uint8), torch.Generator().manual_seed(0), (0.0,) * 4, (1.0,) * 4)
    assert len(views.images) == 2 and views.images[0].shape == (2, 4, 12, 12)


def _cfg(steps=3, **extra):
    over = {"method": "curl", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps", "budget.value": steps,
            "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
            "method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 32, "method_cfg.momentum": 0.9}
    over.update({k.replace("__", "."): v for k, v in extra.items()})
    return resolve(over)


def test_curl_trains_its_key_encoder_follows_and_is_checkpointed(synthetic, tmp_path):
    tr = Trainer(_cfg(), synthetic, tmp_path)
    m = tr.method
    assert m.encoder() is m.backbone and all(not p.requires_grad for p in m.key_encoder.parameters())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    assert math.isfinite(res.final_loss)
    after = m.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("key_encoder.")), "EMA did not move"
    assert not torch.equal(before["W"], after["W"])                       # W is learned
    saved = torch.load(res.checkpoint, weights_only=True)["model"]
    assert any(k.startswith("key_encoder.") for k in saved) and "W" in saved


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    kill_then_resume(tmp_path, ["curl"], lambda name, **kw: _cfg(**kw))
