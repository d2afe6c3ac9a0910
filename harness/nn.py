"""Shared building blocks for methods: heads, EMA teachers, queues, schedules.

Each exists once; methods compose them.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- schedules


def cosine(progress: float, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1)."""
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))


def warmup_cosine(progress: float, warmup: float, base: float, final: float = 0.0) -> float:
    """Linear warm-up over the first ``warmup`` fraction of progress, then cosine to ``final``."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return base * p / warmup
    q = (p - warmup) / (1 - warmup) if warmup < 1 else 1.0
    return cosine(q, base, final)


# ----------------------------------------------------------------------------- heads


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, bn: bool = True, last_bn: bool = False) -> nn.Sequential:
    """Projection/prediction MLP: (Linear-BN-ReLU) x (layers-1), then Linear (optionally BN).

    SimCLR: layers=2, last_bn=False (v1); SimCLR v2: layers=3; BYOL/SimSiam predictor:
    layers=2; MoCo v2: layers=2, bn=False; Barlow Twins / SimSiam projector: last_bn=True.
    """
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=not bn)]
        if bn:
            mods.append(nn.BatchNorm1d(hidden))
        mods.append(nn.ReLU(inplace=True))
        d = hidden
    mods.append(nn.Linear(d, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


# ----------------------------------------------------------------------------- EMA teacher


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


def momentum_schedule(progress: float, base: float, final: float = 1.0) -> float:
    """BYOL: tau = 1 - (1 - tau_base) * (cos(pi * p) + 1) / 2, i.e. cosine from base to 1."""
    return cosine(progress, base, final)


# ----------------------------------------------------------------------------- queue


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


# ----------------------------------------------------------------------------- freezing


def frozen(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a zero gradient (not ``None``): freezes a parameter for one step.

    Used for "freeze the last layer / the prototypes during the first epoch" (DINO, SwAV).
    The parameter stays in the autograd graph, so DDP (``find_unused_parameters=False``)
    still sees a gradient for it; SGD/AdamW then apply weight decay only, to which the
    weight-normalised DINO layer and the re-normalised SwAV prototypes are invariant.
    """
    return t.detach() + 0.0 * t


# ----------------------------------------------------------------------------- DINO head and centring


class WeightNormLinear(nn.Module):
    """Linear map without bias whose rows are weight-normalised (Salimans & Kingma, 2016):

        w_k = g_k * v_k / ||v_k||,   y = x W^T

    DINO's last layer (``norm_last_layer=True``: g fixed at 1, so only directions are learnt).
    Setting ``frozen_step = True`` makes the next forward pass give v and g a zero gradient.
    """

    def __init__(self, in_dim: int, out_dim: int, learn_scale: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))   # nn.Linear's default, as DINO's last layer
        self.scale = nn.Parameter(torch.ones(out_dim), requires_grad=learn_scale)
        self.frozen_step = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, g = self.weight, self.scale
        if self.frozen_step:
            v = frozen(v)
            g = frozen(g) if g.requires_grad else g
        return F.linear(x, F.normalize(v, dim=1) * g[:, None])


class DINOHead(nn.Module):
    """DINO projection head (Caron et al., 2021): an MLP (``layers`` linear layers, hidden
    width ``hidden``, GELU, optional BN) to a ``bottleneck``-d vector, L2-normalised, then a
    weight-normalised linear layer to K = ``out_dim`` logits (paper: 2048 / 256 / 65536):

        g(x) = W_norm . (h(x) / ||h(x)||)

    Shared by DINO and iBOT. ``forward`` returns the K logits; ``bottleneck_features`` the
    normalised bottleneck (what ``projector()`` evaluations use).
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden: int = 2048, bottleneck: int = 256,
                 layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if layers < 1:
            raise ValueError(f"DINOHead needs layers >= 1, got {layers}")
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers - 1):
            mods.append(nn.Linear(d, hidden))
            if use_bn:
                mods.append(nn.BatchNorm1d(hidden))
            mods.append(nn.GELU())
            d = hidden
        mods.append(nn.Linear(d, bottleneck))
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck, out_dim, learn_scale=not norm_last_layer)

    def bottleneck_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck_features(x))


class Centering(nn.Module):
    """DINO's centring and sharpening of the teacher output (Caron et al., 2021):

        P_t(x) = softmax((g_t(x) - c) / tau_t),   c <- m c + (1 - m) mean_batch g_t(x)

    ``c`` is a buffer (checkpointed); the batch mean is over every leading dimension (images,
    or images x patches for iBOT) and over all processes (``harness.distributed``). Centring
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
        from harness.distributed import all_reduce_mean

        batch = logits.detach().float().reshape(-1, self.center.shape[1]).mean(dim=0, keepdim=True)
        batch = all_reduce_mean(batch)
        self.center.mul_(self.momentum).add_(batch, alpha=1 - self.momentum)


