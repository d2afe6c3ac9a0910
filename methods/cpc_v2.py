"""Contrastive Predictive Coding v2 (Henaff, Srinivas, De Fauw, Razavi, Doersch, Eslami & van den
Oord, 2020), "Data-Efficient Image Recognition with Contrastive Predictive Coding"; CPC: van den
Oord, Li & Vinyals, 2018.

An image is cut into a grid of overlapping patches (paper: 64 px patches with stride 32, a 7x7
grid on 256 px images); the encoder f embeds every patch on its own, z_ij = f(x_ij) (the
backbone runs on the batch of all patches, mean-pooled to a vector). A context network g_phi,
masked so that it only looks upwards (a PixelCNN-style stack of causal convolutions), summarises
the rows above and including row i,

    c_ij = g_phi({z_uv : u <= i})

(every column of those rows; the targets below are never seen), and linear maps W_k predict the
patch k rows below, z^_{i+k,j} = W_k c_ij, k = 1..K. Each prediction is scored against every
patch embedding z_l of the batch by a dot product, the true patch being the positive and all
other patches of the batch (other positions and other images) the negatives (InfoNCE):

    L = - mean_{k, i, j, n} log( exp(z^_{i+k,j,n} . z_{i+k,j,n}) / sum_l exp(z^_{i+k,j,n} . z_l) )

Details here: one direction (top to bottom; v2 also predicts bottom-up and sideways); the context
network is ``context_layers`` residual blocks of a 3x3 causal convolution (output row i sees
input rows i-2..i) without normalisation; negatives are gathered across processes with
gradient; ``num_negatives > 0`` replaces the all-patches softmax by the positive plus that many
patches sampled from the batch (shared by all predictions), for large batches. The whole image
gets one augmentation (crop, flip, colour jitter, grayscale), not v2's per-patch augmentation.
The backbone must be a convnet that accepts patch-size inputs (checked before training);
``encoder()`` is the backbone, which the evaluator applies to whole images. BatchNorm in the
backbone normalises over all patches of the batch (v2 replaces it by layer norm to stop patches
sharing statistics; our backbones keep theirs).

Paper defaults: 64 px patches, stride 32, K = 3 here (a knob), Adam. Small-image preset (32 px):
16 px patches with stride 8 (a 3x3 grid), K = 2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    ConfigError,
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    ViewSpec,
    at_least,
    gather_with_grad,
    is_convnet,
    rank,
    register_method,
)


@dataclass
class CPCv2Config:
    patch_size: int = at_least(64, 0)   # 0: half the image side (small images: a 3x3 grid)
    patch_stride: int = at_least(32, 0)  # 0: half the patch size
    pred_steps: int = at_least(3, 1)    # K: predict 1..K rows below
    context_dim: int = 0          # width of the context network; 0 = the encoder's width
    context_layers: int = 3       # residual causal-conv blocks
    num_negatives: int = 0        # 0: every other patch of the batch; > 0: that many sampled patches
    crop_min_scale: float = 0.3


def grid_size(image_size: int, patch: int, stride: int) -> int:
    return (image_size - patch) // stride + 1 if image_size >= patch else 0


def extract_patches(x: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, G, G, C, patch, patch): the overlapping grid, row-major."""
    return x.unfold(2, patch, stride).unfold(3, patch, stride).permute(0, 2, 3, 1, 4, 5)


