"""Masked image modelling (issue 16): SimMIM, DeepMIM, LocalMIM and the shared pieces they stand on
(masks, the ViT token helpers, HOG cells, pooled-token features), each against a hand-computed case."""

import math
from pathlib import Path

import pytest
import torch

from evals.features import TokenFeatures, scored_encoder
from harness.core.errors import ConfigError
from harness.data.masking import block_mask, random_mask, upsample_mask
from harness.data.sources import synthetic
from harness.data.tiles import hog_cells
from harness.models.backbones import build_backbone
from harness.models.vit import input_tokens
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.deepmim import taps_of
from methods.localmim import local_loss, mask_at_scale, scale_head
from methods.losses import simmim_loss
from methods.mae import encode_visible

# small settings for the 16-px synthetic images (vit_mini_p4: a 4x4 grid of 4-px patches)
SMALL = {
    "ibot": {"backbone": "vit_mini_p4", "method_cfg.out_dim": 64, "method_cfg.head_hidden": 32,
             "method_cfg.head_bottleneck": 16, "method_cfg.n_local": 2, "method_cfg.local_size": 8},
    "qb_heat": {"backbone": "vit_mini_p4", "method_cfg.decoder_dim": 32, "method_cfg.decoder_depth": 1,
                "method_cfg.decoder_heads": 4},
    "convmae": {"backbone": "convvit_mini", "method_cfg.decoder_dim": 32, "method_cfg.decoder_depth": 1,
                "method_cfg.decoder_heads": 4},
    "beit": {"backbone": "vit_mini_p4", "method_cfg.codebook_size": 64, "method_cfg.min_block": 2,
             "method_cfg.tokenizer_width": 16, "method_cfg.tokenizer_fraction": 0.5},
    "simmim": {"backbone": "vit_mini_p4", "method_cfg.mask_patch": 8},
    "deepmim": {"backbone": "vit_mini_p4", "method_cfg.decoder_dim": 32, "method_cfg.decoder_depth": 1,
                "method_cfg.decoder_heads": 4},
    "localmim": {"backbone": "vit_mini_p4", "method_cfg.decoder_dim": 32, "method_cfg.decoder_heads": 4},
}
MIM = sorted(SMALL)


def run_cfg(name, steps=4, **extra):
    over = {"method": name, "data.name": "synthetic", "budget.kind": "steps", "budget.value": steps,
            "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32", **SMALL[name]}
    over.update({k.replace("__", "."): v for k, v in extra.items()})
    return resolve(over)


# ---------------------------------------------------------------------------- masks
def test_block_mask_with_square_blocks_of_four_is_one_2x2_block():
    # area U(4, 4) = 4 and aspect exp(0) = 1 -> h = w = 2: every mask is exactly one 2x2 square
    m = block_mask(64, 4, 4, 4, torch.Generator().manual_seed(0), min_block=4, max_block=4, min_aspect=1.0).view(64, 4, 4)
    assert (m.sum((1, 2)) == 4).all()
    for grid in m:
        rows, cols = grid.nonzero(as_tuple=True)
        assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1


def test_block_mask_statistics():
    # BEiT at 8x8: 40% = 25 patches, blocks of >= 4: never above the target, close to it on average,
    # and blocky: a masked patch's right neighbour is masked far more often than under random masking
    g = torch.Generator().manual_seed(1)
    m = block_mask(512, 8, 8, 25, g, min_block=4).view(512, 8, 8)
    counts = m.sum((1, 2)).float()
    assert counts.max() <= 25 and counts.mean() >= 0.9 * 25
    r = random_mask(512, 64, 25 / 64, torch.Generator().manual_seed(1)).view(512, 8, 8)

    def right_neighbour_rate(x):
        both = (x[:, :, :-1] & x[:, :, 1:]).sum().float()
        return (both / x[:, :, :-1].sum()).item()

    assert right_neighbour_rate(m) > right_neighbour_rate(r) + 0.25
    # same generator state -> same masks (a resumed run masks the same patches)
    assert torch.equal(block_mask(4, 8, 8, 25, torch.Generator().manual_seed(3)),
                       block_mask(4, 8, 8, 25, torch.Generator().manual_seed(3)))