# ----------------------------------------------------------------------------- Sinkhorn-Knopp


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equipartitioned soft codes from prototype scores (SwAV, Caron et al., 2020; Cuturi, 2013).

    For scores S = Z^T C (B samples x K prototypes) the codes solve
    max_Q Tr(Q^T S) + eps H(Q) over the transportation polytope (each prototype gets B/K of
    the mass): Q = diag(u) exp(S / eps) diag(v), with u, v found by ``iterations`` rounds of
    alternately normalising the prototype (row) and sample (column) sums of Q^T. The sums run
    over the batch of every process (``harness.distributed``), so B is the global batch.
    Returns (B, K) codes whose rows sum to 1.
    """
    from harness.distributed import all_reduce_max, all_reduce_mean, world_size

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


# ----------------------------------------------------------------------------- memory bank


class MemoryBank(nn.Module):
    """A memory bank of one normalised feature per training instance (InstDisc, Wu et al., 2018).

    ``features`` (N, D) is a buffer, so checkpoints carry it. Entries are updated by dataset index
    with a momentum, v_i <- normalise(m * v_i + (1 - m) * f_i), and noise samples are drawn
    uniformly over the N instances. Under DDP, callers gather indices and features first
    (``harness.distributed.gather``) so every rank holds the same bank.
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


# ----------------------------------------------------------------------------- multi-crop


def local_crop_size(image_size: int, requested: int = 0, multiple: int = 1) -> int:
    """Side of multi-crop's local crops: ``requested`` if > 0, else the papers' 96/224 of the
    image side (SwAV, DINO), rounded to a multiple of ``multiple`` (a ViT's patch size), at
    least 8 px."""
    if requested > 0:
        return requested
    m = max(1, multiple)
    return max(8, m, int(round(image_size * 96 / 224 / m)) * m)


def setup_multi_crop(method: str, backbone: nn.Module, image_size: int, n_local: int, local_size: int = 0) -> int:
    """Multi-crop set-up shared by SwAV, DINO and their kin: the local crops' side
    (:func:`local_crop_size`, a multiple of a ViT's patch), checked against the image, and the
    backbone made to accept both sides (:func:`enable_multi_crop`). Returns the local side."""
    from harness.errors import ConfigError

    patch = backbone.patch_embed.patch_size[0] if hasattr(backbone, "patch_embed") else 1
    side = local_crop_size(image_size, local_size, patch)
    if n_local and side > image_size:
        raise ConfigError(f"{method}: local crops of {side} px exceed the {image_size} px images; "
                          "lower method_cfg.local_size")
    enable_multi_crop(backbone, [image_size] + ([side] if n_local else []))
    return side


def enable_multi_crop(backbone: nn.Module, sizes: list[int]) -> None:
    """Make ``backbone`` accept every input side in ``sizes`` (multi-crop).

    Convnets with global pooling already do. A timm VisionTransformer is switched to dynamic
    image size: its position embeddings are resampled to each input's patch grid, as DINO's
    ``interpolate_pos_encoding`` (at the native size they are unchanged, so evaluation is
    unaffected). Sides must be multiples of the patch size; a clear error says otherwise.
    """
    from harness.backbones import is_vit
    from harness.errors import ConfigError

    if not is_vit(backbone):
        return
    pe = backbone.patch_embed
    patch = pe.patch_size[0]
    bad = sorted({s for s in sizes if s % patch})
    if bad:
        raise ConfigError(f"multi-crop on a ViT with {patch}x{patch} patches needs crop sizes divisible by {patch}, "
                          f"got {bad}; set method_cfg.local_size to a multiple of {patch}")
    if getattr(backbone, "dynamic_img_size", False):
        return
    from timm.layers import Format

    backbone.dynamic_img_size = True
    pe.strict_img_size = False
    pe.flatten = False
    pe.output_fmt = Format("NHWC")
