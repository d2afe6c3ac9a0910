"""Weighted k-nearest-neighbour classification on frozen features.

Protocol (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination"; Caron et al. 2021, DINO): features are L2-normalised, similarity is the
cosine ``s = <q, x>``; the k most similar training features vote for their label with weight
``exp(s / T)`` (T = 0.07), i.e. class score ``p_c(q) = sum_{i in N_k(q)} exp(s_i / T) [y_i = c]``;
top-1 / top-5 are read off ``p``. One search at ``max(k)`` serves every k (the neighbour lists
are sorted, so the first k of them are the k nearest).

Search backends (all exact except ``index="ivf"`` / ``"hnsw"``):

* ``"faiss"``: a FAISS inner-product index (``IndexFlatIP``; a GPU index when FAISS sees GPUs
  and ``device`` is CUDA; ``IndexIVFFlat`` / ``IndexHNSWFlat`` when asked, for >= 1M databases).
* ``"torch"``: chunked ``queries @ database.T`` (into one reused buffer) + an exact two-stage
  top-k (:func:`topk_rows`) on the given device.
* ``"auto"`` (default): FAISS on the GPU when it has one (or for ``ivf`` / ``hnsw``), otherwise the
  torch path. On CPU the faiss-cpu wheel computes inner products with its bundled OpenBLAS,
  which is 3-4x slower than PyTorch's GEMM here (10k queries x 50k x 512, k = 200, 2 cores:
  ``IndexFlatIP`` 15.4 s, chunked or not, any ``omp_set_num_threads``; torch path 3.1-3.2 s,
  plain chunked mm + topk 4.6-5.1 s).
  Both are exact and return the same neighbours, so the faster one is the default; the backend
  is logged. See ``benchmarks/eval_speed.py``.

Exact search over a large database goes shard by shard (``shard_rows``, ``eval.knn_shard_rows``,
default :data:`SHARD_ROWS` = 262,144 rows): each shard of at most ``shard_rows`` database rows is
searched on its own (moved to the device, or put in its own FAISS flat index, one at a time) and
its top k are merged into the running top k (:func:`merge_topk`). Every database row lies in
exactly one shard and the top k of a union are the top k of the shards' top k, so the result is
the unsharded search's; what the shard bounds is memory: the device (or FAISS) copy of the
database is one shard, and the query chunk grows to ``CHUNK_ELEMENTS / shard_rows`` queries (128
at the default, instead of 33 for a 1M database). A database of at most ``shard_rows`` rows is
one shard, searched exactly as before. The approximate indexes are one index over the whole
database (an IVF / HNSW index per shard would be a different index); they ignore ``shard_rows``.
``benchmarks/knn_scale.py`` measures both indexes against this exact search at 1M features.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError, SSLBenchError

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07
CHUNK_ELEMENTS = 1 << 25  # similarity block (queries x database): 128 MB in float32, 671 queries for 50k
SHARD_ROWS = 1 << 18      # database rows per exact-search shard (eval.knn_shard_rows): 256 MiB at 256-d float32
INDEXES = ("flat", "ivf", "hnsw")
# Queries per FAISS search call. Not the torch block's CHUNK_ELEMENTS / N: faiss-cpu (1.15) computes a
# flat search with BLAS only when queries x dim >= 128,000 (distance_compute_blas_threshold) and
# with a sequential kernel below, 15-30x slower (100k x 256, 2048 queries, k = 20, 2 cores: 1.1-1.5 s
# in calls of >= 512 queries, 14-30 s in calls of <= 400; CHUNK_ELEMENTS / N gives 335 at 100k, 33 at 1M).
FAISS_QUERY_CHUNK = 4096


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise SSLBenchError("kNN backend 'faiss' needs FAISS, which is not installed; "
                            "install faiss: pip install 'sslbench[cpu]' or 'sslbench[gpu]'") from None
    return faiss


def build_index(db: np.ndarray, index: str = "flat", device: str | torch.device = "cpu", nlist: int | None = None,
                nprobe: int = 32, hnsw_m: int = 32):
    """The FAISS inner-product index the evaluator searches, holding the (N, D) float32 ``db``.

    ``flat``: ``IndexFlatIP`` (exact). ``ivf``: ``IndexIVFFlat`` with ``nlist`` lists (default
    ``min(4 sqrt(N), N / 39)``), trained on a seeded sample of <= 256 points per list, ``nprobe``
    lists searched. ``hnsw``: ``IndexHNSWFlat`` with ``hnsw_m`` links per node, ``efSearch`` >= 256.
    On a CUDA ``device`` with FAISS GPUs, flat and ivf are GPU indexes.
    """
    faiss = require_faiss()
    device = torch.device(device)
    n, d = db.shape
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        idx.train(db[rng.choice(n, min(n, 256 * nlist), replace=False)])
        idx.nprobe = min(nprobe, nlist)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efSearch = max(idx.hnsw.efSearch, 256)
    else:
        raise SSLBenchError(f"unknown kNN index '{index}'; valid choices: {', '.join(INDEXES)}")
    if device.type == "cuda" and _faiss_gpus() > 0 and index != "hnsw":
        idx = faiss.index_cpu_to_gpu(_gpu_resources(), device.index or 0, idx)
    idx.add(db)
    return idx


def query_chunk(rows: int, chunk_size: int | None = None, backend: str = "torch") -> int:
    """Queries per search call against ``rows`` database rows: ``chunk_size`` if given; else, for the
    torch backend, ``CHUNK_ELEMENTS / rows`` (1..4096: the similarity block it holds); for FAISS,
    :data:`FAISS_QUERY_CHUNK` (FAISS tiles the similarities itself, 4096 x 1024 at a time)."""
    if chunk_size:
        return chunk_size
    return FAISS_QUERY_CHUNK if backend == "faiss" else max(1, min(4096, CHUNK_ELEMENTS // max(1, rows)))


def search_index(idx, queries: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``idx.search`` in query chunks of ``chunk``: (similarities, indices), both (Q, k); -1 = no neighbour."""
    sims, idxs = zip(*(idx.search(queries[i:i + chunk], k) for i in range(0, len(queries), chunk)))
    return np.concatenate(sims), np.concatenate(idxs)


