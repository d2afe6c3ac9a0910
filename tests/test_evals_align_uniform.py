import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from evals.align_uniform import align_loss, align_uniform_eval, uniform_loss


def direct_uniform(x, t=2.0):
    pairs = list(itertools.combinations(range(len(x)), 2))
    return math.log(sum(math.exp(-t * float(((x[i] - x[j]) ** 2).sum())) for i, j in pairs) / len(pairs))


@pytest.fixture
def feats():
    g = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(60, 16, generator=g, dtype=torch.float64), dim=1)


def test_align_equals_formula(feats):
    y = F.normalize(feats + 0.3 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1)
    want = sum(float(((a - b) ** 2).sum()) for a, b in zip(feats, y)) / len(y)
    assert align_loss(feats, y).item() == pytest.approx(want, rel=1e-10)
    want1 = sum(float(((a - b) ** 2).sum()) ** 0.5 for a, b in zip(feats, y)) / len(y)
    assert align_loss(feats, y, alpha=1).item() == pytest.approx(want1, rel=1e-10)
    assert align_loss(feats, feats).item() == 0.0


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_uniform_exact_and_chunked_equal_formula(feats, chunk):
    want = direct_uniform(feats)
    assert uniform_loss(feats, chunk_size=chunk).item() == pytest.approx(want, rel=1e-9)
    assert uniform_loss(feats, t=0.5, chunk_size=chunk).item() == pytest.approx(direct_uniform(feats, 0.5), rel=1e-9)


def test_uniform_sampled_is_seeded_and_close(feats):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = uniform_loss(feats, num_pairs=20000, generator=g())
    assert a.item() == uniform_loss(feats, num_pairs=20000, generator=g()).item()
    assert a.item() == pytest.approx(direct_uniform(feats), abs=0.02)


def test_uniform_is_differentiable_and_bounded(feats):
    x = feats.clone().requires_grad_(True)
    loss = uniform_loss(x) + align_loss(x, x.flip(0))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert -4.0 <= uniform_loss(feats).item() <= 0.0  # ||x - y||^2 in [0, 4] on the unit sphere


def test_align_uniform_eval_is_seeded(synthetic):
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    kw = dict(num_images=64, seed=0, batch_size=32, precision="fp32", progress=False)
    a = align_uniform_eval(enc, synthetic.x_test, synthetic.mean, synthetic.std, **kw)
    b = align_uniform_eval(enc, synthetic.x_test, synthetic.mean, synthetic.std, **kw)
    assert a == b and set(a) == {"align", "uniform"}
    assert 0 < a["align"] < 4 and -4 < a["uniform"] < 0
    c = align_uniform_eval(enc, synthetic.x_test, synthetic.mean, synthetic.std, **{**kw, "seed": 1})
    assert c["align"] != a["align"]
