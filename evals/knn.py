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
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import SSLBenchError

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07
CHUNK_ELEMENTS = 1 << 25  # similarity block (queries x database): 128 MB in float32, 671 queries for 50k


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise SSLBenchError("kNN backend 'faiss' needs FAISS, which is not installed; "
                            "install faiss: pip install 'sslbench[cpu]' or 'sslbench[gpu]'") from None
    return faiss


def _faiss_index(db: np.ndarray, index: str, device: torch.device, nlist: int | None, nprobe: int, hnsw_m: int):
    faiss = require_faiss()
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
        raise SSLBenchError(f"unknown kNN index '{index}'; valid choices: flat, ivf, hnsw")
    if device.type == "cuda" and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0 and index != "hnsw":
        idx = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, idx)
    idx.add(db)
    return idx


def search(queries: torch.Tensor, database: torch.Tensor, k: int, backend: str = "auto", index: str = "flat",
           device: str | torch.device = "cpu", chunk_size: int | None = None, nlist: int | None = None,
           nprobe: int = 32, hnsw_m: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product neighbours of each query: (similarities, indices), both (Q, k), sorted.

    Inputs are used as given (normalise them first for cosine). Queries go in chunks of
    ``chunk_size`` (default: ``CHUNK_ELEMENTS / len(database)``) so memory stays bounded.
    """
    device = torch.device(device)
    k = min(k, len(database))
    chunk = chunk_size or max(1, min(4096, CHUNK_ELEMENTS // max(1, len(database))))
    backend = resolve_backend(backend, index, device)
    if backend not in ("torch", "faiss"):
        raise SSLBenchError(f"unknown kNN backend '{backend}'; valid choices: auto, faiss, torch")
    if len(queries) == 0:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    if backend == "torch":
        if index != "flat":
            raise SSLBenchError(f"kNN index '{index}' needs backend 'faiss' (the torch backend is exact)")
        db = database.to(device, torch.float32).contiguous()
        sims, idxs = [], []
        buf = torch.empty(min(chunk, len(queries)), len(db), device=device)  # reused: no page faults per chunk
        for i in range(0, len(queries), chunk):
            qc = queries[i:i + chunk].to(device, torch.float32)
            block = torch.mm(qc, db.T, out=buf[:len(qc)])
            s, j = topk_rows(block, k)
            sims.append(s.cpu())
            idxs.append(j.cpu())
        return torch.cat(sims), torch.cat(idxs)
    idx = _faiss_index(np.ascontiguousarray(database.cpu().numpy(), dtype=np.float32), index, device, nlist, nprobe, hnsw_m)
    q = np.ascontiguousarray(queries.cpu().numpy(), dtype=np.float32)
    sims, idxs = zip(*(idx.search(q[i:i + chunk], k) for i in range(0, len(q), chunk)))
    return torch.from_numpy(np.concatenate(sims)), torch.from_numpy(np.concatenate(idxs)).long()


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


def resolve_backend(backend: str = "auto", index: str = "flat", device: str | torch.device = "cpu") -> str:
    """``"auto"`` -> ``"faiss"`` on a CUDA device when FAISS sees GPUs or for an approximate index, else ``"torch"``."""
    if backend != "auto":
        return backend
    faiss_gpu = torch.device(device).type == "cuda" and _faiss_gpus() > 0
    return "faiss" if faiss_gpu or index != "flat" else "torch"


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


def knn_eval(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, ks: Sequence[int] = KS, temperature: float = TEMPERATURE,
             num_classes: int | None = None, backend: str = "auto", index: str = "flat",
             device: str | torch.device = "cpu", chunk_size: int | None = None) -> dict[str, float]:
    """Weighted kNN accuracy (percent) for every k from one search: ``knn/top1@{k}``, ``knn/top5@{k}``.

    Features are L2-normalised here; the vote is :func:`vote` (DINO / InstDisc, T = 0.07).
    A class without a vote never counts as a hit (so top-5 with k < 5 neighbours is well defined).
    """
    train_labels = torch.as_tensor(train_labels).long().cpu()
    test_labels = torch.as_tensor(test_labels).long().cpu()
    c = int(num_classes or int(max(train_labels.max(), test_labels.max())) + 1)
    db = F.normalize(train_features.float(), dim=1)
    q = F.normalize(test_features.float(), dim=1)
    sims, idx = search(q, db, max(ks), backend, index, device, chunk_size)
    nl = train_labels[idx]
    out = {}
    for k in sorted(ks):
        scores = vote(sims[:, :k], nl[:, :k], c, temperature)
        top = scores.topk(min(5, c), dim=1)
        hit = (top.indices == test_labels[:, None]) & (top.values > 0)  # a class no neighbour voted for is no hit
        out[f"knn/top1@{k}"] = 100.0 * hit[:, 0].double().mean().item()
        out[f"knn/top5@{k}"] = 100.0 * hit.any(dim=1).double().mean().item()
    return out
