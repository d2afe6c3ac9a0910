"""Fine-tuning: the whole encoder plus a linear head, trained with labels under a fixed budget.

Protocol (MAE / BEiT style, scaled to small budgets): the encoder's weights are copied, a
linear head is added, and both are trained with softmax cross-entropy on crop + flip views
(random resized crop, scale (0.35, 1)) for a fixed number of steps, with a linear warm-up
and a cosine LR schedule:

* convnets: SGD (momentum 0.9, Nesterov), weight decay 5e-4;
* ViTs: AdamW (0.9, 0.999), weight decay 0.05, layer-wise LR decay 0.75 (block i of L
  gets lr * 0.75^(L - i); timm's ``param_groups_layer_decay``); ConvMAE's hybrid backbone:
  AdamW, weight decay 0.05, the ViT LR grid, no layer decay.

The learning rate is chosen from a small grid on a stratified, seeded hold-out of the TRAIN
split (the model never sees test labels during selection), then the model is refit on all
of TRAIN (or a stratified label fraction of it) and scored once on TEST.
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from evals.linear import label_fraction_subset, stratified_split
from harness.core.device import resolve_precision
from harness.core.schedules import warmup_cosine
from harness.data.store import iter_batches, take
from harness.data.views import ViewSpec, augment, normalize
from harness.models.backbones import is_convnet, is_vit
from harness.models.kernels import prepare_for_training

CONVNET_LRS = (0.01, 0.05)
VIT_LRS = (3e-4, 1e-3)
LAYER_DECAY = 0.75


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_classes)

    def forward(self, x):
        return self.head(self.encoder(x))


def _optimizer(model: _Classifier, lr: float):
    if is_vit(model.encoder):
        from timm.optim._param_groups import param_groups_layer_decay

        groups = param_groups_layer_decay(model.encoder, weight_decay=0.05, layer_decay=LAYER_DECAY,
                                          no_weight_decay_list=list(model.encoder.no_weight_decay()))
        for g in groups:
            g["base_lr"] = lr * g.get("lr_scale", 1.0)
        groups.append({"params": list(model.head.parameters()), "weight_decay": 0.05, "base_lr": lr})
        return torch.optim.AdamW(groups, lr=lr)
    if getattr(model.encoder, "is_hybrid_vit", False):       # ConvMAE's hybrid: AdamW, no layer decay
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05, "base_lr": lr},
                                  {"params": no_decay, "weight_decay": 0.0, "base_lr": lr}], lr=lr)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": 5e-4, "base_lr": lr},
                            {"params": no_decay, "weight_decay": 0.0, "base_lr": lr}], lr=lr, momentum=0.9, nesterov=True)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """SimCLR v2's distillation loss (Chen et al., 2020b, eq. 3):
    L = -1/N sum_i sum_y P_T(y | x_i; tau) log P_S(y | x_i; tau), P(y | x; tau) = softmax(logits / tau)."""
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(p_t * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1).mean()


def train_classifier(encoder: nn.Module, x, y: torch.Tensor | None, num_classes: int, mean, std, lr: float,
                     steps: int, batch_size: int, seed: int, device, precision: str, progress: bool = False,
                     desc: str = "finetune", teacher: nn.Module | None = None, temperature: float = 1.0,
                     on_pace: Callable[[float], None] | None = None) -> _Classifier:
    """Encoder + linear head trained on crop + flip views: by cross-entropy with the labels ``y``,
    or, with a ``teacher`` (y unused), by :func:`distillation_loss` against the teacher's
    predictions on the same view. ``x`` is any image store (a tensor, or a folder streamed from disk,
    whose workers decode each step's batch ahead of the step)."""
    torch.manual_seed(seed)
    model = _Classifier(copy.deepcopy(encoder), num_classes).to(device)
    bs = min(batch_size, len(x))
    # kernels as the trainer chooses them: measured on this machine at this batch and size (cached)
    channels_last = prepare_for_training(model, is_convnet(model.encoder), torch.device(device), precision,
                                         trial_model=model.encoder, channels=x.shape[1], sizes=(x.shape[-1],),
                                         batch=bs).channels_last
    opt = _optimizer(model, lr)
    spec = ViewSpec(x.shape[-1], scale=(0.35, 1.0), jitter_p=0.0, gray_p=0.0)
    per_epoch = max(1, len(x) // bs)
    model.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", mininterval=1.0, leave=False, file=sys.stderr)
    t_pace = None

    def step_indices():   # each step's batch: seeded epoch-wise permutations, a pure function of the step
        for step in range(steps):
            epoch, i = divmod(step, per_epoch)
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 7_919 + epoch))
            yield perm[i * bs : (i + 1) * bs]

    batches = iter_batches(x, step_indices())
    for step in range(steps):
        if on_pace is not None and step in (1, min(steps - 1, 4)) and steps > 2:   # the pace after a warm-up step
            if t_pace is None:
                t_pace = time.perf_counter()
            else:
                on_pace((time.perf_counter() - t_pace) / (step - 1))
                on_pace = None
        idx, xb = next(batches)
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
        xb = xb.to(device).float().div_(255)
        v, _, _ = augment(xb, spec, gen)
        v = (v - torch.tensor(mean, device=device).view(1, -1, 1, 1)) / torch.tensor(std, device=device).view(1, -1, 1, 1)
        if channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        f = warmup_cosine(step / steps, 0.05, 1.0, 0.0)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if teacher is None:
                loss = F.cross_entropy(model(v).float(), y[idx].to(device))
            else:
                with torch.no_grad():
                    t_logits = teacher(v)
                loss = distillation_loss(model(v), t_logits, temperature)
        if not torch.isfinite(loss):
            break  # a diverged grid point scores 0 on the hold-out, it is never selected
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
    batches.close()          # a streamed store's workers stop here (also after a diverged step's break)
    if bar is not None:
        bar.close()
    return model.eval()


