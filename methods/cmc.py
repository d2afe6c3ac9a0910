"""Contrastive Multiview Coding (Tian, Krishnan & Isola, 2019; ECCV 2020).

An image is split into views that act as modalities: by default its lightness L and its colour
ab in CIE Lab (``harness.rgb_to_lab``, batched on the training device). Each view has its own
encoder, f_i = normalise(W_i g_i(v_i)): g_i is the run's backbone taking that view's channels (1
for L, 2 for ab) and W_i a linear layer to 128 dimensions (the authors' ``fc`` + ``l2norm``). The
views of one image are positives, the views of other images negatives, and every pair of views
is contrasted in both directions (the paper's full graph, ``views=[L,a,b]`` for three views):

    L = sum_{i < j} [ L(V_i, V_j) + L(V_j, V_i) ]
    L(V_i, V_j) = -log( exp(f_i(x) . c_j(x) / tau) / sum_{k in {x} + negatives} exp(f_i(x) . c_j(k) / tau) )

``negatives=bank`` (the paper's): c_j(k) is view j's memory-bank entry of image k (one
``harness.MemoryBank`` per view, a buffer, so checkpoints carry it); K = 16384 negatives drawn
uniformly from the bank per step, tau = 0.07, and after each step v_j <- normalise(0.5 v_j + 0.5
f_j) at the batch's images (momentum 0.5). ``loss=nce`` (the authors' default, ``NCECriterion``)
is NCE against the uniform noise distribution with Z estimated once from the first batch, one Z
per direction (``methods.losses.nce_loss``); ``loss=softmax`` (their ``--softmax``,
``NCESoftmaxLoss``) is the (K + 1)-way cross-entropy (``methods.losses.info_nce`` with the drawn
entries as negatives). ``negatives=batch``: c_j(k) = f_j(k), the current features of the other
images of the (gathered) batch (``methods.losses.cmc_loss``).

As in InstDisc here (``methods.instdisc``): an image's first visit finds only the random initial
vector in a bank, so its positive is then the other view's current feature (no target to chase);
one draw of K indices per step is shared by the batch and by every bank (the authors also index
both banks with one draw; they draw per sample, O(B K d) memory). ``bank_init=features`` (not in
the paper) fills the banks with the initial network's features in one pass before step 1.

Each view's encoder is the run's backbone at its full width, a copy whose first convolution takes
that view's channels: the weights of its first C' input channels, scaled by sqrt(3 / C') to keep
the per-fan-in variance of the backbone's own initialisation; every other layer starts as the run's
backbone. The paper instead splits one network's width in halves (AlexNet, ResNet "v1"), so its
concatenated feature has one network's size; here ``backbone=cnn4`` gives two 256-d encoders and
a 512-d concatenation, at twice one network's cost per step (a seconds budget charges it).

``encoder()`` is what the evaluator scores: normalised RGB -> Lab (normalised with the authors'
ranges: L (L - 50) / 50, a (a - 6.025) / 92.208, b (b + 6.69) / 101.17) -> every view's encoder,
their features concatenated (``scored=concat``, the paper's linear evaluation); ``scored=L`` (or
another view) scores that view's encoder alone. Grayscale data has no ab: refused before training.

Paper defaults (the authors' code): SGD, LR 0.03 at batch 256, momentum 0.9, weight decay 1e-4;
augmentation: random resized crop (0.2-1) and flip, no colour jitter (colour is a view).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    ConfigError,
    MemoryBank,
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    all_reduce_mean,
    at_least,
    between,
    check_input_size,
    choices,
    gather,
    gather_with_grad,
    list_of_choices,
    mlp,
    positive,
    register_method,
    rgb_to_lab,
)
from methods.losses import cmc_loss, info_nce, nce_log_partition, nce_loss

# a view is a group of Lab channels (a slice, so a view of the tensor, not a copy)
VIEW_CHANNELS: dict[str, slice] = {"L": slice(0, 1), "ab": slice(1, 3), "a": slice(1, 2), "b": slice(2, 3)}
# the authors' Lab normalisation (train_CMC.py): the middle and half-range of each channel over sRGB
LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def _disjoint(views: list[str]) -> bool:
    used = [c for v in views if v in VIEW_CHANNELS for c in range(3)[VIEW_CHANNELS[v]]]
    return len(used) == len(set(used))


@dataclass
class CMCConfig:
    views: list[str] = list_of_choices(*VIEW_CHANNELS, default=["L", "ab"])
    temperature: float = positive(0.07)
    negatives: str = choices("bank", "batch", default="bank")   # memory bank (the paper's) or in-batch
    loss: str = choices("nce", "softmax", default="nce")        # negatives=bank: NCE (the authors' default) or softmax
    num_negatives: int = at_least(16384, 1)                      # K, drawn from each bank per step
    bank_momentum: float = between(0.5, 0, 1, open_hi=True)
    bank_init: str = choices("random", "features", default="random")   # "features": one pass fills the banks first
    feat_dim: int = at_least(128, 1)
    proj_hidden: int = at_least(0, 0)                            # 0: linear embedding (the paper's); > 0: 2-layer MLP
    scored: str = choices("concat", *VIEW_CHANNELS, default="concat")   # what encoder() gives the evaluator
    crop_min_scale: float = between(0.2, 0, 1, open_lo=True)

    checks = ((lambda c: len(c.views) >= 2, "at least 2 views"),
              (lambda c: _disjoint(c.views), "views with disjoint Lab channels (L, ab, a, b)"),
              (lambda c: c.scored == "concat" or c.scored in c.views, "scored = concat or one of the views"))


def lab_views(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (B, 3, H, W) -> Lab normalised with the authors' ranges (each channel in about [-1, 1])."""
    lab = rgb_to_lab(rgb)
    mean = torch.tensor(LAB_MEAN, device=lab.device, dtype=lab.dtype).view(1, 3, 1, 1)
    std = torch.tensor(LAB_STD, device=lab.device, dtype=lab.dtype).view(1, 3, 1, 1)
    return (lab - mean) / std