def test_random_mask_count_and_upsampling_layout():
    m = random_mask(10, 16, 0.6, torch.Generator().manual_seed(0))
    assert (m.sum(1) == math.ceil(16 * 0.6)).all()              # SimMIM: ceil(L * ratio)
    coarse = torch.tensor([[1, 0, 0, 1]], dtype=torch.bool)     # 2x2 grid: top-left, bottom-right
    fine = upsample_mask(coarse, 2, 2, 2).view(4, 4).int()
    assert fine.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    with pytest.raises(ConfigError, match="at least one"):
        random_mask(1, 4, 0.99, torch.Generator())


# ---------------------------------------------------------------------------- SimMIM
def test_simmim_loss_is_l1_on_masked_pixels_only():
    target = torch.zeros(1, 3, 2, 2)
    target[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])           # the one masked pixel
    target[0, :, 1, 1] = 100.0                                  # unmasked: must not count
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 0] = 1
    pred = torch.zeros(1, 3, 2, 2)
    # sum |x_hat - x| over the masked pixel = 6, / (1 masked pixel) / 3 channels = 2
    assert simmim_loss(pred, target, mask).item() == pytest.approx(2.0 / (1 + 1e-5))


def test_mask_tokens_replace_masked_patch_embeddings_before_positions():
    vit = build_backbone("vit_mini_p4", 3, 16).eval()
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 5] = True
    tok = torch.randn(1, 1, vit.embed_dim)
    got = input_tokens(vit, x, mask, tok)
    npf = vit.num_prefix_tokens
    # a masked position holds mask token + its position embedding; the others equal timm's own sequence
    pe = vit.pos_embed[0, npf + 5]
    assert torch.allclose(got[:, npf + 5], (tok[0, 0] + pe).expand(2, -1), atol=1e-6)
    ref = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    keep = [i for i in range(npf + 16) if i != npf + 5]
    assert torch.allclose(got[:, keep], ref[:, keep], atol=1e-6)


