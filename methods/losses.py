"""Loss functions shared by methods. Each cites its paper and states its formula.

Distributed gathers are not done here: callers pass already-gathered tensors
(``harness.distributed.gather_with_grad``), so no loss does its own reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR; Chen et al., 2020), over the 2N views of N pairs.

    With z the 2N L2-normalised embeddings, s_ij = z_i . z_j / tau and positive p(i):

        L = 1/(2N) sum_i -log( exp(s_{i,p(i)}) / sum_{k != i} exp(s_ik) )
    """
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float, queue: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE (van den Oord et al., 2018; MoCo, He et al., 2020).

    For normalised queries q_i, their positive keys k_i and negatives n_j (the other keys in
    the batch when ``queue`` is None, else the queue):

        L = 1/N sum_i -log( exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_j exp(q_i.n_j / tau)) )
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    if queue is None:
        logits = q @ k.t() / temperature
        target = torch.arange(q.shape[0], device=q.device)
    else:
        pos = (q * k).sum(dim=1, keepdim=True)
        neg = q @ queue.float().t()
        logits = torch.cat([pos, neg], dim=1) / temperature
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al., 2020): 2 - 2 cos(p, sg(z)), averaged over the batch.

    (SimSiam's -cos(p, sg(z)) differs by an affine map: (this - 2) / 2.)
    """
    p = F.normalize(p.float(), dim=1)
    z = F.normalize(z.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()
