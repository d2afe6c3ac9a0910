"""kNN at scale: the FAISS indexes of ``eval.knn_index`` (flat, ivf, hnsw) against exact search.

The approximate indexes exist for databases of >= 1M features; this measures them there. The
features are synthetic but have real neighbour structure: a Gaussian mixture of ``--clusters``
clusters (default ``min(4096, N / 256)``: 3,906 at 1M, about 256 points each) whose unit centres
lie in a random 32-d subspace of the ``--dim``-d space (so neighbouring clusters overlap), plus
isotropic noise of norm ``--noise`` (2.5: exact weighted kNN@20 is ~62% at 1M), L2-normalised
as the evaluator normalises (``evals.knn.normalise``); labels are the cluster ids. Queries are
``--queries`` fresh draws from the same mixture (not in the database).

Everything is the evaluator's own code (``evals/knn.py``):

* ``exact``: the reference, the evaluator's exact search for ``eval.knn_index=flat`` on
  ``--device`` (``search``: on CPU the torch GEMM + two-stage top-k, sharded by ``--shard-rows`` =
  ``eval.knn_shard_rows``);
* ``flat`` / ``ivf`` / ``hnsw``: the FAISS index ``build_index`` builds (one index over the whole
  database: ``IndexFlatIP``, ``IndexIVFFlat`` with nlist = min(4 sqrt(N), N / 39) and ``--nprobe``,
  ``IndexHNSWFlat`` with ``--hnsw-m`` and efSearch 256), searched by ``search_index`` in the
  evaluator's query chunks.

Per index: build time; search time and queries/s; memory (the index's ``faiss.serialize_index``
size and the process RSS growth from building it); and against ``exact`` on the query sample:
top-1 agreement (the same nearest neighbour), recall@k (the fraction of the exact top k found)
and the weighted-kNN classifier (``evals.knn.top_classes``, T = 0.07, k = ``--k``): the fraction
of queries whose predicted class is the exact search's, and both accuracies. A neighbour counts
as found when it is one of the exact top k or ties the k-th exact similarity to within 1e-5
(two different GEMMs round float32 inner products differently; ann-benchmarks counts the same
way, with 1e-3). Timings are one run each; the machine (CPU model, cores, versions, threads) is
printed first and stored in ``--json``.

    .venv/bin/python benchmarks/knn_scale.py                      # 1M x 256, 10k queries (minutes)
    .venv/bin/python benchmarks/knn_scale.py --n 100000 --json knn_100k.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evals.knn import (  # noqa: E402
    INDEXES,
    SHARD_ROWS,
    TEMPERATURE,
    build_index,
    check_shard_rows,
    normalise,
    query_chunk,
    require_faiss,
    resolve_backend,
    search,
    search_index,
    top_classes,
)
from harness.core.device import cpu_model  # noqa: E402
from harness.core.errors import SSLBenchError, did_you_mean  # noqa: E402

TIE = 1e-5      # similarity tolerance for "the same neighbour" (float32 rounding of two GEMMs)
LATENT = 32     # the centres' subspace
GEN_ROWS = 1 << 16


# ----------------------------------------------------------------------------- machine and memory


def machine() -> dict:
    """CPU model (``/proc/cpuinfo``), cores, torch / faiss versions and their thread counts."""
    faiss = require_faiss()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cores_usable": usable, "python": platform.python_version(),
            "torch": torch.__version__, "faiss": faiss.__version__, "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads()}


def machine_line(m: dict) -> str:
    return (f"cpu: {m['cpu']}; {m['cores']} cores ({m['cores_usable']} usable); torch {m['torch']}, "
            f"faiss {m['faiss']}; threads: torch {m['torch_threads']}, faiss {m['faiss_threads']}")


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``; peak RSS elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def index_bytes(idx) -> int:
    """``len(faiss.serialize_index(idx))``, counted as it streams (no second copy of a 1 GB index)."""
    faiss = require_faiss()
    if not hasattr(idx, "hnsw") and hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(idx).__name__:
        idx = faiss.index_gpu_to_cpu(idx)
    if not hasattr(faiss, "PyCallbackIOWriter"):
        return int(faiss.serialize_index(idx).size)
    total = [0]

    def count(chunk):
        total[0] += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(idx, writer)
    del writer
    return total[0]


# ----------------------------------------------------------------------------- features


def default_clusters(n: int) -> int:
    """A few thousand clusters at 1M (about 256 points each), fewer for a smaller database."""
    return int(min(4096, max(2, n // 256)))


def make_features(n: int, queries: int, dim: int, clusters: int, noise: float, seed: int):
    """(database, labels, queries, labels): L2-normalised draws of the mixture (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    centres = normalise(torch.randn(clusters, LATENT, generator=g) @ torch.randn(LATENT, dim, generator=g))

    def sample(m: int):
        y = torch.randint(0, clusters, (m,), generator=g)
        x = torch.empty(m, dim)
        for a in range(0, m, GEN_ROWS):   # bounded temporaries at 1M
            yy = y[a:a + GEN_ROWS]
            x[a:a + len(yy)] = normalise(centres[yy].add_(torch.randn(len(yy), dim, generator=g), alpha=noise / dim ** 0.5))
        return x, y

    return (*sample(n), *sample(queries))


# ----------------------------------------------------------------------------- agreement


def true_sims(q: torch.Tensor, db: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The inner products of each query with its listed neighbours, recomputed one way for every
    index (so exact and approximate lists compare like with like); -inf where a list has no neighbour (-1)."""
    out = torch.empty(idx.shape)
    for a in range(0, len(q), 1024):
        j = idx[a:a + 1024]
        out[a:a + len(j)] = torch.einsum("qd,qkd->qk", q[a:a + len(j)], db[j.clamp_min(0)])
    return out.masked_fill_(idx < 0, float("-inf"))


def agreement(exact: dict, approx_sims: torch.Tensor, approx_idx: torch.Tensor, q: torch.Tensor, db: torch.Tensor,
              db_labels: torch.Tensor, q_labels: torch.Tensor, k: int, num_classes: int) -> dict:
    """Top-1 agreement, recall@k and the kNN-classifier agreement of one index against ``exact``."""
    got = true_sims(q, db, approx_idx)
    ref = exact["true_sims"]
    top1 = (approx_idx[:, 0] == exact["idx"][:, 0]) | (got[:, 0] >= ref[:, 0] - TIE)
    found = (got >= ref[:, k - 1:k] - TIE).sum(dim=1).clamp_max(k)   # ids are distinct; -1 has -inf
    values, classes = top_classes(approx_sims, approx_idx, db_labels, k, num_classes, TEMPERATURE)
    pred = torch.where(values[:, 0] > 0, classes[:, 0], -1)           # -1: no neighbour voted
    return {"top1_agreement": top1.double().mean().item(), f"recall@{k}": (found.double() / k).mean().item(),
            "vote_agreement": (pred == exact["pred"]).double().mean().item(),
            "knn_acc": 100.0 * (pred == q_labels).double().mean().item()}


# ----------------------------------------------------------------------------- the benchmark


def run(n: int = 1_000_000, dim: int = 256, queries: int = 10_000, k: int = 20, indexes=INDEXES, seed: int = 0,
        clusters: int | None = None, noise: float = 2.5, shard_rows: int = SHARD_ROWS, nprobe: int = 32,
        hnsw_m: int = 32, device: str = "cpu", threads: int | None = None, out=print) -> dict:
    """Build and search every index in ``indexes`` on the synthetic features; print the machine and
    a table through ``out``; return the figures (what ``--json`` writes)."""
    indexes = list(indexes)
    shard_rows = check_shard_rows(shard_rows)
    for name, v, lo in (("n", n, 1), ("dim", dim, 1), ("queries", queries, 1), ("k", k, 1), ("nprobe", nprobe, 1),
                        ("hnsw_m", hnsw_m, 2), ("clusters", clusters or 2, 2)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise SSLBenchError(f"bad value {v!r} for '{name}': must be an integer >= {lo}")
    if k > n:
        raise SSLBenchError(f"k={k} asks for more neighbours than the n={n} database features")
    if not noise > 0:
        raise SSLBenchError(f"bad value {noise!r} for 'noise': must be > 0")
    for name in indexes:
        if name not in INDEXES:
            raise SSLBenchError(f"unknown kNN index '{name}'{did_you_mean(name, INDEXES)}; valid choices: {', '.join(INDEXES)}")
    faiss = require_faiss()
    if threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    t_start = time.perf_counter()
    m = machine()
    out(machine_line(m))
    clusters = clusters or default_clusters(n)
    t0 = time.perf_counter()
    db, db_labels, q, q_labels = make_features(n, queries, dim, clusters, noise, seed)
    gen_s = time.perf_counter() - t0
    out(f"features: database {n:,} x {dim}, {queries:,} queries, {clusters:,} clusters (noise {noise}), "
        f"L2-normalised float32 ({db.numel() * 4 / 2 ** 20:,.0f} MiB); generated in {gen_s:.1f} s; k = {k}, "
        f"seed {seed}")

    backend = resolve_backend("auto", "flat", device)
    shards = -(-n // shard_rows)
    gc.collect()
    r0 = rss_bytes()
    t0 = time.perf_counter()
    sims, idx = search(q, db, k, backend=backend, index="flat", device=device, shard_rows=shard_rows)
    search_s = time.perf_counter() - t0
    values, classes = top_classes(sims, idx, db_labels, k, clusters, TEMPERATURE)
    pred = torch.where(values[:, 0] > 0, classes[:, 0], -1)
    exact = {"idx": idx, "true_sims": true_sims(q, db, idx), "pred": pred}
    rows = {"exact": {"params": f"{backend}, {shards} shard{'s' * (shards > 1)} of <= {min(shard_rows, n):,} rows",
                      "build_s": None, "search_s": search_s, "queries_per_s": queries / search_s,
                      "index_bytes": None, "rss_delta_bytes": rss_bytes() - r0,
                      "top1_agreement": 1.0, f"recall@{k}": 1.0, "vote_agreement": 1.0,
                      "knn_acc": 100.0 * (pred == q_labels).double().mean().item()}}
    del sims
    db_np, q_np = db.numpy(), q.numpy()   # float32, contiguous: shared, not copied
    for name in indexes:
        gc.collect()
        r0 = rss_bytes()
        t0 = time.perf_counter()
        index = build_index(db_np, name, device, None, nprobe, hnsw_m)
        build_s = time.perf_counter() - t0
        rss = rss_bytes() - r0
        t0 = time.perf_counter()
        s, j = search_index(index, q_np, k, query_chunk(n, backend="faiss"))
        search_s = time.perf_counter() - t0
        size = index_bytes(index)
        params = describe(index, name, hnsw_m)
        del index
        rows[name] = {"params": params, "build_s": build_s, "search_s": search_s, "queries_per_s": queries / search_s,
                      "index_bytes": size, "rss_delta_bytes": rss,
                      **agreement(exact, torch.from_numpy(s), torch.from_numpy(j).long(), q, db, db_labels, q_labels,
                                  k, clusters)}
    total_s = time.perf_counter() - t_start
    result = {"machine": m, "config": {"n": n, "dim": dim, "queries": queries, "k": k, "clusters": clusters,
                                       "noise": noise, "seed": seed, "shard_rows": shard_rows, "nprobe": nprobe,
                                       "hnsw_m": hnsw_m, "device": str(device), "tie_tolerance": TIE},
              "generate_s": gen_s, "indexes": rows, "total_s": total_s}
    out(table(result))
    out(f"total {total_s:.1f} s")
    return result


def describe(index, name: str, hnsw_m: int) -> str:
    """An index's build/search parameters, as it holds them."""
    if name == "ivf":
        return f"nlist {index.nlist}, nprobe {index.nprobe}"
    if name == "hnsw":
        return f"M {hnsw_m}, efC {index.hnsw.efConstruction}, efS {index.hnsw.efSearch}"
    return type(index).__name__


def table(result: dict) -> str:
    """The figures as a fixed-width table, one row per index."""
    k = result["config"]["k"]
    mib = lambda b: "-" if b is None else f"{b / 2 ** 20:,.0f}"  # noqa: E731
    sec = lambda t: "-" if t is None else f"{t:,.2f}"             # noqa: E731
    head = ["index", "params", "build s", "search s", "queries/s", "index MiB", "RSS +MiB", "top-1 agr",
            f"recall@{k}", "vote agr", f"kNN@{k} %"]
    body = [[name, r["params"], sec(r["build_s"]), sec(r["search_s"]), f"{r['queries_per_s']:,.0f}",
             mib(r["index_bytes"]), mib(r["rss_delta_bytes"]), f"{r['top1_agreement']:.4f}", f"{r[f'recall@{k}']:.4f}",
             f"{r['vote_agreement']:.4f}", f"{r['knn_acc']:.2f}"] for name, r in result["indexes"].items()]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    line = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def _positive(text: str) -> int:
    try:
        v = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=_positive, default=1_000_000, help="database features (default 1,000,000)")
    ap.add_argument("--dim", type=_positive, default=256, help="feature dimension (default 256)")
    ap.add_argument("--queries", type=_positive, default=10_000, help="query features (default 10,000)")
    ap.add_argument("--k", type=_positive, default=20, help="neighbours per query (default 20)")
    ap.add_argument("--indexes", default=",".join(INDEXES), help="comma-separated, of: flat, ivf, hnsw (default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clusters", type=_positive, default=None, help="mixture clusters = labels (default min(4096, n/256))")
    ap.add_argument("--noise", type=float, default=2.5, help="norm of the isotropic noise around a unit centre (default 2.5)")
    ap.add_argument("--shard-rows", type=_positive, default=SHARD_ROWS,
                    help=f"exact search: database rows per shard, = eval.knn_shard_rows (default {SHARD_ROWS})")
    ap.add_argument("--nprobe", type=_positive, default=32, help="IVF lists searched (the evaluator's default 32)")
    ap.add_argument("--hnsw-m", type=_positive, default=32, help="HNSW links per node (the evaluator's default 32)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (FAISS GPU indexes need faiss-gpu)")
    ap.add_argument("--threads", type=_positive, default=None, help="torch and FAISS threads (default: theirs)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures here")
    a = ap.parse_args(argv)
    indexes = [s.strip() for s in a.indexes.split(",") if s.strip()]
    try:
        result = run(a.n, a.dim, a.queries, a.k, indexes, a.seed, a.clusters, a.noise, a.shard_rows, a.nprobe,
                     a.hnsw_m, a.device, a.threads)
    except SSLBenchError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.json}")
    return result


if __name__ == "__main__":
    main()
