"""The ``linear_lbfgs`` protocol: multinomial logistic regression trained to convergence with
L-BFGS (full batch) on standardised frozen features, the protocol of Chen et al. 2020 (SimCLR,
App. B.5) and of scikit-learn's ``LogisticRegression``; its L2 strength is selected on a
stratified, seeded hold-out of TRAIN (never the test split), as the SGD probe's (``evals.linear``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from evals.linear import Standardizer, _threads, label_fraction_subset, stratified_split, topk_accuracy

LBFGS_WD_GRID = (1e-5, 1e-4, 1e-3)


def fit_lbfgs(z: torch.Tensor, y: torch.Tensor, num_classes: int, wd: float, max_iter: int = 100,
              tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, ``min mean_i CE(W z_i + b, y_i) + wd/2 ||W||^2``, full-batch L-BFGS
    (strong-Wolfe line search). Returns ``W`` (D, C), ``b`` (C).

    The gradient is analytic, ``dL/dW = z^T G + wd W`` with ``G = (softmax(zW + b) - onehot(y)) / N``, and
    computed as ``(G^T z)^T``: autograd's ``z^T G`` multiplies by a transposed tall matrix, ~4x slower on a
    CPU than the row-major product for a handful of classes."""
    n = len(z)
    w = torch.zeros(z.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    onehot = F.one_hot(y, num_classes).to(z.dtype)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=10, tolerance_grad=tol,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def closure():
        logp = torch.log_softmax(torch.addmm(b, z, w), dim=1)
        loss = -(logp * onehot).sum() / n + 0.5 * wd * (w * w).sum()
        g = logp.exp_().sub_(onehot).div_(n)                      # softmax - onehot, over N
        w.grad = torch.mm(g.T, z).T.contiguous().add_(w, alpha=wd)
        b.grad = g.sum(0)
        return loss

    with _threads(1 if z.numel() < (1 << 22) else torch.get_num_threads()):
        opt.step(closure)
    return w.detach(), b.detach()


def lbfgs_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                test_labels: torch.Tensor, num_classes: int | None = None, wds: Sequence[float] = LBFGS_WD_GRID,
                holdout_fraction: float = 0.1, max_iter: int = 100, label_fraction: float = 1.0, seed: int = 0,
                prefix: str = "linear_lbfgs") -> dict[str, float]:
    """L-BFGS logistic regression on standardised features; wd chosen on a TRAIN hold-out.

    Returns ``{prefix}/top1``, ``{prefix}/top5``, ``{prefix}/wd``.
    """
    y = torch.as_tensor(train_labels).long()
    yt = torch.as_tensor(test_labels).long()
    c = int(num_classes or int(y.max()) + 1)
    sub = label_fraction_subset(y, label_fraction, seed)
    x, y = train_features[sub].float(), y[sub]
    wd = select_lbfgs_wd(x, y, c, wds, holdout_fraction, max_iter, seed)
    std = Standardizer.fit(x)
    w, b = fit_lbfgs(std(x), y, c, wd, max_iter)
    top1, top5 = topk_accuracy(torch.addmm(b, std(test_features), w), yt)
    return {f"{prefix}/top1": top1, f"{prefix}/top5": top5, f"{prefix}/wd": wd}


def select_lbfgs_wd(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                    wds: Sequence[float] = LBFGS_WD_GRID, holdout_fraction: float = 0.1, max_iter: int = 100,
                    seed: int = 0) -> float:
    """The L2 strength with the best hold-out top-1 (TRAIN data only; ties to the earlier entry)."""
    y = torch.as_tensor(train_labels).long()
    keep, held = stratified_split(y, holdout_fraction, seed)
    std = Standardizer.fit(train_features[keep])
    zk, zh = std(train_features[keep]), std(train_features[held])
    accs = []
    for wd in wds:
        w, b = fit_lbfgs(zk, y[keep], num_classes, wd, max_iter)
        accs.append((torch.addmm(b, zh, w).argmax(1) == y[held]).double().mean().item())
    return wds[max(range(len(wds)), key=lambda i: (accs[i], -i))]
