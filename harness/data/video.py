"""Video clips as a dataset kind, and the modalities computed from them (optical flow, grayscale).

A clip dataset is an :class:`~harness.data.dataset.ImageDataset` whose channels are a clip's T frames
stacked in time order, uint8 (N, T*C, H, W), with ``frames = T`` (channels per frame: C =
channels // frames). Everything that handles images handles clips unchanged: subsets, statistics (per
channel, so per frame and colour), fingerprints, batches, and the shared evaluator, which hands the
encoder (B, T*C, H, W) and scores kNN / linear probes over its clip features. View recipes crop and
flip all frames of a clip alike and jitter their colours alike (``harness.data.views``).

Layouts (registered in ``harness.data.sources.DATASETS``):

* ``clips``: an ``.npz`` (``data.data_dir=FILE.npz``) with ``x_train`` / ``x_test`` uint8 of shape
  (N, T, H, W, C) (or (N, T, H, W): grayscale), ``y_train`` / ``y_test`` integer class indices,
  optionally ``class_names``. :func:`save_clip_npz` writes one; any video dataset decoded to frames
  fits it.
* ``clipfolder``: ``ROOT/train/<class>/<clip>`` and ``ROOT/val/<class>/<clip>`` (or ``test/``), where
  a clip is either a folder of frame images (sorted by file name; any format PIL reads) or a
  ``<clip>.npy`` array (T, H, W[, C]) uint8. Every clip must have the same number of frames and the
  same frame size (one line names the first clip that differs); frames are kept at their size
  (``data.image_size`` resizes every frame).
* ``moving_fashion_mnist``: generated, real images: each clip is one Fashion-MNIST garment (train
  clips from the train images, test clips from the test images; the class is the garment's) moving on
  a canvas (:func:`moving_clips`). Built once, deterministically from its seed, and cached as a
  ``clips`` .npz.
* ``synthetic_clips``: tiny moving squares, for tests only.

Modalities: :func:`farneback_flow` is OpenCV's dense Farnebäck optical flow between consecutive
frames; :func:`clip_modalities` computes it once for every training clip and caches it on disk
(keyed by the dataset's fingerprint and the flow parameters). :func:`gray_frames` is the grayscale
modality (ITU-R 601 luma); :func:`crop_flow` moves a flow field through a view's crop and flip.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import DataError
from harness.data.dataset import ImageDataset

FRAME_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
LUMA = (0.299, 0.587, 0.114)

# Farnebäck's parameters (pyr_scale, levels, winsize, iterations, poly_n, poly_sigma) for frames of
# 28-64 px: two pyramid levels and a 9-px window (OpenCV's sample uses 3 levels and 15 px for 640x480)
FLOW_PARAMS = (0.5, 2, 9, 3, 5, 1.1)


# ----------------------------------------------------------------------------- layouts

def clips_to_tensor(x: np.ndarray, what: str) -> tuple[torch.Tensor, int]:
    """uint8 clips (N, T, H, W[, C]) -> (N, T*C, H, W) with the frames' channels stacked in time order, and T."""
    if x.dtype != np.uint8:
        raise DataError(f"{what}: clips must be uint8, got {x.dtype}")
    if x.ndim == 4:
        x = x[..., None]
    if x.ndim != 5 or x.shape[-1] not in (1, 3):
        raise DataError(f"{what}: clips must have shape (N, T, H, W) or (N, T, H, W, C) with C = 1 or 3, "
                        f"got {x.shape}")
    n, t, h, w, c = x.shape
    if t < 2:
        raise DataError(f"{what}: clips need at least 2 frames, got {t}")
    out = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)).reshape(n, t * c, h, w)
    return torch.from_numpy(out), t