def with_input_channels(backbone: nn.Module, channels: int, image_size: int, copy_it: bool = True) -> nn.Module:
    """``backbone`` (a copy, unless ``copy_it=False``) whose first convolution takes ``channels`` inputs:
    its weights are those of the first ``channels`` input channels, scaled by sqrt(C / channels)
    (the same variance per fan-in as the backbone's own initialisation of C channels)."""
    net = copy.deepcopy(backbone) if copy_it else backbone
    found = next(((name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None or found[1].groups != 1:
        raise ConfigError(f"cmc gives each view its own encoder by changing the backbone's first convolution; "
                          f"{type(backbone).__name__} has none it can change: choose cnn4, a ResNet or a ViT")
    name, old = found
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    bias=old.bias is not None, padding_mode=old.padding_mode)
    with torch.no_grad():
        reps = math.ceil(channels / old.in_channels)
        w = old.weight.repeat(1, reps, 1, 1)[:, :channels]
        new.weight.copy_(w * math.sqrt(old.in_channels / channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], new)
    if hasattr(net, "patch_embed") and hasattr(net.patch_embed, "in_chans"):
        net.patch_embed.in_chans = channels
    check_input_size(net, channels, image_size, f"cmc: {channels}-channel views")
    return net


class MultiviewEncoder(nn.Module):
    """What the evaluator scores: normalised RGB -> Lab -> each scored view's encoder, features concatenated."""

    def __init__(self, encoders: list[nn.Module], views: list[str], info, heads: list[nn.Module] | None = None,
                 feat_dim: int = 0):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.heads = nn.ModuleList(heads) if heads is not None else None
        self.views = list(views)
        self.info = info
        self.num_features = feat_dim * len(encoders) if heads is not None else sum(e.num_features for e in encoders)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lab = lab_views(self.info.denormalize(x.float()).clamp(0, 1)).to(x.dtype)
        out = []
        for k, (enc, v) in enumerate(zip(self.encoders, self.views)):
            f = enc(lab[:, VIEW_CHANNELS[v]])
            out.append(F.normalize(self.heads[k](f).float(), dim=1) if self.heads is not None else f)
        return torch.cat(out, dim=1)


@register_method("cmc", family="multimodal", paper="Tian, Krishnan & Isola, 2019 (CMC)",
                 venue="ECCV 2020, arXiv:1906.05849")
class CMC(Method):
    Config = CMCConfig
    requires = Requirements(color=True)   # the views are channels of Lab: no ab in a grayscale image
    optim = OptimDefaults("sgd", base_lr=0.03, weight_decay=1e-4)

    def __init__(self, backbone, cfg: CMCConfig, info):
        super().__init__(backbone, cfg, info)
        if info.channels != 3:
            raise ConfigError(f"cmc needs colour images (its views are L and ab of Lab); dataset '{info.name}' has "
                              f"{info.channels} channel(s): choose a colour dataset such as cifar10")
        chans = [VIEW_CHANNELS[v].stop - VIEW_CHANNELS[v].start for v in cfg.views]
        others = [with_input_channels(backbone, c, info.image_size) for c in chans[1:]]
        # the first view's encoder is the run's backbone itself (what `backbone` names and export writes)
        self.backbone = with_input_channels(backbone, chans[0], info.image_size, copy_it=False)
        self.view_encoders = nn.ModuleList(others)
        d = backbone.num_features
        self.heads = nn.ModuleList(mlp(d, cfg.proj_hidden, cfg.feat_dim) if cfg.proj_hidden > 0 else nn.Linear(d, cfg.feat_dim)
                                   for _ in cfg.views)
        if cfg.negatives == "bank":
            if info.num_train < 2:
                raise ConfigError("cmc: the memory bank needs at least 2 training images")
            self.banks = nn.ModuleList(MemoryBank(info.num_train, cfg.feat_dim, seed=k) for k in range(len(cfg.views)))
            v = len(cfg.views)
            # NCE: log Z per direction (i, j), i != j, in the order of directions(); fixed after step 1
            self.register_buffer("log_z", torch.full((v * (v - 1),), float("nan")))
        self._pending: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def view_recipe(self, info):
        # one crop + flip per image; the views are its Lab channels (no colour jitter: colour is a view)
        return ViewRecipe.light(info.image_size, scale=(self.cfg.crop_min_scale, 1.0))

    def directions(self) -> list[tuple[int, int]]:
        """The ordered pairs (anchor view i, contrasted view j), i != j: every pair in both directions."""
        v = len(self.cfg.views)
        return [(i, j) for i in range(v) for j in range(v) if i != j]

    def encoders(self) -> list[nn.Module]:
        return [self.backbone, *self.view_encoders]

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised RGB views (B, 3, H, W) -> each view's normalised feature (B, feat_dim), float32."""
        lab = lab_views(self.info.denormalize(x.float()).clamp(0, 1)).to(x.dtype)
        return [F.normalize(head(enc(lab[:, VIEW_CHANNELS[v]])).float(), dim=1)
                for enc, head, v in zip(self.encoders(), self.heads, self.cfg.views)]

    # ------------------------------------------------------------- the banks
    def wants_prepare_pass(self) -> bool:
        return self.cfg.negatives == "bank" and self.cfg.bank_init == "features"

    def prepare_batch(self, batch):
        for bank, f in zip(self.banks, self.embed(batch.views.images[0])):
            bank.update(batch.indices, f, self.cfg.bank_momentum)

    # ------------------------------------------------------------- training
    def training_step(self, batch, step):
        z = self.embed(batch.views.images[0])
        t = self.cfg.temperature
        if self.cfg.negatives == "batch":
            zg = [gather_with_grad(f) for f in z]
            with torch.autocast(z[0].device.type, enabled=False):   # float32 logits (bf16 is coarse at 1/t ~ 14)
                loss = cmc_loss(zg, t)
            pos = torch.stack([(zg[i] * zg[j]).sum(1).mean() for i in range(len(z)) for j in range(i + 1, len(z))])
            return {"loss": loss, "pos_sim": pos.detach().mean()}
        idx = batch.indices.to(self.banks[0].features.device)
        n = len(self.banks[0])
        noise_idx = self.banks[0].sample(self.cfg.num_negatives, step.generator)
        # view j's memory of the batch's images (the positives) and of the drawn images (the negatives);
        # an entry never written yet holds a random vector: the positive is then view j's current feature
        pos = [torch.where((~bank.filled[idx])[:, None], f.detach(), bank.get(idx).to(f.dtype))
               for bank, f in zip(self.banks, z)]
        noise = [bank.get(noise_idx).float() for bank in self.banks]
        loss = z[0].new_zeros(())
        out = {}
        with torch.autocast(z[0].device.type, enabled=False):
            for d, (i, j) in enumerate(self.directions()):
                if self.cfg.loss == "softmax":
                    term = info_nce(z[i], pos[j], t, queue=noise[j])
                else:
                    pos_logits = (z[i] * pos[j]).sum(1) / t
                    noise_logits = z[i] @ noise[j].t() / t
                    if torch.isnan(self.log_z[d]):
                        self.log_z[d] = all_reduce_mean(nce_log_partition(noise_logits, n))
                    term = nce_loss(pos_logits, noise_logits, self.log_z[d], n)
                out[f"loss_{self.cfg.views[i]}_{self.cfg.views[j]}"] = term.detach()
                loss = loss + term
        out["pos_sim"] = torch.stack([(z[i] * pos[j]).sum(1).mean() for i, j in self.directions()]).detach().mean()
        self._pending = (idx, [f.detach() for f in z])
        out["loss"] = loss
        return out

    @torch.no_grad()
    def on_step_end(self, step):
        if self._pending is not None:
            idx, z = self._pending
            gidx = gather(idx)
            for bank, f in zip(self.banks, z):
                bank.update(gidx, gather(f), self.cfg.bank_momentum)
            self._pending = None

    # ------------------------------------------------------------- evaluation
    def _scored(self) -> tuple[list[nn.Module], list[str], list[nn.Module]]:
        keep = [k for k, v in enumerate(self.cfg.views) if self.cfg.scored in ("concat", v)]
        return ([self.encoders()[k] for k in keep], [self.cfg.views[k] for k in keep],
                [self.heads[k] for k in keep])

    def encoder(self) -> nn.Module:
        encs, views, _ = self._scored()
        return MultiviewEncoder(encs, views, self.info)

    def projector(self) -> nn.Module:
        encs, views, heads = self._scored()
        return MultiviewEncoder(encs, views, self.info, heads, self.cfg.feat_dim)
