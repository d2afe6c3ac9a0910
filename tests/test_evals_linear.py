import numpy as np
import torch

from evals.linear import (
    Standardizer,
    head_module,
    label_fraction_subset,
    linear_probe,
    select_and_refit,
    select_hparams,
    stratified_split,
    train_heads,
)
from evals.linear_lbfgs import lbfgs_probe


def clusters(n, c=5, d=32, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=torch.Generator().manual_seed(123)) * 0.6
    y = torch.randint(0, c, (n,), generator=g)
    x = centres[y] + noise * torch.randn(n, d, generator=g)
    return x * torch.linspace(0.2, 3.0, d) + 1.0, y  # uneven scales and offsets: the BN must handle them


def test_separable_features_are_solved():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (800,), generator=g)
    x = torch.randn(800, 16, generator=g) * 0.1
    x[torch.arange(800), y] += 3.0  # linearly separable
    m = linear_probe(x[:600], y[:600], x[600:], y[600:], 4, epochs=10)
    assert m["linear/top1"] >= 99.5 and m["linear/top5"] == 100.0
    assert lbfgs_probe(x[:600], y[:600], x[600:], y[600:], 4)["linear_lbfgs/top1"] >= 99.5


def test_close_to_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, ytr = clusters(3000, seed=1)
    xte, yte = clusters(2000, seed=2)
    sc = StandardScaler().fit(xtr.numpy())
    sk = LogisticRegression(max_iter=500).fit(sc.transform(xtr.numpy()), ytr.numpy())
    ref = 100.0 * np.mean(sk.predict(sc.transform(xte.numpy())) == yte.numpy())
    assert 50 < ref < 95  # the task is neither trivial nor hopeless
    ours = linear_probe(xtr, ytr, xte, yte, 5, epochs=20)["linear/top1"]
    lb = lbfgs_probe(xtr, ytr, xte, yte, 5)["linear_lbfgs/top1"]
    assert ours >= ref - 1.0, (ours, ref)
    assert lb >= ref - 1.0, (lb, ref)


def test_selection_never_sees_test_labels():
    xtr, ytr = clusters(1500, seed=3)
    xte, yte = clusters(500, seed=4)
    kw = dict(num_classes=5, epochs=5, lrs=(0.01, 0.3), wds=(0.0, 1e-2))
    a = linear_probe(xtr, ytr, xte, yte, **kw)
    garbage = torch.randint(0, 5, (500,), generator=torch.Generator().manual_seed(9))
    b = linear_probe(xtr, ytr, xte, garbage, **kw)
    c = linear_probe(xtr, ytr, xte, yte.flip(0), **kw)
    assert (a["linear/lr"], a["linear/wd"]) == (b["linear/lr"], b["linear/wd"]) == (c["linear/lr"], c["linear/wd"])
    assert a["linear/top1"] != b["linear/top1"]  # the test labels do matter for the reported score
    # the selection function's signature takes training data only
    _, _, _, lr, wd, scores = select_and_refit(xtr, ytr, 5, (0.01, 0.3), (0.0, 1e-2), epochs=5)
    assert (lr, wd) == (a["linear/lr"], a["linear/wd"]) and len(scores) == 4
    assert select_hparams(xtr, ytr, 5, (0.01, 0.3), (0.0, 1e-2), epochs=5) == (lr, wd, scores)
    lb1 = lbfgs_probe(xtr, ytr, xte, yte, 5, max_iter=30)
    lb2 = lbfgs_probe(xtr, ytr, xte, garbage, 5, max_iter=30)
    assert lb1["linear_lbfgs/wd"] == lb2["linear_lbfgs/wd"]


def test_splits_are_stratified_and_seeded():
    y = torch.cat([torch.full((n,), c) for c, n in enumerate((1000, 300, 50, 7))])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    keep, held = stratified_split(y, 0.1, seed=0)
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == len(y)
    assert torch.bincount(y[held]).tolist() == [100, 30, 5, 1]
    for frac, want in ((0.01, [10, 3, 1, 1]), (0.1, [100, 30, 5, 1])):
        sub = label_fraction_subset(y, frac, seed=1)
        assert torch.bincount(y[sub], minlength=4).tolist() == want
        assert torch.equal(sub, label_fraction_subset(y, frac, seed=1))
        assert not torch.equal(sub, label_fraction_subset(y, frac, seed=2))
    assert len(label_fraction_subset(y, 1.0)) == len(y)


def test_label_fraction_probe_and_head_module():
    xtr, ytr = clusters(2000, seed=5)
    xte, yte = clusters(400, seed=6)
    m = linear_probe(xtr, ytr, xte, yte, 5, epochs=5, label_fraction=0.1, prefix="linear@10%")
    assert set(m) == {"linear@10%/top1", "linear@10%/top5", "linear@10%/lr", "linear@10%/wd"}
    std = Standardizer.fit(xtr)
    w, b = train_heads(std(xtr), ytr, 5, [0.1], [0.0], epochs=3, precision="fp32")
    head = head_module(std, w[:, 0], b[0])
    assert isinstance(head[0], torch.nn.BatchNorm1d) and not head[0].affine
    torch.testing.assert_close(head(xte), std(xte) @ w[:, 0] + b[0], atol=1e-4, rtol=1e-4)