def clip_array(x: torch.Tensor, frames: int) -> np.ndarray:
    """(N, T*C, H, W) -> uint8 numpy (N, T, H, W, C): the inverse of :func:`clips_to_tensor`."""
    n, tc, h, w = x.shape
    return x.reshape(n, frames, tc // frames, h, w).permute(0, 1, 3, 4, 2).contiguous().numpy()


def save_clip_npz(path: str | Path, x_train: np.ndarray, y_train, x_test: np.ndarray, y_test,
                  class_names: list[str] | None = None) -> Path:
    """Write clips (N, T, H, W[, C]) uint8 and their labels as a ``clips`` .npz (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    extra = {"class_names": np.array(class_names)} if class_names else {}
    np.savez(tmp, x_train=x_train, y_train=np.asarray(y_train, np.int64), x_test=x_test,
             y_test=np.asarray(y_test, np.int64), **extra)
    os.replace(tmp, path)
    return path


def load_clip_npz(path: str | Path, name: str | None = None) -> ImageDataset:
    """A ``clips`` .npz: x_train / x_test uint8 (N, T, H, W[, C]), y_train / y_test, optional class_names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such .npz file; pass data.data_dir=FILE.npz with clips x_train (N, T, H, W, C), "
                        "y_train, x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise DataError(f"{path}: .npz lacks {', '.join(missing)} (needs x_train, y_train, x_test, y_test)")
            arrs = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            names = [str(c) for c in z["class_names"]] if "class_names" in z.files else []
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise DataError(f"{path}: corrupt or unreadable .npz ({type(e).__name__}: {str(e)[:80]}); re-create it") from None
    xtr, t = clips_to_tensor(arrs["x_train"], f"{path} x_train")
    xte, t_test = clips_to_tensor(arrs["x_test"], f"{path} x_test")
    if (t, xtr.shape[1:]) != (t_test, xte.shape[1:]):
        raise DataError(f"{path}: train clips are {t} frames of {tuple(arrs['x_train'].shape[2:])} but test clips "
                        f"{t_test} frames of {tuple(arrs['x_test'].shape[2:])}; every clip needs the same shape")
    ys = []
    for k in ("y_train", "y_test"):
        if not np.issubdtype(arrs[k].dtype, np.integer):
            raise DataError(f"{path}: {k} must hold integer class indices, got {arrs[k].dtype}")
        ys.append(torch.from_numpy(arrs[k].astype(np.int64).reshape(-1)))
    k = max(len(names), int(max(ys[0].max(), ys[1].max() if len(ys[1]) else 0)) + 1)
    return ImageDataset(name or path.stem, xtr, ys[0], xte, ys[1], k, names, source=str(path), frames=t)


def _read_clip(path: Path) -> np.ndarray:
    """One clip as uint8 (T, H, W, C): a folder of frame images (sorted by name) or a .npy (T, H, W[, C])."""
    if path.is_dir():
        from PIL import Image

        files = sorted(f for f in path.iterdir() if f.suffix.lower() in FRAME_EXT)
        if not files:
            raise DataError(f"{path}: a clip folder without frame images ({', '.join(sorted(FRAME_EXT))})")
        frames = []
        for f in files:
            try:
                with Image.open(f) as im:
                    gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                    frames.append(np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8))
            except OSError as e:
                raise DataError(f"{f}: unreadable frame ({e}); remove or replace it") from None
        if len({f.shape for f in frames}) > 1:
            raise DataError(f"{path}: its frames differ in size or colour ({sorted({f.shape for f in frames})}); "
                            "every frame of a clip needs one size")
        arr = np.stack(frames)
    else:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: unreadable .npy ({type(e).__name__}); re-create it") from None
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
            raise DataError(f"{path}: a clip .npy must be uint8 (T, H, W) or (T, H, W, C), got {arr.shape} {arr.dtype}")
    return arr[..., None] if arr.ndim == 3 else arr


def _clip_entries(split_dir: Path, classes: list[str] | None) -> tuple[list[tuple[Path, int]], list[str]]:
    classes = classes or sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    entries = [(c_path, ci) for ci, c in enumerate(classes) if (split_dir / c).is_dir()
               for c_path in sorted((split_dir / c).iterdir()) if c_path.is_dir() or c_path.suffix == ".npy"]
    if not entries:
        raise DataError(f"{split_dir}: no clips found (one folder per class, holding clip folders of frame images "
                        "or <clip>.npy arrays)")
    return entries, classes


def read_clip_folder(root: str | Path) -> ImageDataset:
    """``ROOT/train/<class>/<clip>`` and ``ROOT/val/<class>/<clip>`` (or ``test/``): see the module doc."""
    root = Path(root).expanduser()
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(f"{root}: expected sub-folders train/ and val/ (or test/), each with one folder per class "
                        "holding clips (a folder of frames, or <clip>.npy)")
    train, classes = _clip_entries(root / "train", None)
    test, _ = _clip_entries(test_dir, classes)
    shape, first = None, None
    splits = []
    for entries in (train, test):
        clips = []
        for path, _ in entries:
            arr = _read_clip(path)
            if shape is None:
                shape, first = arr.shape, path
            elif arr.shape != shape:
                raise DataError(f"{path}: {arr.shape[0]} frames of {arr.shape[1]}x{arr.shape[2]}x{arr.shape[3]}, but "
                                f"{first} has {shape[0]} frames of {shape[1]}x{shape[2]}x{shape[3]}; every clip needs "
                                "the same number of frames and frame size (trim or resize them)")
            clips.append(arr)
        splits.append(np.stack(clips))
    (xtr, t), (xte, _) = (clips_to_tensor(s, str(root)) for s in splits)
    ytr, yte = (torch.tensor([ci for _, ci in e], dtype=torch.int64) for e in (train, test))
    print(f"sslbench: {root}: {len(ytr)} train / {len(yte)} {test_dir.name} clips of {t} frames "
          f"{shape[1]}x{shape[2]}x{shape[3]}, {len(classes)} classes", file=sys.stderr)
    return ImageDataset(root.name, xtr, ytr, xte, yte, len(classes), classes, source=str(root), frames=t)


