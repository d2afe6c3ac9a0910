"""Background augmentations (views.background) and the background-robustness protocol (evals.background)."""

import pytest
import torch

from evals.background import SwappedImages, background_eval, mask_images, probe_top1, swap_partners
from evals.config import EvalConfig
from evals.evaluate import evaluate
from evals.linear import Standardizer, linear_probe
from harness.core.config import apply_dict
from harness.core.errors import ConfigError
from harness.core.identity import identity
from harness.core.schema import ViewsConfig
from harness.data.dataset import ImageDataset
from harness.data.saliency import composite, derangement, foreground_mask, otsu_threshold, saliency_map
from harness.data.views import BackgroundSpec, ViewRecipe, ViewSpec, replace_background
from harness.train.config import resolve
from harness.train.trainer import Trainer

BASE = {"method": "simclr", "backbone": "cnn4", "data.name": "synthetic", "optim.batch_size": 32,
        "train.progress": False, "train.precision": "fp32", "method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 32}


def square_image(channels: int, side: int = 32, sq: int = 10, seed: int = 0):
    """A bright square on a flat, textured background, and the square's true mask."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.05 * torch.rand(1, channels, side, side, generator=g)
    x[:, :, 7:7 + sq, 12:12 + sq] = 0.9
    gt = torch.zeros(1, 1, side, side, dtype=torch.bool)
    gt[:, :, 7:7 + sq, 12:12 + sq] = True
    return x, gt


def iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


# ----------------------------------------------------------------------------- masks and the swap


@pytest.mark.parametrize("channels", [1, 3])
def test_saliency_mask_finds_a_bright_square(channels):
    x, gt = square_image(channels)
    assert iou(foreground_mask(x, "frequency_tuned", "otsu"), gt) > 0.8
    u8 = (x * 255).round().to(torch.uint8)                      # uint8 input is scaled the same way
    assert iou(foreground_mask(u8, "frequency_tuned", "otsu"), gt) > 0.8
    # at a quantile equal to the background's share the mask is the square too
    assert iou(foreground_mask(x, "frequency_tuned", "quantile", 1 - 100 / 1024), gt) > 0.8


def test_spectral_residual_peaks_at_a_small_object():
    """Hou & Zhang's map marks the unexpected: its maximum is on (or next to) a small square."""
    x, gt = square_image(3, side=32, sq=4)
    s = saliency_map(x, "spectral_residual")[0, 0]
    near = torch.nn.functional.max_pool2d(gt.float(), 5, stride=1, padding=2)[0, 0] > 0
    assert near.flatten()[s.flatten().argmax()]
    assert s.min() == 0 and s.max() == 1                      # min-max normalised per image


def test_otsu_threshold_of_two_levels_separates_them():
    s = torch.tensor([[0.1] * 6 + [0.9] * 2]).view(1, 1, 2, 4)
    t = float(otsu_threshold(s))
    assert 0.1 < t <= 0.9                                     # the split between the two modes
    assert torch.equal(s > t, s > 0.5)


def test_flat_image_is_all_foreground_and_masks_are_deterministic():
    flat = torch.full((2, 3, 8, 8), 0.5)
    assert foreground_mask(flat).all()                         # nothing to separate: nothing replaced
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(foreground_mask(x), foreground_mask(x.clone()))


def test_composite_keeps_the_foreground_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 8, 8), generator=g, dtype=torch.uint8)
    other = torch.randint(0, 256, (3, 3, 8, 8), generator=g, dtype=torch.uint8)
    mask = torch.rand(3, 1, 8, 8, generator=g) < 0.5
    out = composite(x, mask, other)
    m = mask.expand_as(x)
    assert torch.equal(out[m], x[m]) and torch.equal(out[~m], other[~m])


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 17):
        p = derangement(n, torch.Generator().manual_seed(n))
        assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()


@pytest.mark.parametrize("channels", [1, 3])
def test_random_background_takes_the_partner_pixels_where_the_mask_is_zero(channels):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, channels, 12, 12, generator=g)
    mask = torch.rand(6, 1, 12, 12, generator=g) < 0.4
    spec = BackgroundSpec("random", p=1.0)
    out = replace_background(x, mask, spec, torch.Generator().manual_seed(7), mean=[0.5] * channels)
    ref = torch.Generator().manual_seed(7)
    torch.rand(6, generator=ref)                               # the apply draw, then the partners
    partner = derangement(6, ref)
    m = mask.expand_as(x)
    assert torch.equal(out[m], x[m])
    assert torch.equal(out[~m], x[partner][~m])


