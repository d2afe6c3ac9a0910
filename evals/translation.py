"""Judging an image-to-image translation (CUT) without FID: a domain classifier and edge structure.

For a dataset with two image domains (``harness.data.domains``: A the source, B the target) and a
method's generator (``Method.translator()``: normalised A images -> normalised translated images):

1. **Domain classifier.** A small convnet (:class:`DomainClassifier`: three 3x3 conv-BN-ReLU stages,
   32-64-128 channels, max-pool between them, global average pool, linear; inputs resized to at most
   64 px) is trained on the real TRAIN images of both domains to tell A from B: Adam (1e-3), batch 64,
   random horizontal flips, ``eval.translation_steps`` steps, everything seeded by the evaluation seed
   (the same classifier for every method of a seed). ``translation/classifier_acc``: its accuracy on the
   real TEST images of both domains (percent; 50 is chance on balanced domains).
2. **Does the output look like B?** On the TEST images of A: ``translation/to_target``, the percent of
   translated images the classifier calls B, against ``translation/input_to_target``, the percent of the
   untranslated inputs it calls B (its error on A). A translation that works moves the first far above
   the second.
3. **Is the content kept?** ``translation/edge_ssim``: the mean SSIM (Wang et al., 2004; 11x11 Gaussian
   window, sigma 1.5, valid positions) between the edge maps of each input and its output, against
   ``translation/edge_ssim_random``, the same score between each input and a random TEST image of B
   (seeded): structure shared by chance. Edge maps are the Sobel gradient magnitude of the luminance of
   the [0, 1] image, divided by its maximum 4 sqrt(2) (:func:`sobel_edges`). An identity "translation"
   scores 1 here and moves nothing in (2); both numbers are needed.
4. A PNG grid of the first ``eval.translation_grid`` A test images (top row) and their translations
   (bottom row), ``translation_grid.png``, written to the evaluation's artifact folder (logged with the
   run as an MLflow artifact).

FID is not used: its Inception weights would have to be downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.data.domains import Domains
from harness.data.store import iter_batches
from harness.data.views import normalize

CLASSIFIER_SIDE = 64          # the classifier sees images resized to at most this side
CLASSIFIER_BATCH = 64
WIDTHS = (32, 64, 128)    # the classifier's conv stages
GRID_NAME = "translation_grid.png"
LUMA = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------- edges and SSIM


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """Edge maps (B, 1, H, W) in [0, 1] of images ``x`` (B, C, H, W) in [0, 1]: the Sobel gradient magnitude
    of the luminance (ITU-R BT.601 weights for RGB, the channel mean otherwise), replicate-padded, divided
    by its largest possible value 4 sqrt(2)."""
    x = x.float()
    if x.shape[1] == 3:
        gray = sum(w * x[:, i:i + 1] for i, w in enumerate(LUMA))
    else:
        gray = x.mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    k = torch.stack([kx, kx.t()])[:, None]                     # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), k)
    return g.pow(2).sum(dim=1, keepdim=True).sqrt() / (4 * math.sqrt(2))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image (B,) of single-channel maps ``a``, ``b`` (B, 1, H, W) (Wang, Bovik, Sheikh &
    Simoncelli, 2004): local means, variances and covariance under a Gaussian window (``window`` px, at most
    the map's side, kept odd; valid positions only), C1 = (0.01 L)^2, C2 = (0.03 L)^2,

        SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))

    averaged over the positions. Identical maps give exactly 1."""
    a, b = a.float(), b.float()
    w = min(window, a.shape[-1], a.shape[-2])
    w -= 1 - w % 2
    t = torch.arange(w, device=a.device, dtype=torch.float32) - (w - 1) / 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, k)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    s_aa = blur(a * a) - mu_a * mu_a
    s_bb = blur(b * b) - mu_b * mu_b
    s_ab = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (s_aa + s_bb + c2)
    return (num / den).mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------- the domain classifier


