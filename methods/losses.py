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


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """BYOL's symmetrised loss (Grill et al., 2020), eq. 2 plus its mirror.

    With predictions p_v = q(g(f(x_v))) of the online network and target projections
    z'_v = g'(f'(x_v)) (no gradient):

        L = [2 - 2 cos(p1, sg(z'2))] + [2 - 2 cos(p2, sg(z'1))],  each term averaged over the batch
    """
    return negative_cosine(p1, z2) + negative_cosine(p2, z1)


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True,
             eps: float = 1e-6) -> torch.Tensor:
    """MAE reconstruction loss (He et al., 2022): MSE on the masked patches only.

    ``pred`` and ``target`` are (B, L, P) per-patch pixel vectors, ``mask`` is (B, L) with 1 for
    a masked (removed) patch. With ``norm_pix`` the target of each patch is normalised by its own
    mean and variance, t_hat = (t - mean(t)) / sqrt(var(t) + eps), var being the unbiased
    variance over the patch's P values (torch's default, as in the paper's code):

        L = sum_{b,l} m_bl * mean_p (pred_blp - t_hat_blp)^2 / sum_{b,l} m_bl
    """
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def rotation_targets(batch: int, n_rotations: int = 4, device=None) -> torch.Tensor:
    """Labels for a batch stacked as [all images rotated by 0, by 90, by 180, by 270 degrees]."""
    return torch.arange(n_rotations, device=device).repeat_interleave(batch)