def test_simmim_gets_no_gradient_from_visible_pixels(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    m = Trainer(run_cfg("simmim"), ds, tmp_path).method
    x = torch.randn(4, 3, 16, 16)
    coarse = random_mask(4, 4, 0.6, torch.Generator().manual_seed(0))
    rec = m.head(m.features(x, coarse))
    rec.retain_grad()
    pix = upsample_mask(coarse, 2, 2, 8).view(4, 1, 16, 16)
    simmim_loss(rec, x, pix).backward()
    visible = ~pix.expand_as(rec)
    assert rec.grad[visible].abs().max() == 0 and rec.grad[~visible].abs().max() > 0


def test_simmim_runs_on_a_convnet_and_refuses_a_bad_mask_patch(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    t = Trainer(run_cfg("simmim", backbone="cnn4"), ds, tmp_path)
    assert t.method.stride == 16 // 2 and t.method.mask_token.shape == (1, 3, 1, 1)   # cnn4: a 2x2 map at 16 px
    with pytest.raises(ConfigError, match="mask_patch=16"):
        Trainer(run_cfg("simmim", method_cfg__mask_patch=16), ds, tmp_path)   # a 1x1 grid
    with pytest.raises(ConfigError, match="multiple of the ViT"):
        Trainer(run_cfg("simmim", method_cfg__mask_patch=2), ds, tmp_path)


# ---------------------------------------------------------------------------- DeepMIM
def test_deepmim_taps_are_the_papers_blocks():
    assert taps_of([1 / 2, 2 / 3, 5 / 6], 12, "deepmim") == [6, 8, 10]    # ViT-B: blocks 6, 8, 10 (+ the last)
    assert taps_of([1 / 2, 2 / 3, 5 / 6], 6, "deepmim") == [3, 4, 5]
    with pytest.raises(ConfigError, match="blocks 1..5"):
        taps_of([1.0], 6, "deepmim")                                          # the last block has MAE's decoder


def test_encoder_taps_are_the_block_outputs_of_the_visible_tokens():
    vit = build_backbone("vit_mini_p4", 3, 16).eval()
    x = torch.randn(2, 3, 16, 16)
    last, taps, mask, ids_restore = encode_visible(vit, x, 0.75, torch.Generator().manual_seed(0), (2, 4))
    ids_keep = ids_restore.argsort(1)[:, :4]
    seq = input_tokens(vit, x)
    h = torch.cat([seq[:, :1], torch.gather(seq[:, 1:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))], 1)
    outs = []
    for blk in vit.blocks:
        h = blk(h)
        outs.append(h)
    assert torch.allclose(taps[0], outs[1], atol=1e-5) and torch.allclose(taps[1], outs[3], atol=1e-5)
    assert torch.allclose(last, vit.fc_norm(outs[-1]), atol=1e-5)
    assert mask.sum(1).tolist() == [12, 12]


def test_deepmim_loss_is_the_sum_of_its_decoders(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    t = Trainer(run_cfg("deepmim"), ds, tmp_path)
    from harness.data.views import Views
    from harness.method.contract import Batch, StepInfo

    out = t.method.training_step(Batch(Views([torch.randn(4, 3, 16, 16)], None, None), torch.arange(4)),
                                 StepInfo(0, 0.0, None, torch.Generator().manual_seed(0)))
    parts = out["main_loss"] + sum(v for k, v in out.items() if k.startswith("loss_block"))
    assert len(t.method.deep_decoders) == 3 and torch.allclose(out["loss"].detach(), parts)


# ---------------------------------------------------------------------------- LocalMIM
def test_hog_of_ramps_votes_into_the_gradient_orientation():
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 3, 8, 8)      # intensity grows along x: gx > 0, gy = 0
    h = hog_cells(ramp, 4, 9).view(1, 3, 9, 2, 2)
    assert torch.allclose(h[:, :, 0], torch.ones(1, 3, 2, 2)) and h[:, :, 1:].abs().max() == 0
    # along y: atan2(gy, 0) = pi/2 -> floor(4.5) = bin 4
    h = hog_cells(ramp.transpose(2, 3), 4, 9).view(1, 3, 9, 2, 2)
    assert torch.allclose(h[:, :, 4], torch.ones(1, 3, 2, 2)) and h.sum() == pytest.approx(12.0)


def test_localmim_masks_heads_and_loss_at_each_scale(tmp_path):
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])                           # 2x2 patch grid
    assert mask_at_scale(mask, (2, 2), 2)[0, 0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert mask_at_scale(mask, (2, 2), 0.5).item() == 0.5               # averaged onto the coarser grid
    z = torch.randn(2, 32, 4, 4)
    assert [scale_head(32, s, 27)(z).shape[-1] for s in (4, 2, 1, 0.5)] == [16, 8, 4, 2]
    pred, target = torch.zeros(1, 2, 1, 2), torch.tensor([[[[1.0, 3.0]], [[1.0, 3.0]]]])
    # only the first location is masked: mean over channels of (0 - 1)^2 = 1
    assert local_loss(pred, target, torch.tensor([[[[1.0, 0.0]]]])).item() == pytest.approx(1.0)
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    m = Trainer(run_cfg("localmim"), ds, tmp_path).method
    assert m.taps == [1, 2, 5, 6] and m.cells == [1, 2, 4, 8]


# ---------------------------------------------------------------------------- BEiT
def test_tokenizer_assigns_each_patch_its_nearest_code():
    from harness.models.tokenizer import VQTokenizer, nearest_code

    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[0.1, 0.1], [0.9, -0.2], [0.2, 1.2], [0.5, 0.0]])
    # squared distances to (0,0), (1,0), (0,2): row 3 ties 0.25 / 0.25 -> the lower index
    assert nearest_code(z, codebook).tolist() == [0, 1, 2, 0]
    tok = VQTokenizer(3, 4, codes=3, code_dim=2, width=8)
    with torch.no_grad():
        tok.codebook.weight.copy_(codebook)
    z_e = torch.tensor([[0.9, -0.2], [0.2, 1.2], [0.1, 0.1], [0.0, 3.0]]).t().reshape(1, 2, 2, 2)
    ids, z_q = tok.quantize(z_e)
    assert ids.tolist() == [[1, 2, 0, 2]] and torch.equal(z_q[0, :, 0, 0], codebook[1])