# ----------------------------------------------------------------------------- generated clips

def generated_dir() -> Path:
    """Where generated datasets are cached: $SSLBENCH_DATA_DIR when set, else ~/.cache/sslbench/data."""
    env = os.environ.get("SSLBENCH_DATA_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/sslbench/data").expanduser()


def _colours(g: np.random.Generator, n: int) -> np.ndarray:
    """n saturated colours (RGB in [0, 1]): a uniform hue, saturation 0.6-1, value 0.7-1."""
    h, s, v = g.uniform(0, 1, n), g.uniform(0.6, 1.0, n), g.uniform(0.7, 1.0, n)
    k = (np.array([5, 3, 1])[None] + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def moving_clips(images: torch.Tensor, n: int, frames: int = 8, size: int = 32, glyph: int = 20,
                 speed: tuple[float, float] = (1.0, 2.5), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clips (n, T, size, size, 3) uint8 of one image each moving on a canvas; returns (clips, image index).

    Per clip, drawn from a generator seeded with ``seed``: a source image (a seeded permutation of
    ``images``, so each is used once while n <= len(images)), resized to ``glyph`` px; its colour and
    the background's (two saturated colours: colour is a nuisance, independent of the class); a start
    position uniform on the canvas; a direction uniform on the circle and a speed uniform in ``speed``
    px per frame, bouncing off the canvas edges. The image's intensity is its opacity over the
    background. The motion is independent of the image, so only appearance tells the class; the
    flow field of a frame pair outlines the moving garment (the flow network sees its silhouette).
    """
    g = np.random.default_rng(seed)
    src = images.float()
    if src.shape[-1] != glyph:
        src = F.interpolate(src, size=(glyph, glyph), mode="bilinear", antialias=True, align_corners=False)
    alpha = (src.mean(1) / 255.0).clamp(0, 1).numpy()                       # (N, g, g) opacity
    pick = np.concatenate([g.permutation(len(images)) for _ in range(-(-n // len(images)))])[:n]
    fg, bg = _colours(g, n), _colours(g, n) * 0.5                           # darker backgrounds
    span = size - glyph
    pos = g.uniform(0, span, (n, 2))
    ang = g.uniform(0, 2 * np.pi, n)
    vel = np.stack([np.cos(ang), np.sin(ang)], 1) * g.uniform(*speed, n)[:, None]
    out = np.empty((n, frames, size, size, 3), np.uint8)
    canvas = np.empty((size, size), np.float32)
    for t in range(frames):
        for i in range(n):
            x, y = int(round(pos[i, 0])), int(round(pos[i, 1]))
            canvas[:] = 0
            canvas[y:y + glyph, x:x + glyph] = alpha[pick[i]]
            frame = bg[i][None, None] * (1 - canvas[..., None]) + fg[i][None, None] * canvas[..., None]
            out[i, t] = np.round(frame * 255)
        pos += vel
        for d in range(2):      # bounce: reflect the position into [0, span] and reverse the velocity
            low, high = pos[:, d] < 0, pos[:, d] > span
            pos[low, d] = -pos[low, d]
            pos[high, d] = 2 * span - pos[high, d]
            vel[low | high, d] *= -1
    return out, pick


MOVING_FASHION_MNIST = {"n_train": 5000, "n_test": 1000, "frames": 8, "size": 32, "glyph": 20, "seed": 0}


def moving_fashion_mnist(fashion: ImageDataset, cache_dir: str | Path, **params) -> ImageDataset:
    """Fashion-MNIST garments moving on a 32-px canvas (:func:`moving_clips`; the defaults in
    :data:`MOVING_FASHION_MNIST`): train clips from the train images (seed), test clips from the test
    images (seed + 1), the class the garment's. Built once and cached under ``cache_dir`` as a ``clips``
    .npz named by its parameters and the source images' fingerprint (so ``data.name=clips
    data.data_dir=THAT.npz`` reads the same clips)."""
    p = {**MOVING_FASHION_MNIST, **params}
    key = hashlib.sha256(f"{sorted(p.items())}{fashion.fingerprint()}".encode()).hexdigest()[:10]
    path = Path(cache_dir).expanduser() / f"moving_fashion_mnist-{p['n_train']}-{p['n_test']}-t{p['frames']}-" \
                                          f"{p['size']}px-s{p['seed']}-{key}.npz"
    if not path.is_file():
        print(f"sslbench: generating moving_fashion_mnist ({p['n_train']} + {p['n_test']} clips of {p['frames']} "
              f"frames, {p['size']} px) into {path}", file=sys.stderr)
        kw = {k: p[k] for k in ("frames", "size", "glyph")}
        xtr, itr = moving_clips(fashion.x_train, p["n_train"], seed=p["seed"], **kw)
        xte, ite = moving_clips(fashion.x_test, p["n_test"], seed=p["seed"] + 1, **kw)
        try:
            save_clip_npz(path, xtr, fashion.y_train.numpy()[itr], xte, fashion.y_test.numpy()[ite], fashion.class_names)
        except OSError as e:
            raise DataError(f"cannot cache the generated clips at {path} ({e.strerror or e}); set SSLBENCH_DATA_DIR "
                            "to a writable folder") from None
    ds = load_clip_npz(path, "moving_fashion_mnist")
    ds.source = f"generated from {fashion.source} ({path})"
    return ds


def synthetic_clips(n_train: int = 96, n_test: int = 48, frames: int = 4, size: int = 16, num_classes: int = 3,
                    channels: int = 3, seed: int = 0) -> ImageDataset:
    """Tests only: a square whose side tells the class moves at a random velocity over noise."""
    g = np.random.default_rng(seed)

    def make(n):
        y = g.integers(0, num_classes, n)
        x = g.integers(0, 60, (n, frames, size, size, channels)).astype(np.uint8)
        side = 3 + 2 * y
        pos = g.integers(0, size - side[:, None] + 1, (n, 2)).astype(float)
        vel = g.uniform(-1.5, 1.5, (n, 2))
        for t in range(frames):
            for i in range(n):
                px, py = (np.clip(pos[i] + t * vel[i], 0, size - side[i])).astype(int)
                x[i, t, py:py + side[i], px:px + side[i]] = 220
        return x, y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    (ttr, t), (tte, _) = clips_to_tensor(xtr, "synthetic_clips"), clips_to_tensor(xte, "synthetic_clips")
    return ImageDataset("synthetic_clips", ttr, torch.from_numpy(ytr), tte, torch.from_numpy(yte), num_classes,
                        source="generated", frames=t)


# ----------------------------------------------------------------------------- modalities

def _luma(frame: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (H, W) uint8 (ITU-R 601 luma for colour frames)."""
    if frame.shape[-1] == 1:
        return frame[..., 0]
    return np.round(frame.astype(np.float32) @ np.array(LUMA, np.float32)).astype(np.uint8)


def farneback_flow(clip: np.ndarray, params: tuple = FLOW_PARAMS) -> np.ndarray:
    """Dense optical flow between consecutive frames of one clip (T, H, W, C) uint8, by OpenCV's Farnebäck
    (``cv2.calcOpticalFlowFarneback`` on luma): float32 (T-1, 2, H, W), (dx, dy) in pixels per frame, the
    displacement that carries frame t to frame t+1 (a point at (x, y) in frame t is at (x+dx, y+dy) in t+1)."""
    try:
        import cv2
    except ImportError:
        raise DataError("optical flow needs OpenCV: pip install opencv-python-headless (or sslbench[video])") from None
    gray = [_luma(f) for f in clip]
    out = np.empty((len(gray) - 1, 2) + gray[0].shape, np.float32)
    for t in range(len(gray) - 1):
        flow = cv2.calcOpticalFlowFarneback(gray[t], gray[t + 1], None, *params, 0)
        out[t] = flow.transpose(2, 0, 1)
    return out


@dataclass
class ClipModalities:
    """What a video method reads besides the RGB views: each training clip's optical flow (float16
    (N, T-1, 2, H, W), pixels per frame, indexed like ``x_train``) and the flow's RMS (its scale)."""

    frames: int
    flow: torch.Tensor
    flow_rms: float

    def flow_of(self, indices: torch.Tensor) -> torch.Tensor:
        return self.flow[indices.cpu()].float()


def clip_modalities(ds: ImageDataset, cache_dir: str | Path | None, params: tuple = FLOW_PARAMS) -> ClipModalities:
    """The Farnebäck flow of every training clip of ``ds``, computed once and cached (an .npy under
    ``cache_dir`` named by the dataset's fingerprint and the flow parameters; None: not cached)."""
    if ds.frames < 2:
        raise DataError(f"{ds.name}: optical flow needs clips (a dataset with frames >= 2), got single images")
    key = hashlib.sha256(f"{ds.fingerprint()}{params}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"flow-{ds.name}-{key}.npy" if cache_dir else None
    flow = None
    if path is not None and path.is_file():
        try:
            flow = torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, OSError, EOFError):
            flow = None           # a torn cache file: computed again below
    n, tc, h, w = ds.x_train.shape
    if flow is None or tuple(flow.shape) != (n, ds.frames - 1, 2, h, w):
        clips = clip_array(ds.x_train if isinstance(ds.x_train, torch.Tensor) else ds.x_train.materialise(), ds.frames)
        flow = torch.from_numpy(np.stack([farneback_flow(c, params) for c in clips]).astype(np.float16))
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
                np.save(tmp, flow.numpy())
                os.replace(tmp, path)
            except OSError as e:
                print(f"sslbench: warning: the optical flow was not cached at {path} ({e.strerror or e}); it is "
                      "computed again next time", file=sys.stderr)
    rms = float(flow.float().pow(2).mean().sqrt()) if flow.numel() else 1.0
    return ClipModalities(ds.frames, flow, max(rms, 1e-3))


def gray_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Clips in [0, 1] (B, T*C, H, W) -> their grayscale frames (B, T, H, W) (luma for colour clips)."""
    b, tc, h, w = x.shape
    c = tc // frames
    x = x.reshape(b, frames, c, h, w)
    if c == 1:
        return x[:, :, 0]
    wts = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 1, 3, 1, 1)
    return (x * wts).sum(2)


def permute_frames(x: torch.Tensor, frames: int, which: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Clips (B, T*C, H, W) whose frames are reordered where ``which`` (B,) is True, by a random permutation
    that is never the identity (drawn from ``gen``: a rotation of a random permutation when it is); the
    other clips are returned as they are."""
    b, tc, h, w = x.shape
    c = tc // frames
    perm = torch.argsort(torch.rand(b, frames, generator=gen, device=x.device), dim=1)
    ident = (perm == torch.arange(frames, device=x.device)).all(1)
    perm = torch.where(ident[:, None], perm.roll(1, dims=1), perm)
    perm = torch.where(which[:, None], perm, torch.arange(frames, device=x.device).expand(b, frames))
    idx = (perm[:, :, None] * c + torch.arange(c, device=x.device)).reshape(b, tc)
    return torch.gather(x, 1, idx[:, :, None, None].expand(b, tc, h, w))


def crop_flow(flow: torch.Tensor, boxes: torch.Tensor, flipped: torch.Tensor, size: int) -> torch.Tensor:
    """Flow fields (B, K, 2, H, W) in source pixels per frame, seen through each view's crop and flip
    (``harness.data.views.Views``: ``boxes`` (B, 4) = (x0, y0, x1, y1) in [0, 1], ``flipped`` (B,)):
    resampled onto the view's ``size`` x ``size`` grid as the view's pixels were (the same affine
    map, bilinear), the vectors rescaled to view pixels (dx by size / (w W), dy by size / (h H)) and
    dx negated in a flipped view."""
    b, k, _, h, w = flow.shape
    x0, y0, x1, y1 = boxes.float().unbind(1)
    bw, bh = x1 - x0, y1 - y0
    theta = torch.zeros(b, 2, 3, device=flow.device)
    theta[:, 0, 0] = torch.where(flipped, -bw, bw)
    theta[:, 0, 2] = (x0 + bw / 2) * 2 - 1
    theta[:, 1, 1] = bh
    theta[:, 1, 2] = (y0 + bh / 2) * 2 - 1
    grid = F.affine_grid(theta, (b, k * 2, size, size), align_corners=False)
    out = F.grid_sample(flow.float().reshape(b, k * 2, h, w), grid, mode="bilinear", padding_mode="border",
                        align_corners=False).reshape(b, k, 2, size, size)
    sx = torch.where(flipped, -1.0, 1.0).to(out) * size / (bw * w)
    sy = size / (bh * h)
    return torch.stack([out[:, :, 0] * sx.view(b, 1, 1, 1), out[:, :, 1] * sy.view(b, 1, 1, 1).to(out)], dim=2)