@torch.inference_mode()
def predict(model: nn.Module, x, mean, std, device, precision: str, batch_size: int = 1024) -> torch.Tensor:
    outs = []
    for _, xb in iter_batches(x, (slice(i, i + batch_size) for i in range(0, len(x), batch_size))):
        xb = normalize(xb.to(device), mean, std)
        if is_convnet(model.encoder):
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            outs.append(model(xb).float().cpu())
    return torch.cat(outs)


def _topk(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return 100.0 * (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).float().mean().item()


def select_and_fit(encoder: nn.Module, x_train, y_train: torch.Tensor, num_classes: int, mean, std,
                   steps: int = 300, batch_size: int = 256, lrs: Sequence[float] | None = None,
                   holdout_fraction: float = 0.1, label_fraction: float = 1.0, seed: int = 0, device="cpu",
                   precision: str = "auto", progress: bool = False, prefix: str = "finetune"):
    """Fine-tune with the LR chosen on a stratified hold-out of the (label-fraction subset of the)
    TRAIN split, then refit on all of it. TRAIN only, by construction.
    Returns (model, chosen lr, hold-out top-1 per lr, the labelled subset's indices)."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    lrs = tuple(lrs or (VIT_LRS if is_vit(encoder) or getattr(encoder, "is_hybrid_vit", False) else CONVNET_LRS))
    y_train = torch.as_tensor(y_train).long()
    sub = label_fraction_subset(y_train, label_fraction, seed)
    xs, ys = take(x_train, sub), y_train[sub]     # a streamed store stays on disk
    fit, held = stratified_split(ys, holdout_fraction, seed)
    scores = {}

    def announce(sec_per_step: float) -> None:
        fits = len(lrs) + 1
        from tqdm.auto import tqdm

        # tqdm.write: its own line above a progress bar that is being drawn (print would append to the bar's line)
        tqdm.write(f"sslbench: {prefix}: {fits} fits (LRs {', '.join(f'{lr:g}' for lr in lrs)} on a TRAIN hold-out, "
                   f"then the refit) x {steps} steps of {min(batch_size, len(xs))}: ~{fits * steps * sec_per_step / 60:.1f} "
                   f"min expected here (eval.finetune=full: 300 x 256 per fit)", file=sys.stderr)

    for i, lr in enumerate(lrs):
        m = train_classifier(encoder, take(xs, fit), ys[fit], num_classes, mean, std, lr, steps, batch_size, seed, device,
                             precision, progress, desc=f"{prefix} select lr={lr:g}", on_pace=announce if i == 0 else None)
        logits = predict(m, take(xs, held), mean, std, device, precision)
        scores[lr] = _topk(logits, ys[held], 1) if torch.isfinite(logits).all() else 0.0
    best = max(lrs, key=lambda lr: (scores[lr], -lr))
    model = train_classifier(encoder, xs, ys, num_classes, mean, std, best, steps, batch_size, seed, device, precision,
                             progress, desc=f"{prefix} refit lr={best:g}")
    return model, best, scores, sub


def finetune_eval(encoder: nn.Module, x_train, y_train: torch.Tensor, x_test,
                  y_test: torch.Tensor, num_classes: int, mean, std, steps: int = 300, batch_size: int = 256,
                  lrs: Sequence[float] | None = None, holdout_fraction: float = 0.1, label_fraction: float = 1.0,
                  seed: int = 0, device="cpu", precision: str = "auto", progress: bool = False,
                  prefix: str = "finetune") -> dict[str, float]:
    """Select the LR on a TRAIN hold-out, refit on TRAIN, report TEST top-1/top-5 (percent)."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    model, best, scores, sub = select_and_fit(encoder, x_train, y_train, num_classes, mean, std, steps, batch_size, lrs,
                                              holdout_fraction, label_fraction, seed, device, precision, progress, prefix)
    n_sub = len(sub)
    logits = predict(model, x_test, mean, std, device, precision)
    y_test = torch.as_tensor(y_test).long()
    return {f"{prefix}/top1": _topk(logits, y_test, 1), f"{prefix}/top5": _topk(logits, y_test, 5),
            f"{prefix}/lr": float(best), f"{prefix}/holdout_top1": float(scores[best]),
            f"{prefix}/steps": float(steps), f"{prefix}/epochs": float(steps * min(batch_size, n_sub) / max(1, n_sub))}

