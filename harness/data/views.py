"""Batched, seeded augmentations on tensors, on the training device.

A :class:`ViewRecipe` turns a uint8 batch (B, C, H, W) into a list of normalised float views
plus each view's crop geometry (for pixel-level methods). Every random draw comes from a
``torch.Generator`` the trainer seeds from (run seed, step), so a batch's views are a pure
function of the step: a resumed run sees the same views as an uninterrupted one.

Clips (a dataset with ``frames`` > 1, ``harness.data.video``: (B, T*C, H, W)) get one crop, flip, colour
jitter, grayscale, blur and solarisation per clip, the same for all its frames (:meth:`ViewRecipe.with_frames`).

Colour on grayscale data is explicit: with ``color="skip"`` (default) saturation, hue and
random-grayscale are dropped for 1-channel images and :meth:`ViewRecipe.notes` says so;
with ``color="refuse"`` a 1-channel dataset is an error before training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.data.saliency import composite, derangement, foreground_mask


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation (SimCLR/BYOL terminology; probabilities per image)."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    # > 0: CURL's crop for frames instead of the resized crop (:func:`random_shift`): a random (S - shift)
    # crop, replicate-padded by shift and randomly cropped back to S (size must be the image's side S)
    shift: int = 0


@dataclass(frozen=True)
class BackgroundSpec:
    """Background augmentation (Ryali, Schwab & Morcos, 2021, arXiv:2103.12719), for any recipe.

    Per view in ``views`` and per image with probability ``p``, the source image's background (where
    its saliency mask, ``harness.data.saliency.foreground_mask``, is 0) is replaced before the view's
    crop: ``random`` takes the pixels of another image of the batch (a seeded derangement: never the
    image itself; the paper's BG_Random), ``constant`` the dataset's mean colour (0 after
    normalisation; BG_RM, background removed), ``noise`` uniform noise in [0, 1] per pixel and
    channel. The foreground pixels are kept exactly. The mask is computed once per batch, on the
    device, from the un-augmented images; every draw comes from the step's generator, so the views
    stay a pure function of the step (resume stays exact). The paper's BG_Swaps (extra hard
    positives / negatives in the loss) is not a view option and is not implemented here.

    ``p = 0.2`` is the default: our reading of the paper's setting for BG_RM / BG_Random on
    ImageNet (a low probability, applied to each view independently); the text could not be
    re-checked while writing this, so it is a knob (``views.background_p``), logged with the run.
    """

    mode: str = "random"              # random | constant | noise
    p: float = 0.2
    views: str = "all"                # all | first | second
    saliency: str = "frequency_tuned"
    threshold: str = "otsu"
    quantile: float = 0.5

    def view_indices(self, n: int) -> list[int]:
        return {"all": list(range(n)), "first": [0], "second": [1]}[self.views]

    def describe(self) -> str:
        thr = self.threshold if self.threshold == "otsu" else f"quantile {self.quantile:g}"
        return (f"background augmentation: {self.mode}, p = {self.p:g}, views {self.views}; "
                f"masks: {self.saliency} saliency, {thr}")


def replace_background(xf: torch.Tensor, mask: torch.Tensor, spec: BackgroundSpec, gen: torch.Generator,
                       mean, apply: torch.Tensor | None = None) -> torch.Tensor:
    """One view's background step on a float batch in [0, 1] (B, C, H, W) with its mask (B, 1, H, W):
    the images ``apply`` selects (drawn here with probability ``spec.p`` when not given) get a new background."""
    b, dev = xf.shape[0], xf.device
    if apply is None:
        apply = torch.rand(b, generator=gen, device=dev) < spec.p
    if spec.mode == "random":
        bg = xf[derangement(b, gen, dev)]
    elif spec.mode == "noise":
        bg = torch.rand(xf.shape, generator=gen, device=dev, dtype=xf.dtype)
    else:
        bg = torch.tensor(mean, device=dev, dtype=xf.dtype).view(1, -1, 1, 1)
    m = mask | ~apply.view(b, 1, 1, 1)      # images not drawn keep every pixel
    return composite(xf, m, bg)


@dataclass
class Views:
    images: list[torch.Tensor]        # normalised float views, each (B, C, s, s)
    boxes: list[torch.Tensor]         # per view (B, 4): crop (x0, y0, x1, y1) in [0, 1] of the source image
    flipped: list[torch.Tensor]       # per view (B,) bool
    source: torch.Tensor | None = None  # the normalised un-augmented batch, for methods that need it

    def slice(self, start: int, stop: int) -> "Views":
        """Rows ``start:stop`` of every view (a process's share of a global batch under DDP)."""
        return Views([v[start:stop] for v in self.images], [b[start:stop] for b in self.boxes],
                     [f[start:stop] for f in self.flipped], None if self.source is None else self.source[start:stop])


@dataclass
class ViewRecipe:
    specs: list[ViewSpec]
    color: str = "skip"               # "skip" | "refuse" for 1-channel datasets
    notes_: list[str] = field(default_factory=list)
    background: BackgroundSpec | None = None   # views.background (set by the trainer from the run's config)
    frames: int = 1                   # clips: frames stacked on the channel axis (set by the trainer from the data)
    # views.resolution (progressive resizing): the views' side per equal share of progress, e.g. (16, 24, 32);
    # every spec's size scales by side / full_size (local crops too). Empty: the specs' sizes throughout
    resolution: tuple[int, ...] = ()
    full_size: int = 0
    _scaled: dict = field(default_factory=dict, repr=False)

    def with_frames(self, frames: int) -> "ViewRecipe":
        """This recipe for clips of ``frames`` frames (1: images): every augmentation drawn once per clip."""
        self.frames = max(1, int(frames))
        return self

    def with_resolution(self, sides, full_size: int) -> "ViewRecipe":
        """This recipe under progressive resizing (``views.resolution``): at progress p the views are made at
        ``sides[int(p * len(sides))]`` / ``full_size`` of their sizes (rounded, at least 4 px)."""
        self.resolution, self.full_size, self._scaled = tuple(int(v) for v in sides or ()), int(full_size), {}
        return self

    def side_at(self, progress: float) -> int:
        """The views' side (of the full-size spec) at ``progress`` in [0, 1]."""
        if not self.resolution:
            return self.full_size
        return self.resolution[min(len(self.resolution) - 1, int(progress * len(self.resolution)))]

    def sizes(self) -> list[int]:
        """Every view side this recipe makes over a run (for kernel trials)."""
        sides = self.resolution or (self.full_size,)
        return sorted({self._scale(spec.size, side) for spec in self.specs for side in sides})

    def _scale(self, size: int, side: int) -> int:
        return size if not self.resolution or side == self.full_size else max(4, round(size * side / self.full_size))

    def at(self, progress: float) -> "ViewRecipe":
        """The recipe in force at ``progress``: itself without progressive resizing, else a copy with scaled sizes."""
        side = self.side_at(progress)
        if not self.resolution or side == self.full_size:
            return self
        if side not in self._scaled:
            self._scaled[side] = replace(self, specs=[replace(sp, size=self._scale(sp.size, side)) for sp in self.specs],
                                         resolution=(), _scaled={})
        return self._scaled[side]

    def with_background(self, views_cfg) -> "ViewRecipe":
        """This recipe with the run's ``views.*`` options (``harness.core.schema.ViewsConfig``)."""
        if views_cfg is None or views_cfg.background == "none":
            self.background = None
        else:
            self.background = BackgroundSpec(views_cfg.background, float(views_cfg.background_p),
                                             views_cfg.background_views, views_cfg.saliency,
                                             views_cfg.saliency_threshold, float(views_cfg.saliency_quantile))
        return self

    # ------------------------------------------------------------------ presets
    @staticmethod
    def simclr(size: int, n: int = 2, blur: bool = True, strength: float = 1.0, min_scale: float = 0.08) -> "ViewRecipe":
        s = strength
        spec = ViewSpec(size, scale=(min_scale, 1.0), jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                        blur_p=0.5 if blur else 0.0)
        return ViewRecipe([spec] * n)

    @staticmethod
    def byol(size: int, blur: bool = True, min_scale: float = 0.08) -> "ViewRecipe":
        """BYOL's asymmetric pair: blur 1.0 / 0.1, solarize 0 / 0.2."""
        base = ViewSpec(size, scale=(min_scale, 1.0), jitter=(0.4, 0.4, 0.2, 0.1))
        return ViewRecipe([replace(base, blur_p=1.0 if blur else 0.0),
                           replace(base, blur_p=0.1 if blur else 0.0, solarize_p=0.2)])

    @staticmethod
    def moco_v2(size: int, blur: bool = True) -> "ViewRecipe":
        spec = ViewSpec(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5 if blur else 0.0)
        return ViewRecipe([spec, spec])

    @staticmethod
    def shifted(size: int, shift: int = 4, n: int = 2) -> "ViewRecipe":
        """CURL's views of Atari frame stacks (curl_rainbow): :func:`random_shift` only, no flip, no colour."""
        return ViewRecipe([ViewSpec(size, flip=0.0, jitter_p=0.0, gray_p=0.0, shift=shift)] * n)

    @staticmethod
    def light(size: int, scale: tuple[float, float] = (0.2, 1.0), n: int = 1) -> "ViewRecipe":
        """Crop + flip only (rotation prediction, masked image modelling)."""
        return ViewRecipe([ViewSpec(size, scale=scale, jitter_p=0.0, gray_p=0.0)] * n)

    @staticmethod
    def multi_crop(global_size: int, local_size: int, n_local: int, global_scale=(0.4, 1.0),
                   local_scale=(0.05, 0.4), blur: bool = True) -> "ViewRecipe":
        g = ViewSpec(global_size, scale=global_scale, blur_p=0.5 if blur else 0.0)
        loc = ViewSpec(local_size, scale=local_scale, blur_p=0.5 if blur else 0.0)
        return ViewRecipe([g, g] + [loc] * n_local)

    # ------------------------------------------------------------------ checks
    def check(self, channels: int, image_size: int, method: str = "") -> None:
        """Resolve the grayscale policy; called once before training."""
        self.notes_ = []
        if self.frames > 1:
            if self.background is not None:
                raise ConfigError("views.background (saliency masks) is for images; a clip dataset takes "
                                  "views.background=none")
            channels //= self.frames          # the policy below is per frame
        if channels == 1:
            uses_color = any(s.jitter_p > 0 and (s.jitter[2] > 0 or s.jitter[3] > 0) or s.gray_p > 0 for s in self.specs)
            if uses_color and self.color == "refuse":
                raise ConfigError(f"method '{method}' needs colour images but the dataset has 1 channel; "
                                  "choose a colour dataset such as cifar10")
            if uses_color:
                self.notes_.append("grayscale dataset: saturation/hue jitter and random grayscale skipped")
        colour_free = all(s.jitter_p == 0 and s.gray_p == 0 for s in self.specs) and self.background is None
        if channels not in (1, 3) and not colour_free:   # any channels (Atari frame stacks) without colour operations
            raise ConfigError(f"method '{method}' has colour augmentations, for 1- or 3-channel images; the dataset has "
                              f"{channels} channels: use a method without them (e.g. curl)")
        for s in self.specs:
            if s.shift and s.size != image_size:
                raise ConfigError(f"method '{method}': a shifted crop keeps the image's side ({image_size} px), "
                                  f"its view asks for {s.size} px")
            if s.shift and not 0 < s.shift < image_size:
                raise ConfigError(f"method '{method}': a shift of {s.shift} px does not fit {image_size} px images")
        if self.background is not None:
            if self.background.views == "second" and len(self.specs) < 2:
                raise ConfigError(f"views.background_views=second but method '{method}' makes "
                                  f"{len(self.specs)} view; use views.background_views=all or first")
            self.notes_.append(self.background.describe())

    def notes(self) -> list[str]:
        return list(self.notes_)

    # ------------------------------------------------------------------ apply
    def __call__(self, x: torch.Tensor, gen: torch.Generator, mean, std, keep_source: bool = False) -> Views:
        xf = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
        imgs, boxes, flips = [], [], []
        bg = self.background
        bg_views = bg.view_indices(len(self.specs)) if bg is not None and bg.p > 0 else []
        # which images each background view replaces, drawn first; masks only for the images drawn
        # (at p = 0.2 on two views about a third of the batch): a saliency map per image costs a few convs
        applies = {i: torch.rand(xf.shape[0], generator=gen, device=xf.device) < bg.p for i in bg_views}
        mask = None
        if bg_views:
            need = torch.stack(list(applies.values())).any(0)
            mask = torch.ones((xf.shape[0], 1, *xf.shape[2:]), dtype=torch.bool, device=xf.device)
            if need.any():
                mask[need] = foreground_mask(xf[need], bg.saliency, bg.threshold, bg.quantile)
        for i, spec in enumerate(self.specs):
            src = replace_background(xf, mask, bg, gen, mean, applies[i]) if i in bg_views else xf
            v, box, fl = augment(src, spec, gen, self.frames)
            imgs.append((v - mean_t) / std_t)
            boxes.append(box)
            flips.append(fl)
        src = (xf - mean_t) / std_t if keep_source else None
        return Views(imgs, boxes, flips, src)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float, the evaluation transform."""
    xf = x.float() / 255.0
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (xf - m) / s


def _u(gen, n, lo, hi, device):
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def random_resized_crop(x: torch.Tensor, size: int, scale, ratio, flip_p: float, gen: torch.Generator):
    """Batched RandomResizedCrop + horizontal flip via one affine grid_sample.

    Returns the crops and each crop's box (x0, y0, x1, y1) in [0, 1] source coordinates.
    Boxes whose sampled side exceeds the image are clamped (torchvision retries instead).
    """
    b, dev = x.shape[0], x.device
    area = _u(gen, b, scale[0], scale[1], dev)
    logr = _u(gen, b, math.log(ratio[0]), math.log(ratio[1]), dev)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    x0 = torch.rand(b, generator=gen, device=dev) * (1 - w)
    y0 = torch.rand(b, generator=gen, device=dev) * (1 - h)
    flip = torch.rand(b, generator=gen, device=dev) < flip_p
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (x0 + w / 2) * 2 - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = (y0 + h / 2) * 2 - 1
    grid = F.affine_grid(theta, (b, x.shape[1], size, size), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    box = torch.stack([x0, y0, x0 + w, y0 + h], dim=1)
    return out, box, flip


def random_shift(x: torch.Tensor, shift: int, flip_p: float, gen: torch.Generator):
    """CURL's augmentation of Atari frames (its Atari code, curl_rainbow: RandomCrop(S - shift),
    ReplicationPad2d(shift), RandomCrop(S)), batched, one draw per image for all its channels: a random
    (S - shift) x (S - shift) crop at integer offset o1 in [0, shift], replicate-padded by ``shift``, then
    the S x S crop at offset o2 in [0, shift]; so output pixel i is input pixel
    o1 + clamp(i + o2 - shift, 0, S - shift - 1) (a shift of at most ``shift`` px, edges repeated). Then a
    horizontal flip with probability ``flip_p``. Returns the views, their boxes (x0, y0, x1, y1) in [0, 1]
    of the source and the flips, as :func:`random_resized_crop`."""
    b, _, h, w = x.shape
    dev = x.device
    o1 = torch.randint(0, shift + 1, (b, 2), generator=gen, device=dev)
    o2 = torch.randint(0, shift + 1, (b, 2), generator=gen, device=dev)
    flip = torch.rand(b, generator=gen, device=dev) < flip_p

    def index(side: int, axis: int) -> torch.Tensor:   # (B, side): the source row / column of each output one
        i = torch.arange(side, device=dev)[None, :]
        return o1[:, axis, None] + (i + o2[:, axis, None] - shift).clamp(0, side - shift - 1)

    rows, cols = index(h, 0), index(w, 1)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    c = x.shape[1]
    flat = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)   # one gather
    out = x.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)
    y0 = (o1[:, 0] + o2[:, 0] - shift).float() / h
    x0 = (o1[:, 1] + o2[:, 1] - shift).float() / w
    box = torch.stack([x0, y0, x0 + 1, y0 + 1], dim=1)
    return out, box, flip


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(a, b, ratio):
    return (ratio * a + (1 - ratio) * b).clamp_(0, 1)


def color_jitter(x: torch.Tensor, jitter, p: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (fixed order), each factor per image."""
    b, dev = x.shape[0], x.device
    apply = (torch.rand(b, generator=gen, device=dev) < p).float().view(b, 1, 1, 1)
    bri, con, sat, hue = jitter
    y = x
    if bri > 0:
        f = _u(gen, b, max(0, 1 - bri), 1 + bri, dev).view(b, 1, 1, 1)
        y = (y * f).clamp(0, 1)
    if con > 0:
        f = _u(gen, b, max(0, 1 - con), 1 + con, dev).view(b, 1, 1, 1)
        m = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y = _blend(y, m, f)
    if x.shape[1] == 3:
        if sat > 0:
            f = _u(gen, b, max(0, 1 - sat), 1 + sat, dev).view(b, 1, 1, 1)
            y = _blend(y, _gray(y), f)
        if hue > 0:
            # rotate chroma in YIQ space by an angle of hue * 2*pi
            ang = _u(gen, b, -hue, hue, dev) * 2 * math.pi
            y = _hue_rotate(y, ang)
    return apply * y + (1 - apply) * x


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_rotate(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    m = _RGB2YIQ.to(x.device)
    minv = torch.linalg.inv(m)
    c, s = torch.cos(ang), torch.sin(ang)
    rot = torch.zeros(len(ang), 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    full = minv @ rot @ m  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", full, x).clamp_(0, 1)


def gaussian_blur(x: torch.Tensor, p: float, sigma, gen: torch.Generator) -> torch.Tensor:
    """Per-image Gaussian blur (kernel ~10% of the side, odd), sigma ~ U(sigma)."""
    b, c, h, w = x.shape
    dev = x.device
    apply = torch.rand(b, generator=gen, device=dev) < p
    sig = _u(gen, b, sigma[0], sigma[1], dev)
    if not apply.any():
        return x
    k = max(3, int(round(0.1 * h)) // 2 * 2 + 1)
    t = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    ker = torch.exp(-(t[None] ** 2) / (2 * sig[:, None] ** 2))
    ker = ker / ker.sum(dim=1, keepdim=True)  # (B, k)
    kc = ker.repeat_interleave(c, dim=0)  # (B*C, k)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), kc.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), kc.view(b * c, 1, k, 1), groups=b * c)
    y = y.view(b, c, h, w)
    return torch.where(apply.view(b, 1, 1, 1), y, x)


def fold_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Clips (B, T*C, H, W) -> (B, C, T*H, W): each clip one tall image of its frames, so per-image
    colour operations act on a whole clip alike."""
    b, tc, h, w = x.shape
    return x.reshape(b, frames, tc // frames, h, w).transpose(1, 2).reshape(b, tc // frames, frames * h, w)


def unfold_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """The inverse of :func:`fold_frames`."""
    b, c, th, w = x.shape
    return x.reshape(b, c, frames, th // frames, w).transpose(1, 2).reshape(b, frames * c, th // frames, w)


def augment(x: torch.Tensor, spec: ViewSpec, gen: torch.Generator, frames: int = 1):
    """One view of a float batch in [0, 1]: crop+flip, jitter, grayscale, blur, solarize. Clips
    (``frames`` > 1): the crop (one affine map for all channels) and the blur (per channel, one sigma
    per clip) act on the stacked frames; jitter, grayscale and solarisation on the clip folded into one
    tall image (:func:`fold_frames`), so every draw is per clip and equal for its frames."""
    b, dev = x.shape[0], x.device
    v, box, flip = random_shift(x, spec.shift, spec.flip, gen) if spec.shift else \
        random_resized_crop(x, spec.size, spec.scale, spec.ratio, spec.flip, gen)
    v = v.clamp_(0, 1)
    if frames > 1:
        v = fold_frames(v, frames)
    if spec.jitter_p > 0:
        v = color_jitter(v, spec.jitter, spec.jitter_p, gen)
    if spec.gray_p > 0 and v.shape[1] == 3:
        g = torch.rand(b, generator=gen, device=dev) < spec.gray_p
        v = torch.where(g.view(b, 1, 1, 1), _gray(v).expand_as(v), v)
    if spec.blur_p > 0:
        v = gaussian_blur(unfold_frames(v, frames), spec.blur_p, spec.blur_sigma, gen) if frames > 1 else \
            gaussian_blur(v, spec.blur_p, spec.blur_sigma, gen)
        v = fold_frames(v, frames) if frames > 1 else v
    if spec.solarize_p > 0:
        s = torch.rand(b, generator=gen, device=dev) < spec.solarize_p
        v = torch.where(s.view(b, 1, 1, 1) & (v >= 0.5), 1 - v, v)
    return (unfold_frames(v, frames) if frames > 1 else v), box, flip