class CausalConv2d(nn.Module):
    """k x k convolution whose output at row i depends only on input rows <= i (all columns)."""

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(cin, cout, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.k
        return self.conv(F.pad(x, (k // 2, k // 2, k - 1, 0)))


class ContextNetwork(nn.Module):
    """g_phi: a 1x1 input projection, then residual blocks ReLU -> causal 3x3 -> ReLU -> 1x1."""

    def __init__(self, dim: int, hidden: int, layers: int):
        super().__init__()
        self.inp = nn.Conv2d(dim, hidden, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), CausalConv2d(hidden, hidden), nn.ReLU(), nn.Conv2d(hidden, hidden, 1))
            for _ in range(layers)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.inp(z)
        for b in self.blocks:
            h = h + b(h)
        return h


def cpc_loss(z: torch.Tensor, c: torch.Tensor, predictors: nn.ModuleList, num_negatives: int = 0,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of the row-k predictions W_k c_ij against the batch's patch embeddings.

    ``z`` (B, D, G, G) patch embeddings, ``c`` (B, H, G, G) contexts; returns (loss averaged over
    k = 1..K and all predicted positions, top-1 accuracy of the k = 1 predictions). Candidates are
    all patches of the (gathered) batch, or the positive plus ``num_negatives`` sampled patches.
    """
    b, d, g, _ = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()          # index (n * G + i) * G + j
    cand = gather_with_grad(flat)
    offset = rank() * flat.shape[0]   # this process's slice of the gathered candidates
    ids = torch.arange(b * g * g, device=z.device).view(b, g, g)
    losses, acc = [], torch.zeros((), device=z.device)
    for k, w in enumerate(predictors, start=1):
        pred = w(c[:, :, : g - k, :]).permute(0, 2, 3, 1).reshape(-1, d).float()   # rows 0..G-k-1
        target = ids[:, k:, :].reshape(-1) + offset                                   # rows k..G-1
        if num_negatives > 0:
            neg_idx = torch.randint(0, cand.shape[0], (num_negatives,), generator=generator,
                                    device=generator.device if generator is not None else z.device).to(z.device)
            pos = (pred * cand[target]).sum(dim=1, keepdim=True)
            logits = torch.cat([pos, pred @ cand[neg_idx].t()], dim=1)
            labels = torch.zeros(len(pred), dtype=torch.long, device=z.device)
        else:
            logits = pred @ cand.t()
            labels = target
        losses.append(F.cross_entropy(logits, labels))
        if k == 1:
            acc = (logits.detach().argmax(dim=1) == labels).float().mean()
    return torch.stack(losses).mean(), acc


@register_method("cpc_v2", family="contrastive", paper="Henaff et al., 2020 (CPC v2)",
                 venue="ICML 2020, arXiv:1905.09272")
class CPCv2(Method):
    Config = CPCv2Config
    requires = Requirements(min_image_size=16, convnet=True)   # patches embedded one by one: a convnet
    optim = OptimDefaults("adamw", base_lr=0.001, weight_decay=1e-4)

    def __init__(self, backbone, cfg: CPCv2Config, info):
        if cfg.patch_size == 0:
            cfg = replace(cfg, patch_size=max(2, info.image_size // 2))
        if cfg.patch_stride == 0:
            cfg = replace(cfg, patch_stride=max(1, cfg.patch_size // 2))
        super().__init__(backbone, cfg, info)
        if not is_convnet(backbone):
            raise ConfigError(f"{self.name} embeds image patches on their own: it needs a convolutional backbone "
                              "(e.g. cnn4, resnet18_cifar), not a ViT with a fixed input size")
        g = grid_size(info.image_size, cfg.patch_size, cfg.patch_stride)
        if g < cfg.pred_steps + 1:
            need = cfg.patch_size + cfg.pred_steps * cfg.patch_stride
            raise ConfigError(
                f"{self.name}: {cfg.patch_size} px patches with stride {cfg.patch_stride} give a {g}x{g} grid on "
                f"{info.image_size} px images, too few rows to predict {cfg.pred_steps} rows ahead (needs images of at "
                f"least {need} px); for small images use method_cfg.patch_size=0 method_cfg.patch_stride=0 (half the image, "
                "half the patch) and method_cfg.pred_steps=2 (preset=small)")
        self._check_patch_input(backbone, info.channels, cfg.patch_size)
        d = backbone.num_features
        hidden = cfg.context_dim or d
        self.grid = g
        self.context = ContextNetwork(d, hidden, cfg.context_layers)
        self.predictors = nn.ModuleList(nn.Conv2d(hidden, d, 1) for _ in range(cfg.pred_steps))

    def _check_patch_input(self, backbone: nn.Module, channels: int, patch: int) -> None:
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                out = backbone(torch.zeros(2, channels, patch, patch))
            if out.ndim != 2:
                raise RuntimeError(f"expected pooled (B, D) features, got shape {tuple(out.shape)}")
        except Exception as e:
            raise ConfigError(f"{self.name}: the backbone does not accept {patch} px patches ({str(e).splitlines()[0][:120]}); "
                              "choose a larger method_cfg.patch_size or another backbone") from None
        finally:
            backbone.train(was_training)

    def view_recipe(self, info):
        spec = ViewSpec(info.image_size, scale=(self.cfg.crop_min_scale, 1.0), jitter=(0.4, 0.4, 0.4, 0.1))
        return ViewRecipe([spec])

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> z (B, D, G, G): the backbone on every patch of the grid."""
        p = extract_patches(x, self.cfg.patch_size, self.cfg.patch_stride)
        b, g1, g2 = p.shape[:3]
        z = self.backbone(p.reshape(b * g1 * g2, *p.shape[3:]).contiguous())
        return z.reshape(b, g1, g2, -1).permute(0, 3, 1, 2)

    def training_step(self, batch, step):
        z = self.embed_patches(batch.views.images[0])
        c = self.context(z)
        loss, acc = cpc_loss(z, c, self.predictors, self.cfg.num_negatives, step.generator)
        return {"loss": loss, "acc": acc}