def test_beit_trains_its_tokenizer_first_then_freezes_it(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    c = run_cfg("beit", steps=6, train__checkpoint_every_steps=1)
    t = Trainer(c, ds, tmp_path / "a")
    t.fit(stop_after=3)                          # stage 1: steps 0-2 (progress < 0.5)
    tok_after_stage1 = {k: v.clone() for k, v in t.method.tokenizer.state_dict().items()}
    vit_before = {k: v.clone() for k, v in t.method.backbone.state_dict().items()}
    resumed = Trainer(c, ds, tmp_path / "a")
    resumed.fit(resume=True)                     # stage 2: the tokenizer is frozen, the ViT learns
    tok = resumed.method.tokenizer.state_dict()
    assert all(torch.equal(tok[k], v) for k, v in tok_after_stage1.items())
    vit = resumed.method.backbone.state_dict()
    assert any(not torch.equal(vit[k], v) for k, v in vit_before.items() if v.is_floating_point())


# ---------------------------------------------------------------------------- iBOT
def test_ibot_patch_loss_on_a_hand_case():
    from methods.losses import ibot_patch_loss

    t = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])              # teacher distributions of 2 patches
    s = torch.zeros(1, 2, 2)                                   # student logits: uniform -> log p = log 1/2
    # only patch 0 masked: -(1 * log 1/2) / 1 = ln 2; patch 1 (unmasked) must not count
    assert ibot_patch_loss(t, s, torch.tensor([[1, 0]])).item() == pytest.approx(math.log(2))
    # an image without masked patches adds 0 to the batch mean
    t2, s2 = torch.cat([t, t]), torch.cat([s, s])
    assert ibot_patch_loss(t2, s2, torch.tensor([[1, 0], [0, 0]])).item() == pytest.approx(math.log(2) / 2)


def test_ibot_patch_loss_takes_only_the_masked_rows():
    from methods.losses import ibot_patch_loss

    g = torch.Generator().manual_seed(0)
    t = torch.softmax(torch.randn(3, 5, 7, generator=g), -1)
    s = torch.randn(3, 5, 7, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 0]])
    # the formula written out: image 0 has 2 masked patches, image 1 none, image 2 three
    ce = -(t * torch.log_softmax(s / 0.1, -1)).sum(-1)
    want = ((ce[0, 0] + ce[0, 2]) / 2 + 0 + (ce[2, 1] + ce[2, 2] + ce[2, 3]) / 3) / 3
    assert ibot_patch_loss(t, s, mask).item() == pytest.approx(want.item(), rel=1e-6)
    assert ibot_patch_loss(t, s[mask.bool()], mask).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="student rows"):
        ibot_patch_loss(t, s[mask.bool()][:-1], mask)


def test_ibot_student_head_on_masked_rows_only_is_exact_without_bn(tmp_path):
    """Without BatchNorm in the head the student's head runs on [CLS] + the masked tokens only: the
    loss and every gradient equal those of the head over every token; a BN head gets every token."""
    from harness.data.views import Views
    from harness.method.contract import Batch, StepInfo

    ds = synthetic(n_train=64, n_test=16, image_size=16)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g),
             torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 3, 8, 8, generator=g)]

    def step(m, restricted):
        m.zero_grad()
        m.cfg.head_bn = not restricted          # the branch only: the head itself was built without BN
        calls = []
        h = m.head.register_forward_hook(lambda mod, a, out: calls.append(a[0].shape[0]))
        out = m.training_step(Batch(Views(views, None, None), torch.arange(8)),
                              StepInfo(0, 0.5, None, torch.Generator().manual_seed(3)))
        h.remove()
        out["loss"].backward()
        return out, calls, {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    m = Trainer(run_cfg("ibot", method_cfg__head_bn=False, method_cfg__drop_path=0.0), ds, tmp_path).method
    full, calls_full, g_full = step(m, restricted=False)
    part, calls_part, g_part = step(m, restricted=True)
    n_masked = int(round(part["masked"].item() * 16 * 16))   # 16 global crops x 16 patches
    assert 0 < n_masked < 16 * 16
    assert calls_full[0] == 16 * 17 and calls_part[0] == 16 + n_masked   # 16 crops x (CLS + 16 patches)
    assert part["loss_patch"].item() == pytest.approx(full["loss_patch"].item(), rel=1e-5)
    assert part["loss"].item() == pytest.approx(full["loss"].item(), rel=1e-5)
    assert g_full.keys() == g_part.keys()
    for k in g_full:
        assert torch.allclose(g_part[k], g_full[k], rtol=1e-4, atol=1e-7), k


def test_ibot_masks_about_half_the_crops_with_ratios_in_range(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    m = Trainer(run_cfg("ibot"), ds, tmp_path).method
    masks = m.masks(400, (8, 8), torch.Generator().manual_seed(0), "cpu")
    frac = masks.float().mean(1)
    masked = frac > 0
    assert 0.4 < masked.float().mean() < 0.6                  # mask_prob 0.5
    assert frac[masked].max() <= 0.5 + 1e-6 and frac[masked].mean() > 0.2


def test_ibot_step_adds_its_two_losses_and_keeps_two_centres(tmp_path):
    from harness.data.views import Views
    from harness.method.contract import Batch, StepInfo

    ds = synthetic(n_train=64, n_test=16, image_size=16)
    m = Trainer(run_cfg("ibot"), ds, tmp_path).method
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)]
    out = m.training_step(Batch(Views(views, None, None), torch.arange(4)),
                          StepInfo(0, 0.5, None, torch.Generator().manual_seed(0)))
    assert torch.allclose(out["loss"].detach(), out["loss_cls"] + out["loss_patch"])
    m.on_step_end(StepInfo(0, 0.5, None, torch.Generator()))
    assert m.patch_centering.center.abs().sum() > 0 and m.centering.center.abs().sum() > 0


