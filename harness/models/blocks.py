"""Stateful building blocks shared by methods: the EMA teacher, DINO's centring, MoCo's queue,
InstDisc's memory bank, and SwAV's Sinkhorn-Knopp assignment.

Everything a method must resume with is a parameter or buffer of these modules, so it lands in
the method's ``state_dict`` and therefore in checkpoints. Each exists once; methods compose them.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core.distributed import all_reduce_max, all_reduce_mean, world_size


class EMATeacher(nn.Module):
    """A momentum (EMA) copy of a module: ``t <- m * t + (1 - m) * s`` (BYOL, MoCo, DINO).

    The teacher receives no gradients; its parameters and buffers live in the method's
    state_dict, so checkpoints carry them. BatchNorm running statistics are copied
    (MoCo/BYOL practice).
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(student)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        sp = list(student.parameters())
        tp = list(self.module.parameters())
        torch._foreach_mul_(tp, momentum)
        torch._foreach_add_(tp, [p.detach() for p in sp], alpha=1 - momentum)
        for tb, sb in zip(self.module.buffers(), student.buffers()):
            tb.copy_(sb)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class Centering(nn.Module):
    """DINO's centring and sharpening of the teacher output (Caron et al., 2021):

        P_t(x) = softmax((g_t(x) - c) / tau_t),   c <- m c + (1 - m) mean_batch g_t(x)

    ``c`` is a buffer (checkpointed); the batch mean is over every leading dimension (images,
    or images x patches for iBOT) and over all processes (``harness.core.distributed``). Centring
    stops one dimension from dominating, sharpening (small tau_t) stops the uniform collapse.
    """

    def __init__(self, dim: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    def forward(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return F.softmax((logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        batch = logits.detach().float().reshape(-1, self.center.shape[1]).mean(dim=0, keepdim=True)
        batch = all_reduce_mean(batch)
        self.center.mul_(self.momentum).add_(batch, alpha=1 - self.momentum)


class FeatureQueue(nn.Module):
    """FIFO queue of K normalised keys (MoCo). A buffer: saved in checkpoints."""

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        k = k.detach().to(self.keys.dtype)
        n, size = k.shape[0], self.keys.shape[0]
        if n >= size:
            self.keys.copy_(k[-size:])
            self.ptr.zero_()
            return
        p = int(self.ptr)
        idx = (torch.arange(n, device=k.device) + p) % size
        self.keys[idx] = k
        self.ptr.fill_((p + n) % size)


class MemoryBank(nn.Module):
    """A memory bank of one normalised feature per training instance (InstDisc, Wu et al., 2018).

    ``features`` (N, D) is a buffer, so checkpoints carry it. Entries are updated by dataset index
    with a momentum, v_i <- normalise(m * v_i + (1 - m) * f_i), and noise samples are drawn
    uniformly over the N instances. Under DDP, callers gather indices and features first
    (``harness.core.distributed.gather``) so every rank holds the same bank.
    """

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("features", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        # which entries hold a feature yet (the rest are the random initial vectors); the first
        # write to an entry replaces it instead of averaging with noise
        self.register_buffer("filled", torch.zeros(size, dtype=torch.bool))

    def __len__(self) -> int:
        return self.features.shape[0]

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        return self.features[indices]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, feats: torch.Tensor, momentum: float) -> None:
        """v_i <- normalise(m * v_i + (1 - m) * f_i) for each index i (indices unique); the first
        write to an entry sets v_i <- normalise(f_i)."""
        f = feats.detach().to(self.features.dtype)
        indices = indices.to(self.features.device)
        m = torch.where(self.filled[indices], momentum, 0.0).to(f.dtype)[:, None]
        new = F.normalize(m * self.features[indices] + (1 - m) * f, dim=1)
        self.features.index_copy_(0, indices, new)
        self.filled[indices] = True

    def sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices drawn uniformly over the bank (the noise distribution P_n = 1/N)."""
        dev = generator.device if generator is not None else self.features.device
        return torch.randint(0, len(self), tuple(shape) if not isinstance(shape, int) else (shape,),
                             generator=generator, device=dev).to(self.features.device)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equipartitioned soft codes from prototype scores (SwAV, Caron et al., 2020; Cuturi, 2013).

    For scores S = Z^T C (B samples x K prototypes) the codes solve
    max_Q Tr(Q^T S) + eps H(Q) over the transportation polytope (each prototype gets B/K of
    the mass): Q = diag(u) exp(S / eps) diag(v), with u, v found by ``iterations`` rounds of
    alternately normalising the prototype (row) and sample (column) sums of Q^T. The sums run
    over the batch of every process (``harness.core.distributed``), so B is the global batch.
    Returns (B, K) codes whose rows sum to 1.
    """
    world = world_size()

    def global_logsumexp_rows(x: torch.Tensor) -> torch.Tensor:   # over the samples of every process
        m = all_reduce_max(x.amax(dim=1, keepdim=True))
        return m + (all_reduce_mean((x - m).exp().sum(dim=1, keepdim=True)) * world).log()

    # in the log domain: exp(S / eps) underflows in float32 once eps < ~0.023 (scores span [-1, 1])
    log_q = scores.detach().float().t() / epsilon     # K x B: log of Q^T up to the scaling vectors
    k, b = log_q.shape[0], log_q.shape[1] * world
    for _ in range(iterations):
        log_q = log_q - global_logsumexp_rows(log_q) - math.log(k)            # each prototype: mass 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(b)   # each sample: mass 1/B
    return (log_q + math.log(b)).exp().t()
