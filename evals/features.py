"""Feature extraction (batched, ``inference_mode``, bf16 autocast) and an on-disk feature cache.

Features are extracted once per (weights, dataset, split, transform, feature kind, precision)
and stored as float32 ``.npy`` files, so kNN, the linear probe and alignment/uniformity all
read the same arrays and a re-evaluation of an unchanged checkpoint costs no forward pass.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from harness.core.device import resolve_precision
from harness.core.errors import ConfigError
from harness.data.dataset import ImageDataset
from harness.data.store import iter_batches
from harness.data.views import normalize
from harness.models.backbones import is_convnet, is_vit

PROGRESS_MIN_BATCHES = 8  # a bar only when extraction is long enough to be worth watching


def extract_features(encoder: nn.Module, x_uint8, mean, std, batch_size: int = 512,
                     device: str | torch.device = "cpu", precision: str = "auto", progress: bool = True,
                     transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     desc: str = "features") -> torch.Tensor:
    """Encode uint8 images (N, C, H, W) into float32 features (N, D) on the CPU.

    ``x_uint8`` is any image store (:mod:`harness.data.store`): a tensor, or a folder streamed from
    disk, read batch by batch (decoded by its worker processes), never all at once. Each batch
    is moved to ``device``, normalised with ``harness.data.views.normalize`` (or mapped by
    ``transform(batch_uint8_on_device) -> float images`` when given, e.g. a seeded augmentation),
    and encoded under ``torch.inference_mode()`` with the encoder in eval mode (restored after).
    ``precision="auto"`` uses bf16 autocast where the device supports it; convnets run
    channels_last. A tqdm bar goes to stderr for long extractions unless ``progress=False``.
    """
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    was_training = encoder.training
    encoder.eval()
    fmt = torch.channels_last if is_convnet(encoder) else torch.contiguous_format
    n = len(x_uint8)
    starts = range(0, n, batch_size)
    stream = iter_batches(x_uint8, (slice(i, i + batch_size) for i in starts), pin_memory=device.type == "cuda")
    batches = stream
    if progress and len(starts) >= PROGRESS_MIN_BATCHES:
        from tqdm import tqdm

        batches = tqdm(stream, total=len(starts), desc=desc, unit="batch", file=sys.stderr, leave=False,
                       mininterval=1.0)
    out: list[torch.Tensor] = []
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
            for _, xb in batches:
                xb = xb.to(device, non_blocking=True)
                xb = transform(xb) if transform is not None else normalize(xb, mean, std)
                f = encoder(xb.contiguous(memory_format=fmt))
                out.append(f.float().flatten(1).cpu())
    finally:
        stream.close()
        encoder.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


class TokenFeatures(nn.Module):
    """A ViT's features read from its tokens instead of its own pooling: ``cls``, the [CLS] token, or
    ``mean_patch``, the mean of the patch tokens (the prefix tokens left out), each after the ViT's
    final norm as timm applies it (``norm`` on the tokens, or ``fc_norm`` after the pooling). For our
    ViTs (built with average pooling) ``mean_patch`` equals the backbone's own output; ``cls`` is the
    frozen-[CLS] protocol known to underrate masked image modelling at short schedules."""

    def __init__(self, vit: nn.Module, kind: str):
        super().__init__()
        if not is_vit(vit):
            raise ConfigError(f"eval.features={kind} reads a ViT's tokens; this encoder is a {type(vit).__name__}: "
                              f"use eval.features=backbone")
        if kind == "cls" and vit.cls_token is None:
            raise ConfigError("eval.features=cls: this ViT has no [CLS] token; use eval.features=mean_patch")
        self.vit, self.kind = vit, kind
        self.num_features = vit.num_features
        fc_norm = getattr(vit, "fc_norm", None)
        self.post = fc_norm if isinstance(vit.norm, nn.Identity) and fc_norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.vit.forward_features(x)
        t = t[:, 0] if self.kind == "cls" else t[:, self.vit.num_prefix_tokens:].mean(1)
        return self.post(t)


def scored_encoder(encoder: nn.Module, projector: nn.Module | None, kind: str) -> nn.Module:
    """The module whose outputs ``eval.features=kind`` scores: the encoder (``backbone``), the method's
    backbone + projector (``projector``), or a ViT's [CLS] / mean patch token (``cls``, ``mean_patch``).
    A kind the method or backbone cannot give is refused with one line (before training, by the caller)."""
    if kind == "backbone":
        return encoder
    if kind == "projector":
        if projector is None:
            raise ConfigError("eval.features=projector: this method has no projector to score; use eval.features=backbone")
        return projector
    return TokenFeatures(encoder, kind)


def weights_hash(module: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes): the cache's checkpoint key."""
    h = hashlib.sha256()
    for name, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(v.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FeatureCache:
    """Float32 ``.npy`` features under ``root/<weights>/<dataset>/<split>-<transform>-<kind>-<precision>.npy``.

    Writes are atomic (a temporary file in the same folder, then ``os.replace``), so a crash or
    two concurrent evaluations never leave a half-written array behind.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def path(self, weights: str, dataset: str, split: str, transform: str, kind: str, precision: str) -> Path:
        return self.root / weights[:24] / dataset / f"{split}-{transform}-{kind}-{precision}.npy"

    def load(self, path: Path) -> np.ndarray | None:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent or corrupt: recompute

    def save(self, path: Path, arr: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def cached_features(encoder: nn.Module, dataset: ImageDataset, split: str, cache: FeatureCache | None = None,
                    transform: str = "eval", kind: str = "backbone", batch_size: int = 512,
                    device: str | torch.device = "cpu", precision: str = "auto", progress: bool = True) -> torch.Tensor:
    """Features of ``dataset``'s ``split`` (eval transform: normalisation only), from ``cache`` when present.

    The key is (sha256 of the encoder's weights, ``dataset.fingerprint()``, split, transform,
    feature kind, resolved precision); changing any of them recomputes.
    """
    if transform != "eval":
        raise ValueError(f"cached_features supports transform='eval' only, got '{transform}'")
    x, _ = dataset.split(split)
    prec = resolve_precision(precision, torch.device(device))
    path = None
    if cache is not None:
        path = cache.path(weights_hash(encoder), dataset.fingerprint(), split, transform, kind, prec)
        arr = cache.load(path)
        if arr is not None and arr.shape[0] == len(x):
            return torch.from_numpy(arr)
    feats = extract_features(encoder, x, dataset.mean, dataset.std, batch_size, device, prec, progress,
                             desc=f"{split} features")
    if path is not None:
        cache.save(path, feats.numpy())
    return feats
