"""Linear probes on frozen, cached features.

Protocol (Zhang et al. 2016 "Colorful Image Colorization"; He et al. 2022, MAE, App. A.2):
a ``BatchNorm1d(affine=False)`` followed by a ``Linear`` layer, trained with softmax cross-entropy
``L = mean_i -log softmax(W z_i + b)_{y_i} + wd/2 ||W||^2`` by SGD (momentum 0.9) under a
cosine schedule ``lr_t = lr * (1 + cos(pi t / T)) / 2``. On cached features the BatchNorm
uses the full TRAIN statistics, ``z = (x - mean) / sqrt(var + 1e-5)`` (the eval-mode BN of a
full-batch pass), so it is computed once.

Model selection never touches the test split: :func:`select_and_refit` receives TRAIN features
and labels only. For every (lr, wd) of the grid it trains, in one pass and as one wide matrix, a
selection head that never sees a stratified, seeded hold-out of TRAIN and a refit head that
sees all of TRAIN; the selection heads' hold-out accuracy picks the pair, whose refit head is
the probe (:func:`linear_probe` reports its test top-1 / top-5). :func:`select_hparams` returns
the selection alone.

A second protocol, :func:`lbfgs_probe`, is multinomial logistic regression trained to
convergence with L-BFGS (full batch), the protocol of Chen et al. 2020 (SimCLR, App. B.5)
and of scikit-learn's ``LogisticRegression``; its L2 strength is selected the same way.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from harness.core.device import resolve_precision

LR_GRID = (0.01, 0.03, 0.1, 0.3)
# 15 epochs (30 until 2026-12-07): on 18 real CIFAR-10 feature sets scored on a TRAIN hold-out, 0.09 points under 30
# on average (worst 0.47) at half the work (benchmarks/linear_probe_epochs.py); records keep the value they ran with
LINEAR_EPOCHS = 15
WD_GRID = (0.0, 1e-3)  # linear probes usually need little decay (MAE, DINO use 0)
BN_EPS = 1e-5


# ----------------------------------------------------------------------------- splits


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split of indices: (keep, held_out), ``round(fraction * n_c)`` per class c
    held out (at least one of every class with two or more samples)."""
    labels = torch.as_tensor(labels).long()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    order = perm[torch.sort(labels[perm], stable=True).indices]  # grouped by class, random within a class
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    ys = labels[order]
    rank = torch.arange(len(labels)) - starts[ys]  # position of each sample within its class
    m = torch.where(counts > 1, (fraction * counts.double()).round().long().clamp(1), torch.zeros_like(counts))
    m = torch.minimum(m, (counts - 1).clamp_min(0))
    held = rank < m[ys]
    return torch.sort(order[~held]).values, torch.sort(order[held]).values


def label_fraction_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Seeded stratified subset with ``round(fraction * n_c)`` (>= 1) samples of each class c
    (the 1% / 10% semi-supervised protocol of Chen et al. 2020, SimCLR)."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    return stratified_split(labels, fraction, seed)[1] if fraction > 0 else torch.arange(0)


# ----------------------------------------------------------------------------- SGD heads