def test_blind_heads_never_see_hidden_rows_labels():
    """In the one-pass selection + refit, the selection heads' weights do not depend on the labels
    of the hold-out rows at all (bitwise), while the refit heads' do."""
    xtr, ytr = clusters(600, seed=7)
    hidden = torch.zeros(600, dtype=torch.bool)
    hidden[::5] = True
    y2 = ytr.clone()
    y2[hidden] = (y2[hidden] + 1) % 5
    z = Standardizer.fit(xtr)(xtr)
    kw = dict(epochs=3, batch_size=64, precision="fp32", hidden_rows=hidden, blind_heads=2)
    w1, b1 = train_heads(z, ytr, 5, [0.1, 0.3, 0.1, 0.3], [0.0] * 4, **kw)
    w2, b2 = train_heads(z, y2, 5, [0.1, 0.3, 0.1, 0.3], [0.0] * 4, **kw)
    assert torch.equal(w1[:, :2], w2[:, :2]) and torch.equal(b1[:2], b2[:2])
    assert not torch.equal(w1[:, 2:], w2[:, 2:])
    # a blind head trained with every row hidden but the visible ones learns from those rows only:
    # same as the same head with the hidden rows' features zeroed AND their labels changed
    z0 = z.clone()
    z0[hidden] = 0.0
    w3, _ = train_heads(z0, y2, 5, [0.1, 0.3, 0.1, 0.3], [0.0] * 4, **kw)
    torch.testing.assert_close(w3[:, :2], w1[:, :2])


def test_standardizer_equals_its_formula_by_hand_and_blockwise():
    # columns (1, 2, 3, 6) and (10, 10, 10, 10): means 3 and 10, population variances 3.5 and 0
    x = torch.tensor([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [6.0, 10.0]])
    s = Standardizer.fit(x)
    assert torch.allclose(s.mean, torch.tensor([3.0, 10.0]))
    assert torch.allclose(s.std, torch.tensor([3.5, 0.0]).add(1e-5).sqrt())
    assert torch.allclose(s(x)[:, 0], (x[:, 0] - 3.0) / (3.5 + 1e-5) ** 0.5)
    # a tall matrix with a large offset (no cancellation), in several blocks, rows picked and cast on the way
    g = torch.Generator().manual_seed(0)
    big = torch.randn(3 * Standardizer.ROWS + 17, 8, generator=g) * torch.linspace(0.1, 5, 8) + 1e3
    s = Standardizer.fit(big)
    var, mean = torch.var_mean(big.double(), 0, correction=0)
    assert torch.allclose(s.mean.double(), mean, rtol=1e-6, atol=0)   # float32 accumulation of ~1e3
    assert torch.allclose(s.std.double() ** 2, var + 1e-5, rtol=1e-4)
    rows = torch.randperm(len(big), generator=g)[:2500]
    ref = (big[rows] - s.mean) / s.std
    assert torch.allclose(s(big, rows), ref, atol=1e-4)
    half = s(big, rows, torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), ref, atol=0.02)


def test_the_epochs_benchmark_scores_on_train_only(tmp_path, capsys):
    from conftest import load_benchmark

    xtr, ytr = clusters(600, seed=5)
    cache = tmp_path / "feature-cache" / "weights" / "data"
    cache.mkdir(parents=True)
    np.save(cache / "train-eval-backbone-fp32.npy", xtr.numpy())
    np.save(cache / "test-eval-backbone-fp32.npy", np.full((50, 32), np.nan, dtype=np.float32))   # never read
    np.savez(tmp_path / "labels.npz", y_train=ytr.numpy())   # no y_test: the test split cannot be read
    load_benchmark("linear_probe_epochs").main([str(tmp_path / "labels.npz"), str(tmp_path / "feature-cache"),
                                                "--epochs", "6,3"])
    out = capsys.readouterr().out
    assert "1 TRAIN feature files" in out and "scored on a 121-row TRAIN hold-out" in out
    assert "epochs   6: - ep6 mean +0.00" in out and "epochs   3: - ep6 mean" in out and "sklearn mean" in out


def test_lbfgs_fit_is_the_regularised_optimum():
    """The analytic gradient drives L-BFGS to the point where autograd's gradient of the objective vanishes."""
    from evals.linear_lbfgs import fit_lbfgs

    x, y = clusters(600, seed=7)
    z = Standardizer.fit(x)(x)
    wd = 1e-2   # strictly convex: one optimum
    w, b = fit_lbfgs(z, y, 5, wd, max_iter=500, tol=1e-9)
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(torch.addmm(b, z, w), y) + 0.5 * wd * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert gw.abs().max() < 1e-4 and gb.abs().max() < 1e-4
    assert w.abs().max() > 0.1   # it moved: a zero gradient at the start would also pass the line above