def test_constant_noise_and_probability():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 8, generator=g)
    mask = torch.zeros(5, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 2:5, 2:5] = True
    m = mask.expand_as(x)
    mean = [0.1, 0.2, 0.3]
    out = replace_background(x, mask, BackgroundSpec("constant", p=1.0), torch.Generator().manual_seed(1), mean)
    assert torch.equal(out[m], x[m])
    assert torch.equal(out[~m], torch.tensor(mean).view(1, 3, 1, 1).expand_as(x)[~m])
    noise = replace_background(x, mask, BackgroundSpec("noise", p=1.0), torch.Generator().manual_seed(1), mean)
    assert torch.equal(noise[m], x[m]) and not torch.equal(noise[~m], x[~m])
    assert noise.min() >= 0 and noise.max() <= 1
    assert torch.equal(replace_background(x, mask, BackgroundSpec("noise", p=0.0), torch.Generator(), mean), x)
    # p = 0.5: exactly the images whose draw is below p are changed
    half = replace_background(x, mask, BackgroundSpec("constant", p=0.5), torch.Generator().manual_seed(2), mean)
    drawn = torch.rand(5, generator=torch.Generator().manual_seed(2)) < 0.5
    changed = (half != x).flatten(1).any(1)
    assert torch.equal(changed, drawn)


# ----------------------------------------------------------------------------- the view option


def recipe(background: str, views: str = "all", p: float = 1.0) -> ViewRecipe:
    vc = ViewsConfig()
    apply_dict(vc, {"background": background, "background_p": p, "background_views": views})
    r = ViewRecipe.simclr(16).with_background(vc)
    r.check(3, 16, "simclr")
    return r