@dataclass
class Standardizer:
    """BatchNorm1d(affine=False) with full-batch TRAIN statistics."""

    mean: torch.Tensor
    std: torch.Tensor

    ROWS = 1024   # rows per block: a block and its scratch stay in the core's cache

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Standardizer":
        """Mean, then the mean squared deviation from it (two passes: no cancellation), accumulated in float64
        over cache-sized row blocks (``torch.var_mean`` over dim 0 of a tall matrix is ~9x slower on a CPU)."""
        x = x.float()
        mean = x.mean(0)
        acc = torch.zeros(x.shape[1], dtype=torch.float64)
        buf = torch.empty(min(cls.ROWS, len(x)), x.shape[1])
        for i in range(0, len(x), cls.ROWS):
            rows = x[i:i + cls.ROWS]
            dev = torch.sub(rows, mean, out=buf[:len(rows)])
            acc += dev.mul_(dev).sum(0, dtype=torch.float64)      # squared deviations
        var = (acc / max(len(x), 1)).float()
        return cls(mean, (var + BN_EPS).sqrt())

    def __call__(self, x: torch.Tensor, rows: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(x[rows] - mean) / std`` as ``dtype``, written block by block (one pass, no full-size temporaries)."""
        n = len(x) if rows is None else len(rows)
        out = torch.empty(n, x.shape[1], dtype=dtype)
        buf = torch.empty(min(self.ROWS, n), x.shape[1])
        for i in range(0, n, self.ROWS):
            blk = x[i:i + self.ROWS] if rows is None else x.index_select(0, rows[i:i + self.ROWS])
            # subtract first, then divide (x * (1/std) - mean/std cancels badly when the mean dwarfs the spread)
            torch.div(torch.sub(blk, self.mean, out=buf[:len(blk)]), self.std, out=out[i:i + len(blk)])
        return out


@contextmanager
def _threads(n: int):
    """Temporarily cap torch's intra-op threads (the probe's ops are tiny: fork/join would dominate)."""
    old = torch.get_num_threads()
    torch.set_num_threads(min(n, old))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_heads(z: torch.Tensor, y: torch.Tensor, num_classes: int, lrs: Sequence[float], wds: Sequence[float],
                epochs: int = LINEAR_EPOCHS, batch_size: int = 1024, momentum: float = 0.9, seed: int = 0,
                precision: str = "auto", threads: int | None = None, hidden_rows: torch.Tensor | None = None,
                blind_heads: int = 0, standardize: Standardizer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``len(lrs)`` independent softmax heads at once by mini-batch SGD with a cosine schedule.

    Head h has learning rate ``lrs[h]`` and weight decay ``wds[h]``; all share the batches (one
    (D, C*H) matrix). The rows are shuffled once (seeded) and every epoch visits the batches in a
    new random order: on a memory-bound CPU a per-epoch row shuffle would double the traffic. The gradient of the mean cross-entropy is analytic,
    ``dL/dW = z^T (softmax(zW + b) - onehot(y)) / B + wd W``, so no autograd graph is built.
    With ``precision="auto"`` the two matmuls run in bf16 where the CPU has bf16 units (AMX /
    AVX512-BF16); weights, softmax and updates stay float32. Returns ``W`` (D, H, C), ``b`` (H, C).

    ``hidden_rows`` (bool, N) with ``blind_heads = k``: the first k heads never see those rows (their
    gradient is the mean over the batch's other rows), as if trained on the remaining rows alone;
    the other heads see every row. :func:`select_and_refit` trains the hold-out selection heads
    and the refit heads in this one pass. With ``standardize``, ``z`` is the raw features and is
    standardised while it is shuffled into the training copy (one pass over the data instead of three).
    """
    n, d = z.shape
    h, c = len(lrs), num_classes
    hc = h * c
    dt = torch.bfloat16 if resolve_precision(precision, torch.device("cpu")) == "bf16" else torch.float32
    # columns are class-major, column k * H + j = class k of head j: the per-head softmax is then a
    # softmax over dim 1 of a (B, C, H) view, which vectorises over the heads (a softmax over a
    # size-C last dim is ~10x slower on a CPU)
    w = torch.zeros(d, hc)
    b = torch.zeros(hc)
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    lr = torch.tensor(lrs, dtype=torch.float32).repeat(c)
    wd = torch.tensor(wds, dtype=torch.float32).repeat(c)
    decay = bool((wd != 0).any())
    g = torch.Generator().manual_seed(seed)
    per_epoch = max(1, math.ceil(n / batch_size))
    total, step = epochs * per_epoch, 0
    perm = torch.randperm(n, generator=g)
    # shuffled once (each epoch visits the batches in a new order), cast to the matmuls' precision
    z = standardize(z, perm, dt) if standardize is not None else z.index_select(0, perm).to(dt)
    y = y[perm]
    # where each row's label sits, for every head, in its batch's (B, C*H) matrix: the one-hot of
    # softmax - onehot(y) is one index_add per step (row i is row i % B of its batch)
    flat = ((torch.arange(n) % batch_size) * hc + y * h)[:, None] + torch.arange(h)[None, :]
    minus_one = torch.full((batch_size * h,), -1.0)
    # the batches are fixed slices of the once-shuffled rows, so each row's weight in its batch's mean
    # gradient is known in advance, per head: 1 / (rows in the batch), and for a blind head 0 on the rows it
    # may not see and 1 / (rows it sees) on the others; one multiply per step then masks and averages
    batch_of = torch.arange(n) // batch_size
    rows = torch.bincount(batch_of, minlength=per_epoch).float()
    weight = (1.0 / rows)[batch_of][:, None].repeat(1, h)                 # (N, H)
    if hidden_rows is not None and blind_heads:
        seen = (~hidden_rows[perm]).float()
        seen_per_batch = torch.zeros(per_epoch).index_add_(0, batch_of, seen).clamp_min(1.0)
        weight[:, :blind_heads] = (seen / seen_per_batch[batch_of])[:, None]
    # every per-step array lives in a buffer allocated once (a fresh ~0.5 MB array per op per step
    # goes through mmap/munmap and page faults in glibc's allocator)
    bs = min(batch_size, n)
    wb, gb = torch.empty(d, hc, dtype=dt), torch.empty(d, hc, dtype=dt)
    logit_b, p_b = torch.empty(bs, hc, dtype=dt), torch.empty(bs, hc, dtype=dt)
    logit, p_full = torch.empty(bs, hc), torch.empty(bs, hc)
    gbias, f = torch.empty(hc), torch.empty(hc)
    with _threads(threads or torch.get_num_threads()):   # class-major heads: big enough ops for every core
        for _ in range(epochs):
            for s in torch.randperm(per_epoch, generator=g).tolist():
                sl = slice(s * batch_size, (s + 1) * batch_size)
                x = z[sl]
                m = len(x)
                wb.copy_(w)
                torch.mm(x, wb, out=logit_b[:m])
                lg = logit[:m].copy_(logit_b[:m]).add_(b)
                p = torch.ops.aten._softmax.out(lg.view(m, c, h), 1, False, out=p_full[:m].view(m, c, h)).view(m, hc)
                p.view(-1).index_add_(0, flat[sl].reshape(-1), minus_one[:m * h])   # softmax - onehot(y)
                p.view(m, c, h).mul_(weight[sl].view(m, 1, h))   # each head's mean over the rows it sees
                torch.sum(p, 0, out=gbias)
                torch.mm(x.T, p_b[:m].copy_(p), out=gb)
                torch.mul(lr, 0.5 * (1 + math.cos(math.pi * step / total)), out=f)   # cosine schedule
                torch.add(gb, vw, alpha=momentum, out=vw)          # vw <- momentum vw + grad (+ wd w)
                if decay:
                    vw.addcmul_(w, wd)
                torch.add(gbias, vb, alpha=momentum, out=vb)
                w.addcmul_(vw, f, value=-1.0)
                b.addcmul_(vb, f, value=-1.0)
                step += 1
    # (D, C, H) -> (D, H, C)
    return w.view(d, c, h).transpose(1, 2).contiguous(), b.view(c, h).T.contiguous()


