import numpy as np
import pytest
import torch

from evals.features import FeatureCache, cached_features, extract_features, weights_hash
from harness.data.views import normalize
from harness.models.backbones import build_backbone


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return build_backbone("cnn4", 3, 16)


def test_extraction_equals_plain_forward(encoder, synthetic):
    x = synthetic.x_test[:70]
    encoder.train()
    f = extract_features(encoder, x, synthetic.mean, synthetic.std, batch_size=32, precision="fp32", progress=False)
    assert encoder.training  # mode restored
    encoder.eval()
    with torch.no_grad():
        ref = encoder(normalize(x, synthetic.mean, synthetic.std))
    assert f.dtype == torch.float32 and f.shape == (70, encoder.num_features)
    torch.testing.assert_close(f, ref, rtol=1e-4, atol=1e-5)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        fb = extract_features(encoder, x, synthetic.mean, synthetic.std, batch_size=32, precision="bf16", progress=False)
        assert fb.dtype == torch.float32 and torch.nn.functional.cosine_similarity(fb, ref).min() > 0.98


def test_cache_hit_and_invalidation(encoder, synthetic, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    kw = dict(batch_size=64, precision="fp32", progress=False)
    a = cached_features(encoder, synthetic, "train", cache, **kw)
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1 and not list(tmp_path.rglob(".tmp-*"))
    assert np.array_equal(np.load(files[0]), a.numpy())

    import evals.features as fm

    calls = []
    monkeypatch.setattr(fm, "extract_features", lambda *a_, **k: calls.append(1) or fm.extract_features(*a_, **k))
    b = cached_features(encoder, synthetic, "train", cache, **kw)
    assert torch.equal(a, b) and not calls  # a hit: no forward pass

    h = weights_hash(encoder)
    with torch.no_grad():
        next(encoder.parameters()).add_(0.01)
    assert weights_hash(encoder) != h
    monkeypatch.undo()
    c = cached_features(encoder, synthetic, "train", cache, **kw)
    assert not torch.equal(a, c) and len(list(tmp_path.rglob("*.npy"))) == 2
    cached_features(encoder, synthetic, "test", cache, **kw)
    cached_features(encoder, synthetic, "test", cache, kind="projector", **kw)
    assert len(list(tmp_path.rglob("*.npy"))) == 4


def test_corrupt_cache_entry_is_recomputed(encoder, synthetic, tmp_path):
    cache = FeatureCache(tmp_path)
    a = cached_features(encoder, synthetic, "test", cache, precision="fp32", progress=False)
    (f,) = tmp_path.rglob("*.npy")
    f.write_bytes(b"garbage")
    b = cached_features(encoder, synthetic, "test", cache, precision="fp32", progress=False)
    assert torch.equal(a, b)


def test_evaluate_end_to_end(encoder, synthetic, tmp_path):
    from evals.config import EvalConfig
    from evals.evaluate import evaluate, report

    cfg = EvalConfig(linear_epochs=3, au_pairs=64, knn_k=[5, 20])
    m = evaluate(encoder, synthetic, cfg, cache_dir=str(tmp_path), progress=False, precision="fp32", label_fractions=(0.1,))
    for key in ("knn/top1@5", "knn/top5@20", "linear/top1", "linear/lr", "linear@10%/top1", "align", "uniform",
                "eval/knn_k", "eval/linear_epochs", "eval/au_pairs", "eval/holdout_fraction"):
        assert key in m, key
    assert m["eval/knn_k"] == "5,20" and 0 <= m["linear/top1"] <= 100
    assert "knn/top1@20" in report(m)