def views_of(r, x, seed=5):
    v = r(x, torch.Generator().manual_seed(seed), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return v.images


def test_views_are_seeded_and_off_is_the_old_recipe():
    x = torch.randint(0, 256, (8, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    on = recipe("random")
    a, b = views_of(on, x), views_of(on, x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))          # same step, same views
    plain, off = ViewRecipe.simclr(16), recipe("none")
    assert all(torch.equal(u, v) for u, v in zip(views_of(plain, x), views_of(off, x)))   # no extra draws
    assert not torch.equal(views_of(plain, x)[0], a[0])
    first = views_of(recipe("random", "first"), x)
    assert not torch.equal(first[0], views_of(plain, x)[0])
    assert any("background augmentation: random" in n for n in on.notes())


def test_grayscale_views_with_background():
    x = torch.randint(0, 256, (4, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    vc = ViewsConfig()
    apply_dict(vc, {"background": "noise"})
    r = ViewRecipe.simclr(16).with_background(vc)
    r.check(1, 16, "simclr")
    imgs = r(x, torch.Generator().manual_seed(0), (0.5,), (0.25,)).images
    assert all(v.shape == (4, 1, 16, 16) and torch.isfinite(v).all() for v in imgs)


def test_resume_with_background_equals_uninterrupted(synthetic, tmp_path):
    c = resolve({**BASE, "optim.batch_size": 16, "budget.kind": "steps", "budget.value": 3,
                 "views.background": "random", "views.background_p": 0.5})
    full = Trainer(c, synthetic, tmp_path / "a")
    assert full.recipe.background == BackgroundSpec("random", 0.5)   # the run's views.* reached the recipe
    full.fit()
    part = Trainer(c, synthetic, tmp_path / "b")
    part.fit(stop_after=1)
    resumed = Trainer(c, synthetic, tmp_path / "b")
    resumed.fit(resume=True)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_identity_counts_the_option_only_when_on():
    base = {"method": "simclr", "seed": "0", "optim.batch_size": "32"}
    off = {**base, "views.background": "none", "views.background_p": "0.2", "views.saliency": "frequency_tuned"}
    on = {**off, "views.background": "random"}
    on_sr = {**on, "views.saliency": "spectral_residual"}
    assert identity(off) == identity(base)          # records logged before views.* keep their identity
    assert identity(on)[0] != identity(off)[0]
    assert identity(on_sr)[0] != identity(on)[0]    # the mask method is part of the identity


@pytest.mark.parametrize("key, value", [("views.background", "bogus"), ("views.background_p", 1.5),
                                        ("views.background_views", "third"), ("views.saliency", "deepusps"),
                                        ("views.saliency_quantile", 1.0), ("eval.bg_saliency", "x"),
                                        ("eval.bg_threshold", "mean")])
def test_bad_values_are_one_line_errors(key, value):
    with pytest.raises(ConfigError) as e:
        resolve({key: value})
    assert "\n" not in str(e.value) and key in str(e.value)


def test_second_view_of_a_one_view_recipe_is_refused():
    vc = ViewsConfig()
    apply_dict(vc, {"background": "random", "background_views": "second"})
    with pytest.raises(ConfigError, match="background_views=second"):
        ViewRecipe.light(16).with_background(vc).check(3, 16, "rotnet")


# ----------------------------------------------------------------------------- the protocol


def tiny_gray(n_train=40, n_test=12):
    """1-channel images: class 0 a bright square left, class 1 right, on textured backgrounds."""
    g = torch.Generator().manual_seed(0)

    def make(n):
        y = torch.arange(n) % 2
        x = 0.2 + 0.1 * torch.rand(n, 1, 12, 12, generator=g)
        for i in range(n):
            c0 = 1 if y[i] == 0 else 7
            x[i, :, 4:8, c0:c0 + 4] = 0.9
        return (x * 255).round().to(torch.uint8), y

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return ImageDataset("tiny", xtr, ytr, xte, yte, 2, source="generated")


class Flat(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_probe_top1_by_hand():
    probe = {"std": Standardizer(torch.zeros(2), torch.ones(2)), "w": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
             "b": torch.zeros(2)}
    feats = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 0.0]])   # argmax: 0, 1, 0, 0
    assert probe_top1(probe, feats, [0, 1, 1, 1]) == 50.0


def test_swapped_images_by_hand():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.uint8).view(2, 1, 2, 2)          # [[0,1],[2,3]], [[4,5],[6,7]]
    masks = torch.tensor([[[[1, 0], [0, 0]]], [[[0, 0], [0, 1]]]], dtype=torch.bool)
    s = SwappedImages(x, masks, torch.tensor([1, 0]))
    assert s[0:2].tolist() == [[[[0, 5], [6, 7]]], [[[0, 1], [2, 7]]]]
    assert len(s) == 2 and s[torch.tensor([1])].tolist() == [[[[0, 1], [2, 7]]]]


def test_protocol_equals_a_reference_computation():
    ds = tiny_gray()
    enc = Flat()
    cfg = EvalConfig(linear_epochs=5, batch_size=5)
    feats = {s: enc((ds.split(s)[0].float() / 255 - ds.mean[0]) / ds.std[0]) for s in ("train", "test")}
    out = background_eval(enc, ds, feats["train"], feats["test"], cfg, seed=0, progress=False, precision="fp32")
    # the reference: per-image masks, the partner of each image, the composite pixel by pixel, the same probe
    masks = foreground_mask(ds.x_test, cfg.bg_saliency, cfg.bg_threshold, cfg.bg_quantile)
    assert torch.equal(mask_images(ds.x_test, cfg.bg_saliency, cfg.bg_threshold, cfg.bg_quantile, 5), masks)
    partner = swap_partners(len(ds.x_test), cfg.bg_seed)
    swapped = ds.x_test.clone()
    for i in range(len(swapped)):
        j = int(partner[i])
        assert j != i
        for r in range(12):
            for c in range(12):
                if not masks[i, 0, r, c]:
                    swapped[i, 0, r, c] = ds.x_test[j, 0, r, c]
    assert not torch.equal(swapped, ds.x_test) and 5 < 100 * masks.float().mean() < 50   # the swap swaps
    probe = {}
    lin = linear_probe(feats["train"], ds.y_train, feats["test"], ds.y_test, 2, cfg.linear_epochs,
                       cfg.holdout_fraction, seed=0, fitted=probe)
    zs = (swapped.float() / 255 - ds.mean[0]) / ds.std[0]
    pred = (probe["std"](zs.flatten(1)) @ probe["w"] + probe["b"]).argmax(1)
    acc_swapped = 100.0 * (pred == ds.y_test).double().mean().item()
    assert out["bg/linear_top1"] == pytest.approx(lin["linear/top1"])
    assert out["bg/linear_top1_swapped"] == pytest.approx(acc_swapped)
    assert out["bg/drop"] == pytest.approx(lin["linear/top1"] - acc_swapped)
    assert out["bg/foreground"] == pytest.approx(100.0 * masks.float().mean().item())


def test_protocol_reuses_the_linear_probe_through_the_evaluator():
    ds = tiny_gray()
    both = evaluate(Flat(), ds, EvalConfig(protocols=["linear", "background"], linear_epochs=5), progress=False)
    alone = evaluate(Flat(), ds, EvalConfig(protocols=["background"], linear_epochs=5), progress=False)
    assert both["bg/linear_top1"] == both["linear/top1"]
    assert all(both[k] == alone[k] for k in ("bg/linear_top1", "bg/linear_top1_swapped", "bg/drop"))
    assert both["eval/bg_saliency"] == "frequency_tuned" and "eval/time/background" in both


def test_the_view_is_the_composite_before_the_crop():
    """With an identity crop and no colour ops, view 0 is exactly the source with its background replaced
    (masks from the un-augmented images), normalised; view 1 (not named) is the plain source."""
    x, _ = square_image(3, side=16, sq=6)
    x = torch.cat([x, x.flip(-1)])
    u8 = (x * 255).round().to(torch.uint8)
    ident = ViewSpec(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, jitter_p=0.0, gray_p=0.0)
    vc = ViewsConfig()
    apply_dict(vc, {"background": "constant", "background_p": 1.0, "background_views": "first"})
    r = ViewRecipe([ident, ident]).with_background(vc)
    r.check(3, 16, "test")
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.2, 0.2)
    v = r(u8, torch.Generator().manual_seed(0), mean, std).images
    xf = u8.float() / 255
    m = foreground_mask(xf)
    want = composite(xf, m, torch.tensor(mean).view(1, 3, 1, 1))
    norm = lambda t: (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)  # noqa: E731
    assert torch.allclose(v[0], norm(want), atol=1e-4)
    assert torch.allclose(v[1], norm(xf), atol=1e-4)
    assert 0 < m.float().mean() < 0.5