def _logits(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, H, C) logits of every head."""
    d, h, c = w.shape
    return torch.addmm(b.reshape(-1), z, w.reshape(d, h * c)).view(len(z), h, c)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[float]:
    """Percent of rows whose label is among the top-k logits (k capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    hit = top == labels[:, None]
    return [100.0 * hit[:, :k].any(dim=1).double().mean().item() for k in ks]


def select_hparams(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                   lrs: Sequence[float] = LR_GRID, wds: Sequence[float] = WD_GRID, holdout_fraction: float = 0.1,
                   epochs: int = LINEAR_EPOCHS, batch_size: int = 1024, seed: int = 0,
                   precision: str = "auto") -> tuple[float, float, dict[tuple[float, float], float]]:
    """The (lr, wd) the probe selects on a stratified, seeded hold-out of the TRAIN split, with the
    hold-out top-1 per pair (the selection half of :func:`select_and_refit`; TRAIN data only)."""
    *_, lr, wd, scores = select_and_refit(train_features, train_labels, num_classes, lrs, wds, holdout_fraction,
                                          epochs, batch_size, seed, precision)
    return lr, wd, scores


def select_and_refit(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                     lrs: Sequence[float] = LR_GRID, wds: Sequence[float] = WD_GRID, holdout_fraction: float = 0.1,
                     epochs: int = LINEAR_EPOCHS, batch_size: int = 1024, seed: int = 0, precision: str = "auto"):
    """Hold-out selection and refit in ONE training pass over TRAIN (half the work of select, then refit).

    For every (lr, wd) of the grid two heads train side by side on the same batches: a
    *selection* head that never sees the stratified, seeded hold-out rows (:func:`stratified_split`;
    its gradient is the mean over the batch's other rows) and a *refit* head that sees all of
    TRAIN. The selection heads' hold-out top-1 picks the pair (ties to the earlier grid entry);
    its refit head is the probe. Both standardise with the full-TRAIN statistics (unlabelled
    feature moments; no label of a hold-out row reaches a selection head). TRAIN only, by construction.
    Returns (std, W (D, C), b (C), lr, wd, hold-out top-1 per pair).
    """
    y = torch.as_tensor(train_labels).long()
    _, held = stratified_split(y, holdout_fraction, seed)
    hidden = torch.zeros(len(y), dtype=torch.bool)
    hidden[held] = True
    std = Standardizer.fit(train_features)
    grid = [(lr, wd) for lr in lrs for wd in wds]
    g = len(grid)
    heads_lr = [p[0] for p in grid] * 2
    heads_wd = [p[1] for p in grid] * 2
    w, b = train_heads(train_features, y, num_classes, heads_lr, heads_wd, epochs, batch_size, seed=seed,
                       precision=precision, hidden_rows=hidden, blind_heads=g, standardize=std)
    acc = (_logits(std(train_features, held), w[:, :g], b[:g]).argmax(-1) == y[held][:, None]).double().mean(0) * 100
    scores = {p: float(a) for p, a in zip(grid, acc)}
    best = max(range(g), key=lambda i: (acc[i].item(), -i))
    return std, w[:, g + best], b[g + best], grid[best][0], grid[best][1], scores


def head_module(std: Standardizer, w: torch.Tensor, b: torch.Tensor) -> nn.Sequential:
    """The fitted probe as ``BatchNorm1d(affine=False) + Linear`` (BN in eval mode holds the TRAIN stats)."""
    d, c = w.shape
    bn = nn.BatchNorm1d(d, affine=False, eps=BN_EPS)
    bn.running_mean.copy_(std.mean)
    bn.running_var.copy_(std.std ** 2 - BN_EPS)
    lin = nn.Linear(d, c)
    with torch.no_grad():
        lin.weight.copy_(w.T)
        lin.bias.copy_(b)
    return nn.Sequential(bn, lin).eval()


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int | None = None, epochs: int = LINEAR_EPOCHS,
                 holdout_fraction: float = 0.1, lrs: Sequence[float] = LR_GRID, wds: Sequence[float] = WD_GRID,
                 batch_size: int = 1024, label_fraction: float = 1.0, seed: int = 0,
                 precision: str = "auto", prefix: str = "linear", fitted: dict | None = None) -> dict[str, float]:
    """Select (lr, wd) on TRAIN and refit on all of TRAIN (:func:`select_and_refit`), report test accuracy.

    Returns ``{prefix}/top1``, ``{prefix}/top5`` (percent), ``{prefix}/lr``, ``{prefix}/wd``.
    ``label_fraction < 1`` first restricts TRAIN to a stratified seeded subset (1%, 10% protocols).
    ``fitted``, when given, receives the probe (``std``, ``w``, ``b``) for other protocols to score
    other test images with (``evals.background``).
    """
    y = torch.as_tensor(train_labels).long()
    yt = torch.as_tensor(test_labels).long()
    c = int(num_classes or int(y.max()) + 1)
    x = train_features.float()
    if label_fraction < 1:
        sub = label_fraction_subset(y, label_fraction, seed)
        x, y = x[sub], y[sub]
    std, w, b, lr, wd, _ = select_and_refit(x, y, c, lrs, wds, holdout_fraction, epochs, batch_size, seed, precision)
    if fitted is not None:
        fitted.update(std=std, w=w, b=b)
    top1, top5 = topk_accuracy(torch.addmm(b, std(test_features), w), yt)
    return {f"{prefix}/top1": top1, f"{prefix}/top5": top5, f"{prefix}/lr": lr, f"{prefix}/wd": wd}