@functools.lru_cache(maxsize=None)
def _gpu_resources():
    """One ``StandardGpuResources`` per process (it reserves scratch memory): reused by every GPU index."""
    return require_faiss().StandardGpuResources()


def merge_topk(sims_a: torch.Tensor, idx_a: torch.Tensor, sims_b: torch.Tensor, idx_b: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` (sorted) of two row-aligned neighbour lists, e.g. two database shards' top k."""
    sims = torch.cat([sims_a, sims_b], dim=1)
    top, j = sims.topk(min(k, sims.shape[1]), dim=1)
    return top, torch.cat([idx_a, idx_b], dim=1).gather(1, j)


def check_shard_rows(shard_rows) -> int:
    """``shard_rows`` as an int >= 1, or the one-line ConfigError (``eval.knn_shard_rows``)."""
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, (int, np.integer)) or shard_rows < 1:
        raise ConfigError(f"bad value {shard_rows!r} for 'eval.knn_shard_rows': must be an integer >= 1 "
                          f"(database rows per exact-search shard; default {SHARD_ROWS})")
    return int(shard_rows)


def search(queries: torch.Tensor, database: torch.Tensor, k: int, backend: str = "auto", index: str = "flat",
           device: str | torch.device = "cpu", chunk_size: int | None = None, nlist: int | None = None,
           nprobe: int = 32, hnsw_m: int = 32, shard_rows: int = SHARD_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product neighbours of each query: (similarities, indices), both (Q, k), sorted.

    Inputs are used as given (normalise them first for cosine). Exact search (``index="flat"``)
    goes over the database in shards of ``shard_rows`` rows, merging each shard's top k (see the
    module docstring); queries go in chunks of ``chunk_size`` (default :func:`query_chunk`: for the
    torch backend ``CHUNK_ELEMENTS / rows`` of the largest shard, at most 4096) so memory stays bounded.
    """
    device = torch.device(device)
    shard_rows = check_shard_rows(shard_rows)
    n = len(database)
    k = min(k, n)
    backend = resolve_backend(backend, index, device, queries, database, k)
    if backend not in ("torch", "faiss"):
        raise SSLBenchError(f"unknown kNN backend '{backend}'; valid choices: auto, faiss, torch")
    if index not in INDEXES:
        raise SSLBenchError(f"unknown kNN index '{index}'; valid choices: {', '.join(INDEXES)}")
    if backend == "torch" and index != "flat":
        raise SSLBenchError(f"kNN index '{index}' needs backend 'faiss' (the torch backend is exact)")
    shard = shard_rows if index == "flat" else max(n, 1)
    chunk = query_chunk(min(shard, n), chunk_size, backend)
    if len(queries) == 0 or n == 0:
        return torch.empty(len(queries), k), torch.empty(len(queries), k, dtype=torch.long)
    best = buf = q = None
    for start in range(0, n, shard):
        part = database[start:start + shard]
        if backend == "torch":
            if buf is None:  # one buffer for every chunk of every shard: no page faults per chunk
                buf = torch.empty(min(chunk, len(queries)) * len(part), device=device)
            sims, idxs = _torch_search(queries, part, k, device, chunk, buf)
        else:
            idx = build_index(np.ascontiguousarray(part.cpu().numpy(), dtype=np.float32), index, device,
                              nlist, nprobe, hnsw_m)
            if q is None:
                q = np.ascontiguousarray(queries.cpu().numpy(), dtype=np.float32)
            sims, idxs = (torch.from_numpy(a) for a in search_index(idx, q, min(k, len(part)), chunk))
            idxs = idxs.long()
            del idx
        idxs = idxs + start if start else idxs
        best = (sims, idxs) if best is None else merge_topk(*best, sims, idxs, k)
    return best


def _torch_search(queries: torch.Tensor, part: torch.Tensor, k: int, device: torch.device, chunk: int,
                  buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` of ``queries @ part.T`` in query chunks, each block written into ``buf``."""
    db = part.to(device, torch.float32).contiguous()
    sims, idxs = [], []
    for i in range(0, len(queries), chunk):
        qc = queries[i:i + chunk].to(device, torch.float32)
        block = torch.mm(qc, db.T, out=buf[:len(qc) * len(db)].view(len(qc), len(db)))
        s, j = topk_rows(block, k)
        sims.append(s.cpu())
        idxs.append(j.cpu())
    return torch.cat(sims), torch.cat(idxs)


def topk_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``torch.topk(scores, k, dim=1)`` (values sorted, same neighbour sets up to ties), faster.

    Two stages. The first ``m * G`` columns are cut into G strided groups of m (group g holds the
    columns g, g + G, g + 2G, ...) and each group's maximum is taken. Let tau be the k-th largest
    group maximum: k groups reach tau, so the k-th largest score is >= tau, and every one of the k
    largest scores lies in a group whose maximum is >= tau -- one of the top-k groups. So the
    k * m columns of the top-k groups, plus the < m columns left over, hold the top k; a second
    ``topk`` over them finds it. With m ~ sqrt(N / k) both ``topk`` calls run over ~sqrt(N k)
    elements instead of N (50k database, k = 200: 3.1k group maxima and 3.2k candidates).
    """
    q, n = scores.shape
    k = min(k, n)
    m = int(math.sqrt(n / max(k, 1)))
    groups = n // max(m, 1)
    if m < 2 or groups < k:
        return torch.topk(scores, k, dim=1)
    body = scores[:, :m * groups].view(q, m, groups)        # body[:, i, g] = column i * groups + g
    _, top_groups = body.amax(dim=1).topk(k, dim=1, sorted=False)
    cols = (top_groups[:, :, None] + groups * torch.arange(m, device=scores.device)).view(q, k * m)
    if n > m * groups:
        rest = torch.arange(m * groups, n, device=scores.device).expand(q, n - m * groups)
        cols = torch.cat([cols, rest], dim=1)
    vals, j = scores.gather(1, cols).topk(k, dim=1)
    return vals, cols.gather(1, j)


def resolve_backend(backend: str = "auto", index: str = "flat", device: str | torch.device = "cpu",
                    queries: torch.Tensor | None = None, database: torch.Tensor | None = None, k: int = 20) -> str:
    """``"auto"`` -> ``"faiss"`` on a CUDA device when FAISS sees GPUs or for an approximate index; on a CPU,
    given the search's ``queries`` and ``database``, the faster exact backend of a timed trial on them
    (:func:`measured_cpu_backend`, cached per machine); else ``"torch"``."""
    if backend != "auto":
        return backend
    faiss_gpu = torch.device(device).type == "cuda" and _faiss_gpus() > 0
    if faiss_gpu or index != "flat":
        return "faiss"
    if torch.device(device).type == "cpu" and queries is not None and database is not None and _has_faiss():
        return measured_cpu_backend(queries, database, k)
    return "torch"


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


TRIAL_QUERIES = 1024


def measured_cpu_backend(queries: torch.Tensor, database: torch.Tensor, k: int) -> str:
    """The faster of the two exact CPU searches (torch GEMM + two-stage top-k vs FAISS ``IndexFlatIP``) on
    this machine: both timed on up to 1024 of the run's queries against its database (its first shard),
    each the best of 2 after a warm-up, interleaved. The cache key is the database size (to a power of
    two), the dimension and k; the machine key holds the CPU, torch, oneDNN and threads. Both are exact
    (the same neighbours), so the choice changes speed only."""
    from harness.models.autotune import ChoiceCache, _best_times

    n, d = min(len(database), SHARD_ROWS), database.shape[1]
    key = f"knn n2^{max(0, round(math.log2(max(n, 1))))} d{d} k{k}"
    q, db = queries[:TRIAL_QUERIES], database[:n]

    def trial() -> dict:
        t = _best_times({"torch": lambda: search(q, db, k, "torch"), "faiss": lambda: search(q, db, k, "faiss")}, reps=2)
        return {"torch_s": round(t["torch"], 4), "faiss_s": round(t["faiss"], 4), "queries": len(q), "rows": n,
                "choice": "faiss" if t["faiss"] < 0.95 * t["torch"] else "torch"}

    return ChoiceCache().get_or_measure(key, trial)[0]["choice"]


def _faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Class scores ``p_c = sum_i exp(s_i / T) [y_i = c]`` over the given neighbours: (Q, C)."""
    w = torch.exp(sims.double() / temperature)  # float64: exp(1/0.07) ~ 1.6e6, sums stay exact enough
    scores = torch.zeros(len(sims), num_classes, dtype=torch.float64)
    return scores.scatter_add_(1, neighbour_labels, w)


def normalise(features: torch.Tensor) -> torch.Tensor:
    """Features as the kNN protocol compares them: float32, L2-normalised rows (cosine = inner product)."""
    return F.normalize(features.float(), dim=1)


def top_classes(sims: torch.Tensor, idx: torch.Tensor, train_labels: torch.Tensor, k: int, num_classes: int,
                temperature: float = TEMPERATURE, top: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted vote of each query's first ``k`` neighbours: its ``top`` best classes (values, classes).

    A value of 0 means no neighbour voted for that class (it is never a hit). A missing neighbour
    (index -1, as an approximate FAISS index may return) has similarity -inf or -FLT_MAX: weight 0.
    """
    labels = train_labels[idx[:, :k].clamp_min(0)]
    scores = vote(sims[:, :k], labels, num_classes, temperature)
    return scores.topk(min(top, num_classes), dim=1)


def knn_eval(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, ks: Sequence[int] = KS, temperature: float = TEMPERATURE,
             num_classes: int | None = None, backend: str = "auto", index: str = "flat",
             device: str | torch.device = "cpu", chunk_size: int | None = None,
             shard_rows: int = SHARD_ROWS) -> dict[str, float]:
    """Weighted kNN accuracy (percent) for every k from one search: ``knn/top1@{k}``, ``knn/top5@{k}``.

    Features are L2-normalised here (:func:`normalise`); the vote is :func:`vote` (DINO / InstDisc,
    T = 0.07). A class without a vote never counts as a hit (so top-5 with k < 5 neighbours is well
    defined). ``shard_rows``: database rows per exact-search shard (:func:`search`).
    """
    train_labels = torch.as_tensor(train_labels).long().cpu()
    test_labels = torch.as_tensor(test_labels).long().cpu()
    c = int(num_classes or int(max(train_labels.max(), test_labels.max())) + 1)
    sims, idx = search(normalise(test_features), normalise(train_features), max(ks), backend, index, device,
                       chunk_size, shard_rows=shard_rows)
    out = {}
    for k in sorted(ks):
        values, classes = top_classes(sims, idx, train_labels, k, c, temperature)
        hit = (classes == test_labels[:, None]) & (values > 0)  # a class no neighbour voted for is no hit
        out[f"knn/top1@{k}"] = 100.0 * hit[:, 0].double().mean().item()
        out[f"knn/top5@{k}"] = 100.0 * hit.any(dim=1).double().mean().item()
    return out
