"""The alignment/uniformity protocol (Wang & Isola 2020, "Understanding Contrastive
Representation Learning through Alignment and Uniformity on the Hypersphere").

* ``align(alpha) = E_{(x, x+)} ||f(x) - f(x+)||_2^alpha`` over positive pairs (alpha = 2): lower is
  better (positives map close together).
* ``uniform(t) = log E_{x, y} exp(-t ||f(x) - f(y)||_2^2)`` over distinct pairs (t = 2): lower is
  better (features spread over the sphere); its minimum for N points is reached by uniform spread.

:func:`align_uniform_eval` scores an encoder on images, making positive pairs with a fixed,
seeded evaluation augmentation; the functions themselves (:func:`align_loss`,
:func:`uniform_loss`) live in ``harness.core.hypersphere``, which the ``align_uniform`` method
trains with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evals.features import extract_features
from harness.core.hypersphere import align_loss, uniform_loss
from harness.data.store import take
from harness.data.views import ViewSpec, augment


def eval_view_spec(size: int) -> ViewSpec:
    """The fixed evaluation augmentation: crop scale (0.2, 1), flip, light colour jitter, no grey/blur."""
    return ViewSpec(size, scale=(0.2, 1.0), flip=0.5, jitter=(0.2, 0.2, 0.1, 0.02), jitter_p=0.5, gray_p=0.0)


def align_uniform_eval(encoder: nn.Module, x_uint8, mean, std, num_images: int = 4096,
                       features: torch.Tensor | None = None, seed: int = 0, batch_size: int = 512,
                       device: str | torch.device = "cpu", precision: str = "auto", progress: bool = True,
                       alpha: float = 2.0, t: float = 2.0) -> dict[str, float]:
    """``align`` over two seeded augmented views of ``num_images`` (seeded sample of) images and
    ``uniform`` over all distinct pairs of their un-augmented features (``features``: precomputed
    eval-transform features of ``x_uint8``, e.g. from the cache; extracted if None).
    """
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    sel = torch.randperm(len(x_uint8), generator=g)[:num_images].sort().values
    xs = take(x_uint8, sel)     # any image store: a streamed folder is read batch by batch
    spec = eval_view_spec(x_uint8.shape[-1])
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def view(xb: torch.Tensor) -> torch.Tensor:
        return (augment(xb.float() / 255.0, spec, gen)[0] - m) / s

    kw = dict(batch_size=batch_size, device=device, precision=precision, progress=progress)
    f1 = F.normalize(extract_features(encoder, xs, mean, std, transform=view, desc="align views 1", **kw), dim=1)
    f2 = F.normalize(extract_features(encoder, xs, mean, std, transform=view, desc="align views 2", **kw), dim=1)
    f0 = features[sel] if features is not None else extract_features(encoder, xs, mean, std, **kw)
    f0 = F.normalize(f0.float(), dim=1)
    return {"align": align_loss(f1, f2, alpha).item(), "uniform": uniform_loss(f0, t).item()}
