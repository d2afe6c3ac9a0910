import numpy as np
import pytest
import torch

from evals.knn import knn_eval, search, topk_rows


def numpy_knn(xtr, ytr, xte, yte, ks, t, c):
    """Brute-force reference: cosine similarities, full sort, exp(s/T) votes per class."""
    a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    q = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    s = q.astype(np.float64) @ a.T.astype(np.float64)
    order = np.argsort(-s, axis=1, kind="stable")
    out, preds = {}, {}
    for k in ks:
        nn_ = order[:, :k]
        scores = np.zeros((len(q), c))
        for i in range(len(q)):
            for j in nn_[i]:
                scores[i, ytr[j]] += np.exp(s[i, j] / t)
        sy = scores[np.arange(len(q)), yte]
        rank = (scores > sy[:, None]).sum(1)
        preds[k] = scores.argmax(1)
        out[f"knn/top1@{k}"] = 100.0 * np.mean(preds[k] == yte)
        out[f"knn/top5@{k}"] = 100.0 * np.mean((rank < 5) & (sy > 0))
    return out, preds, order


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    c = 12
    centres = torch.randn(c, 32, generator=g)
    ytr = torch.randint(0, c, (600,), generator=g)
    yte = torch.randint(0, c, (150,), generator=g)
    xtr = centres[ytr] + 1.5 * torch.randn(600, 32, generator=g)
    xte = centres[yte] + 1.5 * torch.randn(150, 32, generator=g)
    return xtr, ytr, xte, yte, c


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_matches_numpy_reference(data, backend):
    pytest.importorskip("faiss") if backend == "faiss" else None
    xtr, ytr, xte, yte, c = data
    ks = (1, 10, 20, 100, 200)
    ref, _, _ = numpy_knn(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), ks, 0.07, c)
    got = knn_eval(xtr, ytr, xte, yte, ks, 0.07, c, backend=backend, chunk_size=37)
    assert set(got) == set(ref)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key
    assert 0 < got["knn/top1@20"] < 100 and got["knn/top5@20"] > got["knn/top1@20"]


def test_neighbours_and_temperature(data):
    xtr, ytr, xte, yte, c = data
    _, _, order = numpy_knn(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), (5,), 0.07, c)
    q = torch.nn.functional.normalize(xte, dim=1)
    db = torch.nn.functional.normalize(xtr, dim=1)
    sims, idx = search(q, db, 50, backend="torch", chunk_size=16)
    assert torch.equal(idx, torch.from_numpy(order[:, :50]))
    assert torch.all(sims[:, :-1] >= sims[:, 1:])
    # the temperature changes the vote: a very high T approaches a majority vote, and differs from T = 0.07
    for t in (0.07, 0.5, 100.0):
        ref, _, _ = numpy_knn(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), (100,), t, c)
        assert knn_eval(xtr, ytr, xte, yte, (100,), t, c)["knn/top1@100"] == pytest.approx(ref["knn/top1@100"])


def test_k_larger_than_database_and_few_classes():
    g = torch.Generator().manual_seed(1)
    xtr, ytr = torch.randn(30, 8, generator=g), torch.randint(0, 3, (30,), generator=g)
    xte, yte = torch.randn(10, 8, generator=g), torch.randint(0, 3, (10,), generator=g)
    ref, _, _ = numpy_knn(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), (30,), 0.07, 3)
    got = knn_eval(xtr, ytr, xte, yte, (10, 200), 0.07, 3)
    assert got["knn/top1@200"] == pytest.approx(ref["knn/top1@30"])
    assert got["knn/top5@200"] == 100.0


def test_approximate_index_close_to_exact(data):
    pytest.importorskip("faiss")
    xtr, ytr, xte, yte, c = data
    exact = knn_eval(xtr, ytr, xte, yte, (20,), 0.07, c)
    hnsw = knn_eval(xtr, ytr, xte, yte, (20,), 0.07, c, index="hnsw")
    assert abs(hnsw["knn/top1@20"] - exact["knn/top1@20"]) <= 3.0


def test_missing_faiss_is_a_clear_error(monkeypatch, data):
    import builtins

    from harness.core.errors import SSLBenchError

    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "faiss":
            raise ImportError("no faiss")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    xtr, ytr, xte, yte, c = data
    with pytest.raises(SSLBenchError, match="pip install 'sslbench\\[cpu\\]'"):
        knn_eval(xtr, ytr, xte, yte, (10,), 0.07, c, backend="faiss")


@pytest.mark.parametrize("n,k", [(5000, 200), (5003, 20), (997, 10), (640, 200), (50, 50), (7, 3)])
def test_topk_rows_equals_torch_topk(n, k):
    g = torch.Generator().manual_seed(n + k)
    s = torch.randn(33, n, generator=g)
    # plant structure the grouping must survive (m, groups as in topk_rows): row 0's best scores all
    # in one strided group, row 1's best in the left-over columns past the last full group
    m = max(int((n / k) ** 0.5), 1)
    groups = n // m
    s[0, torch.arange(0, n, groups)[:k]] += 10.0
    leftover = n - m * groups
    if leftover:
        s[1, n - min(k, leftover):] += 10.0
    vals, idx = topk_rows(s, k)
    ref_vals, ref_idx = torch.topk(s, k, dim=1)
    assert torch.equal(vals, ref_vals)
    assert torch.equal(s.gather(1, idx), vals)
    assert torch.equal(idx.sort(dim=1).values, ref_idx.sort(dim=1).values)