class DomainClassifier(nn.Module):
    """Three conv-BN-ReLU stages (32, 64, 128 channels; 2x2 max-pool after the first two), global average
    pool, a linear layer to two logits (A, B)."""

    def __init__(self, channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for i, w in enumerate(WIDTHS):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > CLASSIFIER_SIDE:
            x = F.interpolate(x.float(), size=(CLASSIFIER_SIDE, CLASSIFIER_SIDE), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.head(self.features(x).mean(dim=(2, 3)))


def train_domain_classifier(x_train, domains: torch.Tensor, mean, std, steps: int, seed: int,
                            device: torch.device) -> DomainClassifier:
    """A :class:`DomainClassifier` fitted on real TRAIN images (any image store) with their domains: Adam
    1e-3, batch 64 drawn half from each domain, random flips, ``steps`` steps, seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):          # the initial weights are seeded; the global RNG is left as it was
        torch.manual_seed(seed)
        model = DomainClassifier(x_train.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    members = [torch.nonzero(domains == k).flatten() for k in (0, 1)]
    half = CLASSIFIER_BATCH // 2

    def batches():
        for _ in range(steps):
            picks = [m[torch.randint(len(m), (half,), generator=g)] for m in members]
            yield torch.cat(picks)

    target = torch.cat([torch.zeros(half), torch.ones(half)]).long().to(device)
    model.train()
    stream = iter_batches(x_train, batches())
    try:
        for _, xb in stream:
            x = normalize(xb.to(device), mean, std)
            flip = (torch.rand(len(x), generator=g) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            loss = F.cross_entropy(model(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        stream.close()
    return model.eval()


# ----------------------------------------------------------------------------- the protocol


def _grid_png(inputs: torch.Tensor, outputs: torch.Tensor, path: Path) -> None:
    """Inputs (top row) over outputs (bottom row), uint8 (n, C, H, W) each, 2 px white gaps, tiles
    enlarged (nearest) to at least 64 px."""
    from PIL import Image

    n, c, h, w = inputs.shape
    scale = max(1, math.ceil(64 / h))
    gap = 2
    tile_h, tile_w = h * scale, w * scale
    canvas = np.full((2 * tile_h + 3 * gap, n * tile_w + (n + 1) * gap, 3), 255, dtype=np.uint8)
    for row, imgs in enumerate((inputs, outputs)):
        for i in range(n):
            t = imgs[i].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            t = t.expand(3, -1, -1) if c == 1 else t
            y0, x0 = gap + row * (tile_h + gap), gap + i * (tile_w + gap)
            canvas[y0:y0 + tile_h, x0:x0 + tile_w] = t.permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def _pixels(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised images back to [0, 1]."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float() * s + m).clamp_(0, 1)


def translation_eval(translator: nn.Module, ds, domains: Domains, steps: int = 600, grid: int = 8, seed: int = 0,
                     batch_size: int = 256, device: str | torch.device = "cpu", precision: str = "fp32",
                     artifact_dir: str | Path | None = None) -> dict[str, float | str]:
    """The protocol (module docstring): classifier fractions, edge SSIM against the random-pair baseline,
    and the sample grid (written when ``artifact_dir`` is given). Percentages for the fractions."""
    device = torch.device(device)
    clf = train_domain_classifier(ds.x_train, domains.train, ds.mean, ds.std, steps, seed, device)
    translator = translator.to(device)
    was = translator.training
    translator.eval()
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    src, tgt = domains.members("test", 0), domains.members("test", 1)
    g = torch.Generator().manual_seed(seed + 1)
    partner = tgt[torch.randint(len(tgt), (len(src),), generator=g)]      # a random B image per A image
    counts = {"to_target": 0, "input_to_target": 0}
    ssim_out, ssim_rand = [], []
    shown_in, shown_out = [], []
    correct = 0
    try:
        with torch.inference_mode(), amp:
            # the classifier on every real test image (both domains)
            stream = iter_batches(ds.x_test, (torch.arange(i, min(i + batch_size, len(ds.x_test)))
                                              for i in range(0, len(ds.x_test), batch_size)))
            try:
                for idx, xb in stream:
                    pred = clf(normalize(xb.to(device), ds.mean, ds.std)).argmax(1).cpu()
                    correct += int((pred == domains.test[idx]).sum())
            finally:
                stream.close()
            order = [(src[i:i + batch_size], partner[i:i + batch_size]) for i in range(0, len(src), batch_size)]
            a_stream = iter_batches(ds.x_test, (a for a, _ in order))
            b_stream = iter_batches(ds.x_test, (b for _, b in order))
            try:
                for (_, xa), (_, xb) in zip(a_stream, b_stream):
                    x = normalize(xa.to(device), ds.mean, ds.std)
                    y = translator(x).float()
                    counts["input_to_target"] += int((clf(x).argmax(1) == 1).sum())
                    counts["to_target"] += int((clf(y).argmax(1) == 1).sum())
                    p_in, p_out = _pixels(x, ds.mean, ds.std), _pixels(y, ds.mean, ds.std)
                    e_in = sobel_edges(p_in)
                    ssim_out.append(ssim(e_in, sobel_edges(p_out)).cpu())
                    ssim_rand.append(ssim(e_in, sobel_edges(xb.to(device).float() / 255)).cpu())
                    if sum(len(t) for t in shown_in) < grid:
                        shown_in.append(xa[:grid].cpu())
                        shown_out.append((p_out[:grid] * 255).round().to(torch.uint8).cpu())
            finally:
                a_stream.close()
                b_stream.close()
    finally:
        translator.train(was)
    n = len(src)
    out: dict[str, float | str] = {
        "translation/classifier_acc": 100.0 * correct / max(len(ds.x_test), 1),
        "translation/to_target": 100.0 * counts["to_target"] / n,
        "translation/input_to_target": 100.0 * counts["input_to_target"] / n,
        "translation/edge_ssim": float(torch.cat(ssim_out).mean()),
        "translation/edge_ssim_random": float(torch.cat(ssim_rand).mean()),
    }
    if artifact_dir is not None and grid > 0:
        _grid_png(torch.cat(shown_in)[:grid], torch.cat(shown_out)[:grid], Path(artifact_dir) / GRID_NAME)
    return out
