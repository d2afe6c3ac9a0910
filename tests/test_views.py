import pytest
import torch

from harness.core.errors import ConfigError
from harness.data.views import ViewRecipe, ViewSpec, augment, gaussian_blur, random_resized_crop


def _batch(c=3, n=8, s=16):
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_views_are_seeded_and_shaped():
    x = _batch()
    r = ViewRecipe.simclr(12)
    a = r(x, torch.Generator().manual_seed(5), (0.5,) * 3, (0.25,) * 3)
    b = r(x, torch.Generator().manual_seed(5), (0.5,) * 3, (0.25,) * 3)
    c = r(x, torch.Generator().manual_seed(6), (0.5,) * 3, (0.25,) * 3)
    assert len(a.images) == 2 and a.images[0].shape == (8, 3, 12, 12)
    assert all(torch.equal(u, v) for u, v in zip(a.images, b.images))
    assert not torch.equal(a.images[0], c.images[0])
    assert a.boxes[0].shape == (8, 4) and (a.boxes[0][:, 2:] <= 1 + 1e-6).all() and (a.boxes[0][:, :2] >= 0).all()


def test_full_crop_without_flip_is_identity():
    x = torch.rand(2, 3, 8, 8)
    out, box, flip = random_resized_crop(x, 8, (1.0, 1.0), (1.0, 1.0), 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)
    assert torch.allclose(box, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))
    out, _, flip = random_resized_crop(x, 8, (1.0, 1.0), (1.0, 1.0), 1.0, torch.Generator().manual_seed(0))
    assert flip.all() and torch.allclose(out, x.flip(-1), atol=1e-5)


def test_blur_preserves_mean_and_smooths():
    x = torch.rand(4, 3, 32, 32)
    y = gaussian_blur(x, 1.0, (1.5, 1.5), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.var() < x.var()
    assert abs(float(y.mean() - x.mean())) < 0.02


def test_grayscale_policy_is_explicit():
    r = ViewRecipe.simclr(16)
    r.check(1, 16, "simclr")
    assert any("saturation/hue" in n for n in r.notes())
    v = r(_batch(c=1), torch.Generator().manual_seed(0), (0.5,), (0.25,))
    assert v.images[0].shape == (8, 1, 16, 16)
    refuse = ViewRecipe.simclr(16)
    refuse.color = "refuse"
    with pytest.raises(ConfigError, match="needs colour images"):
        refuse.check(1, 16, "colorization")
    light = ViewRecipe.light(16)
    light.check(1, 16, "rotnet")
    assert light.notes() == []


def test_solarize_and_gray_ops_apply():
    x = torch.rand(16, 3, 8, 8)
    spec = ViewSpec(8, scale=(1, 1), ratio=(1, 1), flip=0, jitter_p=0, gray_p=1.0, solarize_p=0)
    v, _, _ = augment(x, spec, torch.Generator().manual_seed(0))
    assert torch.allclose(v[:, 0], v[:, 1], atol=1e-6)
    spec = ViewSpec(8, scale=(1, 1), ratio=(1, 1), flip=0, jitter_p=0, gray_p=0, solarize_p=1.0)
    v, _, _ = augment(x, spec, torch.Generator().manual_seed(0))
    assert torch.allclose(v, torch.where(x >= 0.5, 1 - x, x), atol=1e-5)
