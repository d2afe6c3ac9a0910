"""The pretext family (issue 15): each method's loss or target construction against a hand-computed
case, its requirements refused with one clear error, and short runs whose buffers (permutation sets,
seed patches, colour priors, instance classifiers) come back from the checkpoint."""

import math

import pytest
import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.data.sources import synthetic
from harness.data.tiles import hamming_permutations, split_tiles
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.colorization import LightnessEncoder, bin_lookup, nearest_bin
from methods.context_prediction import NEIGHBOURS, neighbour_labels, sample_pairs
from methods.counting import downsample
from methods.jigsaw import shuffle
from methods.jigsaw_clustering import make_montages, region_features
from methods.losses import (
    cosine_classifier_logits,
    counting_loss,
    supervised_contrastive,
    weighted_soft_cross_entropy,
)
from methods.mp3 import kv_mask
from methods.pic import window_rows

# small settings that fit the 16-px synthetic images and keep the runs to a few seconds
SMALL = {
    "exemplar_cnn": {"method_cfg.num_classes": 40, "method_cfg.patch_size": 12},
    "context_prediction": {"method_cfg.view_size": 32, "method_cfg.gap_fraction": 0.25, "method_cfg.head_hidden": 64},
    "jigsaw": {"method_cfg.view_size": 32, "method_cfg.num_permutations": 20, "method_cfg.tile_dim": 32,
               "method_cfg.head_hidden": 64},
    "colorization": {"method_cfg.head_hidden": 32},
    "counting": {"method_cfg.count_dim": 64},
    "jigsaw_clustering": {"method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 32},
    "pic": {"method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 32, "method_cfg.classifier_init": "features"},
    "mp3": {"backbone": "vit_mini_p4"},
}
PRETEXT = sorted(SMALL)


def run_cfg(name, steps=4, **extra):
    over = {"method": name, "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps", "budget.value": steps,
            "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32", **SMALL[name]}
    over.update({k.replace("__", "."): v for k, v in extra.items()})
    return resolve(over)


# ---------------------------------------------------------------------------- context prediction
def test_context_prediction_labels_of_known_neighbours():
    # row-major 3x3 cells: 0 1 2 / 3 [4] 5 / 6 7 8 -> labels 0 1 2 / 3 - 4 / 5 6 7
    assert neighbour_labels(torch.tensor([0, 1, 2, 3, 5, 6, 7, 8])).tolist() == list(range(8))
    assert neighbour_labels(torch.tensor([5, 8, 0])).tolist() == [4, 7, 0]
    assert neighbour_labels(torch.tensor([4])).tolist() == [-1]          # the centre is not a neighbour


def test_context_prediction_pairs_hold_the_labelled_neighbour():
    feats = torch.arange(9, dtype=torch.float32).view(1, 9, 1).repeat(3, 1, 2) + torch.arange(3).view(3, 1, 1) * 100
    centre, neigh, y = sample_pairs(feats, 8, torch.Generator().manual_seed(0))
    assert centre[:, 0].tolist() == [4.0 + 100 * (i // 8) for i in range(24)]
    cell = neigh[:, 0] - torch.arange(3).repeat_interleave(8) * 100                 # the neighbour's cell index
    assert cell.tolist() == [float(NEIGHBOURS[int(v)]) for v in y]                  # the label names that cell
    assert sorted(y[:8].tolist()) == list(range(8))                                  # k = 8: every neighbour once
    _, _, y1 = sample_pairs(feats, 1, torch.Generator().manual_seed(0))
    assert y1.shape == (3,)


def test_context_prediction_refuses_patches_too_small():
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    with pytest.raises(ConfigError, match="view_size"):
        Trainer(run_cfg("context_prediction", method_cfg__view_size=0, method_cfg__gap_fraction=0.5), ds, "unused")
    # 6-px patches pass the grid check but not cnn4's three 2x2 poolings: refused before training
    with pytest.raises(ConfigError, match="context_prediction: patches of 6 px are too small for the backbone ConvNet4"):
        Trainer(run_cfg("context_prediction", method_cfg__view_size=24), ds, "unused")


# ---------------------------------------------------------------------------- jigsaw
def test_jigsaw_shuffle_applies_the_labelled_permutation():
    tiles = torch.arange(9, dtype=torch.float32).view(1, 9, 1, 1, 1).repeat(4, 1, 1, 2, 2)
    perms = hamming_permutations(10, 9, seed=3)
    out, y = shuffle(tiles, perms, torch.Generator().manual_seed(0))
    for i in range(4):
        assert out[i, :, 0, 0, 0].tolist() == [float(v) for v in perms[y[i]].tolist()]


def test_jigsaw_permutation_set_is_a_checkpointed_buffer(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    tr = Trainer(run_cfg("jigsaw", steps=2), ds, tmp_path)
    assert torch.equal(tr.method.perms, hamming_permutations(20, 9, 0))
    res = tr.fit()
    state = torch.load(res.checkpoint, weights_only=True)
    assert torch.equal(state["model"]["perms"], hamming_permutations(20, 9, 0))


# ---------------------------------------------------------------------------- colorization
def test_colorization_refuses_grayscale_before_training():
    ds = synthetic(n_train=64, n_test=16, image_size=16, channels=1)
    with pytest.raises(ConfigError, match="needs colour images; dataset 'synthetic' has 1 channel"):
        Trainer(run_cfg("colorization"), ds, "unused")


def test_weighted_soft_cross_entropy_hand_case():
    logits = torch.tensor([[0.0, math.log(3.0)]])            # softmax: (1/4, 3/4)
    target = torch.tensor([[0.5, 0.5]])
    hand = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert weighted_soft_cross_entropy(logits, target).item() == pytest.approx(hand)
    assert weighted_soft_cross_entropy(logits, target, torch.tensor([2.0])).item() == pytest.approx(2 * hand)


def test_nearest_bin_lookup_matches_brute_force():
    from harness.data.colour import ab_gamut_bins

    bins = ab_gamut_bins()
    lut = bin_lookup(bins)
    ab = (torch.rand(500, 2, generator=torch.Generator().manual_seed(0)) - 0.5) * 240
    got = nearest_bin(ab, lut)
    brute = torch.cdist(torch.round(ab / 10) * 10, bins).argmin(1)      # nearest bin of the 10-grid cell
    assert torch.equal(got, brute)


def test_colorization_prior_pass_and_lightness_encoder(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    tr = Trainer(run_cfg("colorization", steps=2), ds, tmp_path)
    tr.fit()
    m = tr.method
    assert m.counts.sum().item() == 64 * 16 * 16                      # every training pixel counted once
    from harness.data.colour import smoothed_prior

    prior = smoothed_prior(m.counts, m.bins, 5.0)
    assert (prior * m.weights).sum().item() == pytest.approx(1.0, rel=1e-5)   # E_p~[w] = 1
    # the scored encoder sees only lightness: a colour image and the gray image of the same L agree
    from harness.data.colour import lab_to_rgb, rgb_to_lab

    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lab = rgb_to_lab(rgb)
    gray = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1))
    enc = m.encoder().eval()
    assert isinstance(enc, LightnessEncoder) and enc.num_features == m.backbone.num_features
    norm = m.info.normalize
    assert torch.allclose(enc(norm(rgb)), enc(norm(gray)), atol=1e-3)
    loaded, _, _ = load_trained_method(tmp_path / "checkpoint.pt")
    assert torch.equal(loaded.counts, m.counts) and torch.equal(loaded.weights, m.weights)


# ---------------------------------------------------------------------------- counting
def test_counting_loss_on_a_two_by_two_toy():
    # x = [[1, 2], [3, 4]], a toy counter phi(z) = relu(sum of pixels): the tiles are the 4 pixels,
    # sum_i phi(T_i x) = 10; D x = mean = 2.5, phi = 2.5; y = [[0, 0], [0, 8]]: phi(D y) = 2
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    y = torch.tensor([[0.0, 0.0], [0.0, 8.0]]).view(1, 1, 2, 2)

    def phi(z):
        return F.relu(z.sum(dim=(-3, -2, -1))).unsqueeze(-1)

    tiles = split_tiles(x, 2)                                            # (1, 4, 1, 1, 1)
    assert tiles.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    args = phi(downsample(x)), phi(tiles), phi(downsample(y))
    assert args[0].item() == 2.5 and args[2].item() == 2.0
    # (2.5 - 10)^2 = 56.25; (2 - 10)^2 = 64 > c = 10: the hinge is 0
    assert counting_loss(*args, margin=10.0).item() == pytest.approx(56.25)
    # with c = 100 the hinge adds 100 - 64 = 36
    assert counting_loss(*args, margin=100.0).item() == pytest.approx(92.25)


# ---------------------------------------------------------------------------- exemplar-cnn
def test_exemplar_seed_patches_are_cut_at_high_gradient_and_checkpointed(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    tr = Trainer(run_cfg("exemplar_cnn", steps=2), ds, tmp_path)
    idx = tr.method.seed_index.clone()
    assert len(idx) == 40 and len(set(idx.tolist())) == 40
    tr.fit()
    from harness.data.tiles import crop_at, gradient_energy, window_energy_argmax

    imgs = ds.x_train[idx].float() / 255
    y0, x0 = window_energy_argmax(gradient_energy(imgs), 12)
    want = (crop_at(imgs, y0, x0, 12) * 255).round().to(torch.uint8)
    assert torch.equal(tr.method.seed_patches, want)
    loaded, _, _ = load_trained_method(tmp_path / "checkpoint.pt")
    assert torch.equal(loaded.seed_index, idx) and torch.equal(loaded.seed_patches, want)


def test_exemplar_refuses_more_classes_than_images():
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    with pytest.raises(ConfigError, match="num_classes=100 surrogate classes need as many training images"):
        Trainer(run_cfg("exemplar_cnn", method_cfg__num_classes=100), ds, "unused")


# ---------------------------------------------------------------------------- jigsaw clustering
def test_montage_bookkeeping():
    # 2 images of 4x4, tiles of 2x2 with constant value 10 * image + position
    x = torch.zeros(2, 1, 4, 4)
    for b in range(2):
        for p in range(4):
            r, c = divmod(p, 2)
            x[b, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] = 10 * b + p
    montages, source, position = make_montages(x, 2, torch.Generator().manual_seed(0))
    slots = split_tiles(montages, 2).flatten(0, 1)[:, 0, 0, 0]           # the value in each slot, slot order
    assert slots.tolist() == (10 * source + position).float().tolist()
    assert sorted(slots.tolist()) == [0, 1, 2, 3, 10, 11, 12, 13]      # every tile used once
    # the feature of slot j is the pooled map under it
    f = region_features(montages, 2)
    assert f[:, 0].tolist() == slots.tolist()


def test_supervised_contrastive_hand_case():
    # z = e1, e1, e2, e2 in groups 0, 0, 1, 1, tau = 1: each anchor's similarities to the others are
    # (1, 0, 0) with its positive first: loss = -(1 - log(e + 2)) for every anchor
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    got = supervised_contrastive(z, torch.tensor([0, 0, 1, 1]), 1.0).item()
    assert got == pytest.approx(math.log(math.e + 2) - 1)


# ---------------------------------------------------------------------------- PIC
def test_pic_cosine_logits_and_window_rows():
    f = torch.tensor([[3.0, 4.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert cosine_classifier_logits(f, w, 0.5).tolist()[0] == pytest.approx([0.6 / 0.5, 0.8 / 0.5])
    # n = 10, window 4 at step 2 starts at row 8: rows 8 9 0 1; 9 is already the batch's own row
    assert window_rows(torch.tensor([3, 9]), 10, 4, 2).tolist() == [3, 9, 8, 0, 1]


def test_pic_instance_classifier_moves_only_where_it_learns(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    tr = Trainer(run_cfg("pic", steps=2), ds, tmp_path)
    before = tr.method.classifier.detach().clone()
    assert before.shape == (64, 32)
    tr.fit(stop_after=0)                 # only the pass that sets each row to its image's initial feature
    rows = tr.method.classifier.detach()
    assert torch.allclose(rows.norm(dim=1), torch.ones(64), atol=1e-5) and not torch.allclose(rows, before)
    tr = Trainer(run_cfg("pic", steps=2), ds, tmp_path / "full")
    before = tr.method.classifier.detach().clone()
    tr.fit()
    assert not torch.equal(before, tr.method.classifier.detach())
    loaded, _, _ = load_trained_method(tmp_path / "full" / "checkpoint.pt")
    assert torch.equal(loaded.classifier, tr.method.classifier)


# ---------------------------------------------------------------------------- MP3
def test_kv_mask_keeps_cls_and_a_quarter_of_the_patches():
    m = kv_mask(3, 64, 1, 0.75, torch.Generator().manual_seed(0), "cpu")
    assert m.shape == (3, 1, 1, 65) and m[:, 0, 0, 0].all()
    assert m[:, 0, 0, 1:].sum(1).tolist() == [16, 16, 16]
    assert not torch.equal(m[0], m[1])


def test_masked_attention_equals_attention_over_the_kept_keys():
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    att = Attention(8, num_heads=2).eval()
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True, False, True, False, True], [True, True, False, False, False]]).view(2, 1, 1, 5)
    got = att(x, attn_mask=mask)
    for b in range(2):
        keep = mask[b, 0, 0]
        qkv = att.qkv(x[b:b + 1]).reshape(1, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1][:, :, keep], qkv[2][:, :, keep]
        a = (q @ k.transpose(-2, -1) / math.sqrt(4)).softmax(-1) @ v         # keys/values of kept tokens only
        want = att.proj(a.transpose(1, 2).reshape(1, 5, 8))
        assert torch.allclose(got[b:b + 1], want, atol=1e-5)


def test_mp3_has_no_positions_in_pretraining_and_learns_them_in_fine_tuning(tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    tr = Trainer(run_cfg("mp3", steps=2), ds, tmp_path)
    pe = tr.method.backbone.pos_embed
    assert all(p is not pe for g in tr.optimizer.param_groups for p in g["params"])
    tr.fit()
    assert pe.abs().max().item() == 0.0
    import copy

    enc = copy.deepcopy(tr.method.encoder())
    assert enc.pos_embed.requires_grad          # the fine-tuning protocol trains it from zero


def test_mp3_refuses_a_convnet():
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    with pytest.raises(ConfigError, match="needs a ViT backbone"):
        Trainer(run_cfg("mp3", backbone="cnn4"), ds, "unused")


# ---------------------------------------------------------------------------- every method: resume
@pytest.mark.parametrize("name", PRETEXT)
def test_resume_equals_uninterrupted(name, tmp_path):
    """A run stopped after its step-2 checkpoint (as a kill would leave it) and resumed ends with the
    same weights and buffers as an uninterrupted one (test_kills_pretext.py does it with SIGKILL)."""
    assert_resume_equals_uninterrupted(run_cfg(name, steps=4, train__checkpoint_every_steps=1), tmp_path)


def assert_resume_equals_uninterrupted(c, tmp_path):
    """Train ``c`` uninterrupted, and stopped after step 2 then resumed: the same state_dict, bit for bit."""
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    full = Trainer(c, ds, tmp_path / "a")
    full.fit()
    part = Trainer(c, ds, tmp_path / "b")
    part.fit(stop_after=2)
    resumed = Trainer(c, ds, tmp_path / "b")
    resumed.fit(resume=True)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, bad
