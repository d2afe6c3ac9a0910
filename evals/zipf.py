"""An unsupervised score of a representation: how well its clusters follow Zipf's law (Piergiovanni,
Angelova & Ryoo, 2020, "Evolving Losses", Sec. 3.4: the fitness of their loss search).

Cluster the features of unlabeled samples into k centroids c_1..c_k (k-means). With equal,
isotropic clusters and 2 sigma^2 = 1 (the paper's simplification), Bayes' rule gives each sample's
soft assignment p(c_i | x) = softmax_i(-||x - c_i||^2), and the clusters' frequencies are
p(c_i) = 1/N sum_x p(c_i | x). Zipf's law is the prior over classes of natural data:
q(c_i) = (1 / i^s) / H_{k,s}, with H_{k,s} = sum_{j=1..k} 1 / j^s the generalised harmonic number.
The score is KL(p || q) = sum_i p(c_i) log(p(c_i) / q(c_i)) (lower is better). The clusters carry no
order, so they are matched to Zipf's ranks by frequency: the most frequent cluster is rank 1 (our
reading; the paper writes q(c_i) with the cluster index as the rank). No label is read.
"""

from __future__ import annotations

import numpy as np
import torch


def zipf_prior(k: int, s: float = 1.0) -> torch.Tensor:
    """q(i) = (1 / i^s) / H_{k,s} for ranks i = 1..k (float64)."""
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    w = ranks.pow(-s)
    return w / w.sum()


def soft_assignments(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """p(c_i | x) = softmax_i(-||x - c_i||^2) (float64, rows sum to 1)."""
    d2 = torch.cdist(features.double(), centroids.double()).pow(2)
    return torch.softmax(-d2, dim=1)


def zipf_kl(assignments: torch.Tensor, s: float = 1.0) -> float:
    """KL(p || q) between the clusters' frequencies p (the mean of the rows of ``assignments``, ranked
    from the most frequent) and Zipf's q over as many ranks."""
    p = assignments.double().mean(0).sort(descending=True).values
    q = zipf_prior(len(p), s)
    nz = p > 0
    return float((p[nz] * (p[nz] / q[nz]).log()).sum())


def kmeans(features: torch.Tensor, k: int, seed: int = 0, iters: int = 25) -> torch.Tensor:
    """k centroids of ``features`` (N, D) by FAISS's k-means (seeded; float32)."""
    from evals.knn import require_faiss

    faiss = require_faiss()
    x = np.ascontiguousarray(features.float().numpy())
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    return torch.from_numpy(km.centroids.copy())


def zipf_fitness(features: torch.Tensor, k: int = 10, s: float = 1.0, seed: int = 0) -> float:
    """The paper's fitness of a representation: KL(p || Zipf) of its k-means clusters (lower is better)."""
    if len(features) < k:
        raise ValueError(f"zipf_fitness: {len(features)} samples for {k} clusters")
    return zipf_kl(soft_assignments(features, kmeans(features, k, seed)), s)
