import numpy as np
import pytest
import torch

from conftest import load_benchmark
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


# ----------------------------------------------------------------------------- database shards (issue 19)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("shard_rows", [200, 30, 1037, 5000])   # 6 shards (ragged 37), shards < k, exactly one, > N
def test_sharded_exact_search_equals_unsharded(backend, shard_rows):
    pytest.importorskip("faiss") if backend == "faiss" else None
    from evals.knn import normalise, top_classes

    g = torch.Generator().manual_seed(7)
    c = 9
    centres = torch.randn(c, 16, generator=g)
    ytr, yte = torch.randint(0, c, (1037,), generator=g), torch.randint(0, c, (150,), generator=g)
    xtr = centres[ytr] + 1.2 * torch.randn(1037, 16, generator=g)
    xte = centres[yte] + 1.2 * torch.randn(150, 16, generator=g)
    db, q = normalise(xtr), normalise(xte)
    ref_s, ref_i = search(q, db, 50, backend=backend, shard_rows=1 << 30, chunk_size=64)
    s, i = search(q, db, 50, backend=backend, shard_rows=shard_rows, chunk_size=64)
    assert i.shape == (150, 50) and i.dtype == torch.long
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(s, ref_s, rtol=0, atol=1e-6)
    assert torch.all(s[:, :-1] >= s[:, 1:])
    for k in (1, 10, 50):   # the weighted-vote predictions
        assert torch.equal(top_classes(s, i, ytr, k, c)[1], top_classes(ref_s, ref_i, ytr, k, c)[1])
    ks = (1, 20, 50)
    assert knn_eval(xtr, ytr, xte, yte, ks, 0.07, c, backend=backend, shard_rows=shard_rows) == \
        knn_eval(xtr, ytr, xte, yte, ks, 0.07, c, backend=backend)


def test_sharded_search_matches_numpy_reference(data):
    xtr, ytr, xte, yte, c = data   # 600 rows: shards of 128 (ragged 88)
    ks = (1, 10, 20, 100, 200)
    ref, _, order = numpy_knn(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), ks, 0.07, c)
    assert knn_eval(xtr, ytr, xte, yte, ks, 0.07, c, backend="torch", shard_rows=128) == pytest.approx(ref, abs=1e-9)
    _, idx = search(torch.nn.functional.normalize(xte, dim=1), torch.nn.functional.normalize(xtr, dim=1), 200,
                    backend="torch", shard_rows=128)
    assert torch.equal(idx, torch.from_numpy(order[:, :200]))


def test_default_shard_rows_is_the_configs():
    from evals.config import EvalConfig
    from evals.knn import SHARD_ROWS

    assert EvalConfig().knn_shard_rows == SHARD_ROWS == 262_144


@pytest.mark.parametrize("value, fragment", [("0", "must be > 0"), ("-3", "must be > 0"), ("abc", "expected int"),
                                             ("1.5", "expected int"), ("null", "expected int")])
def test_bad_shard_rows_is_a_config_error(value, fragment):
    from harness.core.config import parse_overrides
    from harness.core.errors import ConfigError
    from harness.train.config import resolve

    with pytest.raises(ConfigError, match=f"bad value .* for 'eval.knn_shard_rows': {fragment}"):
        resolve(parse_overrides([f"eval.knn_shard_rows={value}"]))


def test_bad_shard_rows_in_the_api_and_the_cli(data, tmp_path, monkeypatch, capsys):
    from harness.cli import main
    from harness.core.errors import ConfigError

    xtr, ytr, xte, yte, c = data
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ConfigError, match="bad value .* for 'eval.knn_shard_rows': must be an integer >= 1"):
            knn_eval(xtr, ytr, xte, yte, (10,), 0.07, c, shard_rows=bad)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["pretrain", "data.name=synthetic", "eval.knn_shard_rows=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sslbench: error: bad value 0 for 'eval.knn_shard_rows': must be > 0"]
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- benchmarks/knn_scale.py


def test_knn_scale_benchmark_tiny(tmp_path, capsys):
    pytest.importorskip("faiss")
    import json

    from harness.core.device import cpu_model

    bench = load_benchmark("knn_scale")
    out = tmp_path / "knn.json"
    res = bench.main(["--n", "5000", "--dim", "32", "--queries", "300", "--k", "20", "--seed", "1",
                      "--shard-rows", "1536", "--json", str(out)])
    printed = capsys.readouterr().out
    first = printed.splitlines()[0]
    assert first.startswith(f"cpu: {cpu_model()}; ") and "torch " in first and "faiss " in first and "threads" in first
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    rows = res["indexes"]
    assert list(rows) == ["exact", "flat", "ivf", "hnsw"]
    assert rows["exact"]["params"].startswith("torch, 4 shards")
    for name in ("exact", "flat"):
        r = rows[name]
        assert r["top1_agreement"] == r["recall@20"] == r["vote_agreement"] == 1.0, (name, r)
        assert r["knn_acc"] == rows["exact"]["knn_acc"]
    for name in ("ivf", "hnsw"):
        r = rows[name]
        assert 0.5 < r["top1_agreement"] <= 1 and 0.5 < r["recall@20"] <= 1 and 0.5 < r["vote_agreement"] <= 1, r
    for name in ("flat", "ivf", "hnsw"):
        r = rows[name]
        assert r["index_bytes"] >= 5000 * 32 * 4 and r["build_s"] >= 0 and r["queries_per_s"] > 0
        assert name in printed.split("\n", 3)[3]
    assert rows["exact"]["knn_acc"] > 10   # the labels carry the structure (19 clusters: chance is ~5%)
    assert res["machine"]["cores"] >= 1 and res["config"]["clusters"] == 19


@pytest.mark.parametrize("args, fragment", [(["--indexes", "flat,hnws"], "unknown kNN index 'hnws' (did you mean 'hnsw'?)"),
                                            (["--shard-rows", "0"], "argument --shard-rows: must be >= 1"),
                                            (["--n", "10", "--k", "20"], "more neighbours than the n=10"),
                                            (["--n", "1e6"], "argument --n: not an integer")])
def test_knn_scale_bad_arguments(args, fragment, capsys):
    pytest.importorskip("faiss")
    with pytest.raises(SystemExit) as e:
        load_benchmark("knn_scale").main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert fragment in err[-1] and "Traceback" not in "\n".join(err)


def test_the_knn_protocol_passes_eval_knn_shard_rows(data, monkeypatch):
    import types

    import evals.knn as knn
    from evals.config import EvalConfig
    from evals.protocols import PROTOCOLS, Context

    xtr, ytr, xte, yte, c = data
    seen, real = [], knn.search

    def spy(*a, **kw):
        seen.append(kw["shard_rows"])
        return real(*a, **kw)

    monkeypatch.setattr(knn, "search", spy)
    ds = types.SimpleNamespace(y_train=ytr, y_test=yte, num_classes=c)
    got = []
    for rows in (97, 262_144):
        out = {}
        ctx = Context(None, ds, EvalConfig(knn_k=[5, 20], knn_shard_rows=rows), torch.device("cpu"), "fp32", 0, False, (),
                      {"train": xtr, "test": xte}.__getitem__, lambda name, fn, *splits, out=out: out.update(fn()))
        PROTOCOLS["knn"].run(ctx)
        got.append(out)
    assert seen == [97, 262_144] and got[0] == got[1] and "knn/top1@20" in got[0]