# ---------------------------------------------------------------------------- QB-Heat
def test_heat_equation_steps_on_a_2x2_grid():
    from methods.qb_heat import heat_extrapolate

    z0 = torch.tensor([1.0, 2.0])
    a = torch.tensor([[0.0, 1.0], [0.0, 0.0]])                 # (I + A) z = (z1 + z2, z2)
    b = torch.tensor([[0.0, 0.0], [0.5, 0.0]])                 # (I + B) z = (z1, z2 + z1 / 2)
    z = heat_extrapolate(z0.view(1, 1, 1, 2), a, b, (2, 2))[0]  # (H, W, D)
    assert z[0, 0].tolist() == [1.0, 2.0]
    assert z[0, 1].tolist() == [3.0, 2.0]                      # z(x + 1, y) = (I + A) z(x, y)
    assert z[1, 0].tolist() == [1.0, 2.5]                      # z(x, y + 1) = (I + B) z(x, y)
    assert z[1, 1].tolist() == [3.0, 3.5]                      # (I + B)(I + A) z0


def test_qb_heat_encodes_only_the_quarter_block(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    m = Trainer(run_cfg("qb_heat"), ds, tmp_path).method
    assert m.quarter_ids.tolist() == [0, 1, 4, 5]              # top-left 2x2 of the 4x4 grid
    assert m.outside.sum() == 12
    x = torch.randn(2, 3, 16, 16)
    y = x.clone()
    y[:, :, 8:, :] += 5.0                                      # change only the bottom half
    from harness.data.views import Views
    from harness.method.contract import Batch, StepInfo

    with torch.no_grad():
        assert torch.allclose(m.predict(x), m.predict(y), atol=1e-6)   # the whole prediction comes from the quarter
        y[:, :, :8, :8] += 1.0
        assert not torch.allclose(m.predict(x), m.predict(y), atol=1e-4)
    out = m.training_step(Batch(Views([x], None, None), torch.arange(2)),
                          StepInfo(0, 0.0, None, torch.Generator()))
    assert math.isfinite(out["loss"].item())


# ---------------------------------------------------------------------------- ConvMAE
def test_convmae_masked_convolution_never_sees_masked_pixels(tmp_path):
    net = build_backbone("convvit_mini", 3, 16).eval()
    assert net.grid == (4, 4) and net.patch_size == 4
    mask = torch.zeros(1, 16)
    mask[0, [0, 5, 10, 15]] = 1                                # the diagonal tokens (4x4 px each) masked
    keep = torch.tensor([[i for i in range(16) if mask[0, i] == 0]])
    x = torch.randn(1, 3, 16, 16)
    y = x.clone()
    for i in (0, 5, 10, 15):
        r, c = divmod(i, 4)
        y[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = torch.randn(3, 4, 4) * 10
    with torch.no_grad():
        a, b = net.tokens(x, mask, keep), net.tokens(y, mask, keep)
        assert torch.allclose(a, b, atol=1e-5)                 # visible tokens: independent of masked pixels
        a, b = net.tokens(x), net.tokens(y)
        assert not torch.allclose(a, b, atol=1e-3)             # without the mask, they would see them
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    with pytest.raises(ConfigError, match="convvit_mini"):
        Trainer(run_cfg("convmae", backbone="vit_mini_p4"), ds, tmp_path)


# ---------------------------------------------------------------------------- pooled-token features
def test_pooled_token_features():
    vit = build_backbone("vit_mini_p4", 3, 16).eval()
    with torch.no_grad():
        vit.fc_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        # our ViTs pool by averaging the patch tokens: mean_patch is the backbone's own output ...
        assert torch.allclose(TokenFeatures(vit, "mean_patch")(x), vit(x), atol=1e-5)
        # ... and cls is the [CLS] token through the same final norm
        t = vit.forward_features(x)
        assert torch.allclose(TokenFeatures(vit, "cls")(x), vit.fc_norm(t[:, 0]), atol=1e-5)
    with pytest.raises(ConfigError, match="eval.features=backbone"):
        scored_encoder(build_backbone("cnn4", 3, 16), None, "cls")
    with pytest.raises(ConfigError, match="no projector"):
        scored_encoder(vit, None, "projector")


def test_eval_features_mismatch_is_refused_before_training(tmp_path):
    from harness.run.pretrain import pretrain

    cfg = resolve({"method": "rotnet", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 2, "train.progress": False, "eval.features": "cls", "out_dir": str(tmp_path),
                   "tracking.uri": f"sqlite:///{tmp_path}/m.db"})
    with pytest.raises(ConfigError, match="reads a ViT's tokens"):
        pretrain(cfg)
    assert not list(tmp_path.glob("**/checkpoint.pt"))


# ---------------------------------------------------------------------------- every method: resume
@pytest.mark.parametrize("name", MIM)
def test_resume_equals_uninterrupted(name, tmp_path):
    from test_methods_pretext import assert_resume_equals_uninterrupted

    assert_resume_equals_uninterrupted(run_cfg(name, steps=4, train__checkpoint_every_steps=1), tmp_path)


# ---------------------------------------------------------------------------- Feature Distillation
@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two finished teacher checkpoints of different methods: MAE on a ViT and RotNet on cnn4."""
    root = tmp_path_factory.mktemp("teachers")
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    out = {}
    for name, over in (("mae", {"backbone": "vit_mini_p4", "method_cfg.decoder_dim": 32, "method_cfg.decoder_depth": 1,
                                 "method_cfg.decoder_heads": 4}), ("rotnet", {"backbone": "cnn4"})):
        cfg = resolve({"method": name, "data.name": "synthetic", "budget.kind": "steps", "budget.value": 2,
                       "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32", **over})
        out[name] = str(Trainer(cfg, ds, root / name).fit().checkpoint)
    return out


def fd_cfg(teacher, steps=4, **extra):
    over = {"method": "feature_distillation", "backbone": "vit_mini_p4", "data.name": "synthetic",
            "budget.kind": "steps", "budget.value": steps, "optim.batch_size": 32, "train.progress": False,
            "train.precision": "fp32", "method_cfg.teacher": teacher}
    over.update({k.replace("__", "."): v for k, v in extra.items()})
    return resolve(over)


def test_whitening_is_a_non_parametric_layer_norm_per_location():
    from methods.feature_distillation import whiten

    fmap = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    # mean 2, biased variance 2/3: (x - 2) / sqrt(2/3 + 1e-5)
    expect = (torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3 + 1e-5)).view(1, 3, 1, 1)
    assert torch.allclose(whiten(fmap), expect, atol=1e-6)


def test_feature_distillation_names_its_teacher_and_records_differ_by_teacher(teachers, tmp_path):
    from harness.core.config import flatten
    from harness.core.identity import identity

    ds = synthetic(n_train=64, n_test=16, image_size=16)
    ids = {}
    for name, path in teachers.items():
        t = Trainer(fd_cfg(path), ds, tmp_path)
        p = t.run_params()
        assert p["teacher.method"] == name and len(p["teacher.sha256"]) == 64
        ids[name] = identity({**flatten(t.cfg), **p})[0]
        # the teacher is frozen and outside the student's checkpoint
        assert not any(k.startswith(("_teacher", "teacher")) for k in t.method.state_dict())
    assert ids["mae"] != ids["rotnet"]
    res = Trainer(fd_cfg(teachers["rotnet"]), ds, tmp_path).fit()       # a convnet teacher's map, resized
    assert math.isfinite(res.final_loss)
    with pytest.raises(ConfigError, match="teacher"):
        Trainer(fd_cfg(""), ds, tmp_path)
    from harness.core.errors import CheckpointError
    with pytest.raises(CheckpointError, match="not found"):
        Trainer(fd_cfg("/nonexistent/checkpoint.pt"), ds, tmp_path)


def test_feature_distillation_resumes_and_its_checkpoint_evaluates_without_the_teacher(teachers, tmp_path):
    from harness.train.build import load_trained_method

    ds = synthetic(n_train=64, n_test=16, image_size=16)
    c = fd_cfg(teachers["mae"], steps=4, train__checkpoint_every_steps=1)
    full = Trainer(c, ds, tmp_path / "a")
    full.fit()
    Trainer(c, ds, tmp_path / "b").fit(stop_after=2)
    resumed = Trainer(c, ds, tmp_path / "b")
    res = resumed.fit(resume=True)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    method, _, _ = load_trained_method(res.checkpoint)          # no teacher needed to score the student
    assert torch.equal(method.encoder().state_dict()["pos_embed"], b["backbone.pos_embed"])


def test_feature_distillation_refuses_unfinished_or_changed_teachers(teachers, tmp_path):
    from harness.core.errors import CheckpointError
    from harness.run.pretrain import resolve_run_references

    ds = synthetic(n_train=64, n_test=16, image_size=16)
    cfg = resolve({"method": "rotnet", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 4, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                   "train.checkpoint_every_steps": 1})
    Trainer(cfg, ds, tmp_path / "half").fit(stop_after=2)
    with pytest.raises(CheckpointError, match="unfinished"):
        Trainer(fd_cfg(str(tmp_path / "half" / "checkpoint.pt")), ds, tmp_path)
    # the run layer pins the teacher file's hash in the config; another file under that hash is refused
    pinned = resolve_run_references(fd_cfg(teachers["mae"]))
    assert len(pinned.method_cfg["teacher_sha256"]) == 64
    moved = dict(pinned.method_cfg, teacher=teachers["rotnet"])
    with pytest.raises(CheckpointError, match="changed since"):
        Trainer(fd_cfg(teachers["rotnet"], **{"method_cfg__teacher_sha256": moved["teacher_sha256"]}), ds, tmp_path)


def test_teacher_named_by_a_run_resolves_to_its_checkpoint(tmp_path):
    """EXPERIMENT/METHOD (same seed) and an MLflow run id both resolve, through a real store, to the
    teacher run's checkpoint; the distillation records the teacher's identity."""
    from harness.run.pretrain import pretrain
    from harness.tracking.query import checkpoint_of, fetch_runs

    uri = f"sqlite:///{tmp_path}/m.db"
    base = {"data.name": "synthetic", "budget.kind": "steps", "budget.value": 2, "optim.batch_size": 32,
            "train.progress": False, "train.precision": "fp32", "out_dir": str(tmp_path / "runs"),
            "tracking.uri": uri, "tracking.experiment": "teach"}
    t = pretrain(resolve({**base, "method": "rotnet", "backbone": "cnn4"}), evaluate=False)
    ckpt = checkpoint_of("teach/rotnet", 0, uri)
    assert ckpt == t["checkpoint"] or Path(ckpt).resolve() == Path(t["checkpoint"]).resolve()
    assert checkpoint_of(t["run_id"], 0, uri) == ckpt
    assert checkpoint_of("not-a-reference", 0, uri) is None
    with pytest.raises(ConfigError, match="no finished rotnet run with seed 1"):
        checkpoint_of("teach/rotnet", 1, uri)
    pretrain(resolve({**base, "method": "feature_distillation", "backbone": "vit_mini_p4",
                      "method_cfg.teacher": "teach/rotnet"}), evaluate=False)
    runs = fetch_runs(["teach"], uri=uri)
    fd = runs[runs["tags.method"] == "feature_distillation"].iloc[0]
    assert fd["params.teacher.method"] == "rotnet" and len(fd["params.teacher.sha256"]) == 64
