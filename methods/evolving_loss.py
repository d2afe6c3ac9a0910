"""Evolving Losses for Unsupervised Video Representation Learning (Piergiovanni, Angelova & Ryoo, CVPR 2020).

Unsupervised representation learning as a multi-modal, multi-task problem. Each modality of a clip
has its own network, trained by several self-supervised tasks; the main network, the one that is
kept, sees RGB and distils the other modalities' networks; the loss is a weighted sum of every task
and distillation term, and the weights are found by an evolutionary search scored without labels:

    L = sum_m sum_t lambda_{m,t} L_{m,t}  +  sum_d lambda_d L_d,      every lambda in [0, 1].

Modalities (``modalities``): ``rgb`` (the clip as the views give it), ``flow`` (OpenCV's Farnebäck
optical flow between consecutive frames, computed once per training clip and cached,
``harness.data.video.clip_modalities``, seen through the same crop and flip as the RGB view and
divided by its RMS) and ``gray`` (the frames' luma). Audio, the paper's fourth, has no source here.
Every network is the run's video backbone (``video_cnn``: per-frame convolutions + a temporal
convolution) at the same widths, built afresh for its input (2 channels x (T-1) flow fields, 1 x T
gray frames).

Tasks, for each modality m (weights ``w_<m>_<task>``), from the paper's task families:

* ``recon`` (reconstruction): a linear decoder regresses the clip's mean frame of that modality,
  average-pooled to ``recon_size`` x ``recon_size``, from the network's clip feature (MSE).
* ``order`` (temporal ordering): for a random ``shuffle_p`` of the clips the frames are put in a
  random non-identity order (one draw per clip, every modality shuffled); a linear head says
  whether the clip is in order (binary cross-entropy). A mean over time could not tell, so the
  backbone's temporal convolution must.
* ``contrast``: for RGB, contrast across clips: two augmented views of a clip are positives, the
  other clips negatives (NT-Xent, ``methods.losses.nt_xent``); for flow and gray, the paper's
  multi-modal contrastive task: that modality's embedding and the RGB embedding of the same clip
  are positives, other clips' negatives (InfoNCE both ways, ``methods.losses.info_nce``). Each
  network has its own 2-layer MLP projector.

Distillation (weights ``w_distill_<m>``): the RGB network's clip feature regresses the feature of
the m network at the same layer (``methods.losses.distillation_l2``; the target gets no gradient:
the paper's "infuse each modality's information into the RGB network"). One distillation location
(the pooled clip feature) per modality; the paper distils at several layers of larger networks.
Contrast and distillation pair the modalities of one clip, so they use the clips left in order;
reconstruction and ordering use them all. A modality whose every weight is 0 is not run.

The weights are method config (defaults 1: every task and term counted once, the un-evolved loss);
``sslbench evolve`` searches them (``search_space``) with Optuna's CMA-ES sampler, each candidate a
short training scored by the paper's Zipf-matching fitness (``evals.zipf``), then trains with the
best (``harness.run.evolve``). ``encoder()`` is the RGB network alone: the only network kept.

Not from the paper: its optimiser and head sizes could not be checked while writing this (SGD,
LR 0.1 at batch 256 and a 512-wide projector to 128-d are conventional defaults); the networks are
small (2+1)D convnets rather than the paper's (2+1)D ResNet-50s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    ConfigError,
    Method,
    OptimDefaults,
    Requirements,
    ViewRecipe,
    at_least,
    between,
    crop_flow,
    gray_frames,
    is_video,
    list_of_choices,
    mlp,
    permute_frames,
    positive,
    register_method,
)
from methods.losses import distillation_l2, info_nce, nt_xent

MODALITIES = ("rgb", "flow", "gray")
TASKS = ("recon", "order", "contrast")
LUMA = (0.299, 0.587, 0.114)


def _weight(default: float = 1.0):
    return between(default, 0.0, 1.0)


@dataclass
class EvolvingLossConfig:
    modalities: list[str] = list_of_choices(*MODALITIES, default=list(MODALITIES))
    # lambda_{m,t}: one weight per (modality, task), and lambda_d per distilled modality (the paper's [0, 1])
    w_rgb_recon: float = _weight()
    w_rgb_order: float = _weight()
    w_rgb_contrast: float = _weight()
    w_flow_recon: float = _weight()
    w_flow_order: float = _weight()
    w_flow_contrast: float = _weight()
    w_gray_recon: float = _weight()
    w_gray_order: float = _weight()
    w_gray_contrast: float = _weight()
    w_distill_flow: float = _weight()
    w_distill_gray: float = _weight()
    temperature: float = positive(0.1)        # NT-Xent / InfoNCE temperature
    proj_hidden: int = at_least(512, 1)
    embed_dim: int = at_least(128, 1)
    recon_size: int = at_least(8, 1)          # the reconstructed mean frame's side
    shuffle_p: float = between(0.5, 0.0, 1.0, open_hi=True)   # clips whose frames are shuffled (the order task)
    crop_min_scale: float = between(0.3, 0.0, 1.0, open_lo=True)

    checks = ((lambda c: "rgb" in c.modalities, "modalities including rgb (the main network)"),
              (lambda c: len(set(c.modalities)) == len(c.modalities), "each modality once"))


def task_weight(cfg: EvolvingLossConfig, modality: str, task: str) -> float:
    return float(getattr(cfg, f"w_{modality}_{task}"))


@register_method("evolving_loss", family="applications", paper="Piergiovanni, Angelova & Ryoo, 2020 (Evolving Losses)",
                 venue="CVPR 2020, arXiv:2002.12177")
class EvolvingLoss(Method):
    Config = EvolvingLossConfig
    requires = Requirements(clips=True, backbone="video_cnn")
    optim = OptimDefaults("sgd", base_lr=0.1, weight_decay=1e-4)
    unused_parameters = True      # a task or term weighted 0 leaves its head without gradients

    @classmethod
    def search_space(cls, cfg: EvolvingLossConfig) -> dict[str, tuple[float, float]]:
        """Every weight of the modalities in use: lambda_{m,t} and lambda_d, each in [0, 1]."""
        space = {f"w_{m}_{t}": (0.0, 1.0) for m in cfg.modalities for t in TASKS}
        space.update({f"w_distill_{m}": (0.0, 1.0) for m in cfg.modalities if m != "rgb"})
        return space

    def __init__(self, backbone, cfg: EvolvingLossConfig, info):
        super().__init__(backbone, cfg, info)
        if not is_video(backbone):
            raise ConfigError(f"evolving_loss gives each modality a video network; the backbone "
                              f"{type(backbone).__name__} is not one: use backbone=video_cnn or video_cnn_small")
        t, c = info.frames, info.channels // info.frames
        self.channels = {"rgb": c, "flow": 2, "gray": 1}
        self.nets = nn.ModuleDict({m: backbone.reshaped(self.channels[m], t - 1 if m == "flow" else t)
                                   for m in cfg.modalities if m != "rgb"})
        d, r = backbone.num_features, cfg.recon_size
        self.proj = nn.ModuleDict({m: mlp(d, cfg.proj_hidden, cfg.embed_dim) for m in cfg.modalities})
        self.order_head = nn.ModuleDict({m: nn.Linear(d, 1) for m in cfg.modalities})
        self.recon_head = nn.ModuleDict({m: nn.Linear(d, self.channels[m] * r * r) for m in cfg.modalities})
        # the gray frames' normalisation, from the RGB statistics (luma of the per-channel means and stds)
        mean = torch.tensor(info.mean or (0.5,) * info.channels).view(t, c)
        std = torch.tensor(info.std or (0.25,) * info.channels).view(t, c)
        luma = torch.tensor(LUMA if c == 3 else (1.0,))
        self.gray_stats = (float((mean * luma).sum(1).mean()), float((std * luma).sum(1).mean()))
        self.clips = None

    def attach_clips(self, clips) -> None:
        self.clips = clips

    def view_recipe(self, info):
        # two views per clip (the RGB contrast's pair), one crop, flip and colour draw per clip
        return ViewRecipe.simclr(info.image_size, n=2, blur=False, min_scale=self.cfg.crop_min_scale)

    def network(self, m: str) -> nn.Module:
        return self.backbone if m == "rgb" else self.nets[m]

    # ------------------------------------------------------------- the modalities of a batch
    def inputs(self, batch) -> dict[str, torch.Tensor]:
        """Each active modality of the batch's first view, normalised: (B, T_m * C_m, s, s)."""
        v = batch.views.images[0]
        t = self.info.frames
        out = {"rgb": v}
        active = self.active()
        if "gray" in active:
            g = gray_frames(self.info.denormalize(v.float()).clamp(0, 1), t)
            out["gray"] = ((g - self.gray_stats[0]) / self.gray_stats[1]).to(v.dtype)
        if "flow" in active:
            if self.clips is None:
                raise ConfigError("evolving_loss: no optical flow attached (the trainer attaches the clips' flow)")
            flow = self.clips.flow_of(batch.indices).to(v.device)
            flow = crop_flow(flow, batch.views.boxes[0].to(v.device), batch.views.flipped[0].to(v.device), v.shape[-1])
            out["flow"] = (flow / self.clips.flow_rms).flatten(1, 2).to(v.dtype)
        return out

    def active(self) -> list[str]:
        """The modalities whose network some nonzero weight uses (RGB always: it is the kept network); a
        modality whose every task and distillation weight is 0 is not run at all."""
        return [m for m in self.cfg.modalities if m == "rgb" or any(task_weight(self.cfg, m, t) > 0 for t in TASKS)
                or getattr(self.cfg, f"w_distill_{m}") > 0]

    def frames_of(self, m: str) -> int:
        return self.info.frames - 1 if m == "flow" else self.info.frames

    # ------------------------------------------------------------- training
    def training_step(self, batch, step):
        cfg = self.cfg
        x = self.inputs(batch)
        b = x["rgb"].shape[0]
        dev = x["rgb"].device
        any_order = any(task_weight(cfg, m, "order") > 0 for m in cfg.modalities)
        shuffled = torch.rand(b, generator=step.generator, device=dev) < cfg.shuffle_p if any_order else \
            torch.zeros(b, dtype=torch.bool, device=dev)
        keep = ~shuffled                     # the clips in order: the pairs of contrast and distillation
        feats, terms = {}, {}
        r = cfg.recon_size
        for m in self.active():
            xm = x[m]
            fm = self.frames_of(m)
            inp = permute_frames(xm, fm, shuffled, step.generator) if any_order else xm
            f = self.network(m)(inp)
            feats[m] = f
            if task_weight(cfg, m, "recon") > 0:
                bsz, tc, s, _ = xm.shape
                target = xm.float().reshape(bsz, fm, tc // fm, s, s).mean(1)
                target = F.adaptive_avg_pool2d(target, r).flatten(1)
                terms[f"{m}_recon"] = F.mse_loss(self.recon_head[m](f).float(), target)
            if task_weight(cfg, m, "order") > 0:
                logits = self.order_head[m](f).float().squeeze(1)
                terms[f"{m}_order"] = F.binary_cross_entropy_with_logits(logits, shuffled.float())
        n_keep = int(keep.sum())
        if n_keep >= 2:
            contrast = any(task_weight(cfg, m, "contrast") > 0 for m in self.active())
            z_rgb = self.proj["rgb"](feats["rgb"][keep]) if contrast else None
            if cfg.w_rgb_contrast > 0:
                z2 = self.proj["rgb"](self.backbone(batch.views.images[1][keep]))
                terms["rgb_contrast"] = nt_xent(z_rgb, z2, cfg.temperature)
            for m in self.active():
                if m == "rgb":
                    continue
                if task_weight(cfg, m, "contrast") > 0:
                    zm = self.proj[m](feats[m][keep])
                    terms[f"{m}_contrast"] = (info_nce(zm, z_rgb, cfg.temperature) +
                                              info_nce(z_rgb, zm, cfg.temperature)) / 2
                if getattr(cfg, f"w_distill_{m}") > 0:
                    terms[f"distill_{m}"] = distillation_l2(feats["rgb"][keep], feats[m][keep])
        loss = feats["rgb"].new_zeros((), dtype=torch.float32)
        for name, value in terms.items():
            w = getattr(cfg, f"w_{name}")
            loss = loss + w * value
        out = {f"loss_{k}": v.detach() for k, v in terms.items()}
        out["loss"] = loss
        return out
