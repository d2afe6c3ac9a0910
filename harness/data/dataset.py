"""The dataset every loader returns, and the seeded batch order of training.

An :class:`ImageDataset` holds uint8 images (N, C, H, W) for TRAIN and TEST with int64 labels;
its per-channel statistics come from TRAIN only. The images are an image store
(:mod:`harness.data.store`): a tensor in memory, or, for an image folder larger than
``data.memory_cap_mb``, a :class:`~harness.data.store.FolderImages` that decodes files on demand;
the labels are always in memory. Loaders for the standard on-disk layouts live in
:mod:`harness.data.sources`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import DataError
from harness.data.store import CHUNK_VALUES, FolderImages, is_streamed, iter_batches, take
from harness.data.store import nbytes as store_nbytes

MAX_CLASSES = 100_000   # more "classes" than this: the labels are not class indices


@dataclass(frozen=True)
class DomainSpec:
    """Which of a dataset's classes form the two image domains of unpaired translation
    (``harness.data.domains``): domain 0 = A (the source), 1 = B (the target)."""

    of_class: tuple[int, ...]     # the domain of each class (len = num_classes)
    names: tuple[str, str]        # what A and B are called (class names, or the folders' A / B)
    mode: str                     # "classes": selected by class labels (label-using) | "folders": trainA/ trainB/ layout


@dataclass
class ImageDataset:
    name: str
    x_train: torch.Tensor | FolderImages  # uint8 (N, C, H, W): an image store (harness.data.store)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor | FolderImages
    y_test: torch.Tensor
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    # video clips (harness.data.video): the T frames of a clip stacked on the channel axis, (N, T*C, H, W);
    # channels per frame = channels // frames. 1 for images.
    frames: int = 1
    domains: DomainSpec | None = None     # two image domains (unpaired translation; harness.data.domains), if any
    # state variables per sample (harness.data.atari: an Atari game's RAM variables), int64 (N,) each, for the
    # state_probe protocol; empty for images
    state_train: dict[str, torch.Tensor] = field(default_factory=dict)
    state_test: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        for nm in ("x_train", "x_test"):
            x = getattr(self, nm)
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise DataError(f"{self.name}: {nm} must be uint8 (N, C, H, W), got {tuple(x.shape)} {x.dtype}")
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise DataError(f"{self.name}: images and labels differ in length ({self.source})")
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise DataError(f"{self.name}: {self.num_classes} classes is not a class count ({self.source}); "
                            "labels must be class indices 0..K-1")
        for split, y in (("train", self.y_train), ("test", self.y_test)):
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DataError(f"{self.name}: {split} labels span {int(y.min())}..{int(y.max())}, outside the "
                                f"{self.num_classes} classes 0..{self.num_classes - 1} ({self.source}); fix the labels")
        if len(self.x_train) == 0:
            raise DataError(f"{self.name}: the training split is empty ({self.source})")
        if self.frames < 1 or self.x_train.shape[1] % self.frames:
            raise DataError(f"{self.name}: {self.x_train.shape[1]} channels are not {self.frames} frames of equal "
                            f"channels ({self.source})")
        for split, states, n in (("train", self.state_train, len(self.y_train)), ("test", self.state_test, len(self.y_test))):
            bad = [k for k, v in states.items() if v.dtype != torch.int64 or tuple(v.shape) != (n,)]
            if bad:
                raise DataError(f"{self.name}: {split} state variable(s) {', '.join(bad)} must be int64 with one value "
                                f"per image ({n}) ({self.source})")
        if set(self.state_train) != set(self.state_test):
            raise DataError(f"{self.name}: the train and test splits have different state variables ({self.source})")
        if not self.mean:
            # per-channel statistics of the TRAIN split (never the test split)
            self.mean, self.std = channel_stats(self.x_train, every=max(1, len(self.x_train) // 10000))

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    @property
    def streamed(self) -> bool:
        """Whether the images are read from disk (an image folder over ``data.memory_cap_mb``)."""
        return is_streamed(self.x_train) or is_streamed(self.x_test)

    @property
    def nbytes(self) -> int:
        """The decoded size of both splits' images."""
        return store_nbytes(self.x_train) + store_nbytes(self.x_test)

    def materialised(self) -> "ImageDataset":
        """The same dataset with every image decoded into memory (itself when it is in memory)."""
        if not self.streamed:
            return self
        mem = [x.materialise() if is_streamed(x) else x for x in (self.x_train, self.x_test)]
        return ImageDataset(self.name, mem[0], self.y_train, mem[1], self.y_test, self.num_classes,
                            self.class_names, self.source, self.mean, self.std, frames=self.frames,
                            domains=self.domains, state_train=self.state_train, state_test=self.state_test)

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise DataError(f"unknown split '{split}'; valid choices: train, test")

    def subset(self, train: int | None, test: int | None, seed: int = 0) -> "ImageDataset":
        """``train`` / ``test`` images of each split, stratified by class and seeded
        (:func:`stratified_take`): a folder ordered by class gives every class its share."""
        if not train and not test:
            return self
        tr = stratified_take(self.y_train, train, seed) if train else slice(None)
        te = stratified_take(self.y_test, test, seed + 1) if test else slice(None)
        return ImageDataset(
            self.name, take(self.x_train, tr), self.y_train[tr], take(self.x_test, te), self.y_test[te],
            self.num_classes, self.class_names, self.source, self.mean, self.std, frames=self.frames,
            domains=self.domains, state_train={k: v[tr] for k, v in self.state_train.items()},
            state_test={k: v[te] for k, v in self.state_test.items()},
        )

    def validation_split(self, n: int, seed: int = 0) -> "ImageDataset":
        """``n`` TRAIN images (stratified by class, seeded) become the evaluation split and leave TRAIN;
        the TEST split is dropped unread. For tuning a preset or a method without ever selecting on the
        test split (``data.validation``). Statistics are recomputed from the remaining TRAIN images."""
        if n >= len(self.y_train):
            raise DataError(f"{self.name}: data.validation={n} holds out every one of the {len(self.y_train)} "
                            "training images; choose fewer")
        val = stratified_take(self.y_train, n, seed)
        keep = torch.ones(len(self.y_train), dtype=torch.bool)
        keep[val] = False
        tr = torch.nonzero(keep).flatten()
        return ImageDataset(
            self.name, take(self.x_train, tr), self.y_train[tr], take(self.x_train, val), self.y_train[val],
            self.num_classes, self.class_names, f"{self.source} (validation: {n} TRAIN images held out, seed {seed})",
            frames=self.frames, domains=self.domains, state_train={k: v[tr] for k, v in self.state_train.items()},
            state_test={k: v[val] for k, v in self.state_train.items()},
        )

    def resized(self, size: int) -> "ImageDataset":
        """Every image resized to ``size`` x ``size`` (bilinear, antialiased); statistics recomputed."""
        if self.streamed:
            raise DataError(f"{self.name}: a dataset streamed from disk is not resized after loading; its loader "
                            f"decodes at data.image_size ({self.source})")

        def rs(x: torch.Tensor) -> torch.Tensor:
            out = [F.interpolate(x[i:i + 4096].float(), size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False) for i in range(0, len(x), 4096)]
            return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8) if out else x.new_zeros((0, x.shape[1], size, size))

        return ImageDataset(self.name, rs(self.x_train), self.y_train, rs(self.x_test), self.y_test, self.num_classes,
                            self.class_names, self.source, frames=self.frames,
                            domains=self.domains, state_train=self.state_train, state_test=self.state_test)

    def fingerprint(self) -> str:
        """A cheap content hash for caches and run identity: shapes plus a strided sample of pixels
        (about 65536 values of each split, and the labels). The same images give the same value
        whether they are held in memory or streamed from disk (a streamed store decodes only the
        images the sample touches, once)."""
        h = hashlib.sha256()
        if self.frames != 1:        # (N, 8*3, H, W) clips are not (N, 24*1, H, W) ones (images: unchanged)
            h.update(f"frames={self.frames}".encode())
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str(tuple(t.shape)).encode())
            stride = max(1, t.numel() // 65536)
            h.update(t.flat_sample(stride) if is_streamed(t) else t.reshape(-1)[::stride].numpy().tobytes())
        for states in (self.state_train, self.state_test):     # state variables (none for images: unchanged)
            for k in sorted(states):
                h.update(k.encode() + states[k].numpy().tobytes())
        return h.hexdigest()[:16]


def channel_stats(x, every: int = 1) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (unbiased, at least 1e-3) in [0, 1] units of images ``x[::every]``
    (any image store), read in chunks. Computed from exact integer sums, so the result does not
    depend on the chunking: a folder held in memory and the same folder streamed get the same
    statistics, bit for bit."""
    c = x.shape[1]
    s, ss, count = [0] * c, [0] * c, 0
    sample = torch.arange(0, len(x), every)
    per = max(1, int(np.prod(tuple(x.shape[1:]))))
    for _, xb in iter_batches(x, sample.split(max(1, CHUNK_VALUES // per))):
        s = [a + int(b) for a, b in zip(s, xb.sum(dim=(0, 2, 3), dtype=torch.int64))]
        xi = xb.to(torch.int32)
        ss = [a + int(b) for a, b in zip(ss, (xi * xi).sum(dim=(0, 2, 3), dtype=torch.int64))]
        count += xb.shape[0] * xb.shape[2] * xb.shape[3]
    if count == 0:
        return (0.0,) * c, (1.0,) * c
    mean = tuple(a / count / 255.0 for a in s)
    var = [(b * count - a * a) / (count * (count - 1)) / 65025.0 if count > 1 else 0.0 for a, b in zip(s, ss)]
    return mean, tuple(max(v ** 0.5, 1e-3) for v in var)


def stratified_take(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices (sorted) of ``n`` samples: each class's share of ``n`` (largest remainder), drawn at
    random within the class by a generator seeded with ``seed``. All indices when ``n >= len``."""
    labels = torch.as_tensor(labels).long()
    total = len(labels)
    if n >= total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels).double()
    share = counts * n / total
    take = share.floor().long()
    rest = n - int(take.sum())
    if rest > 0:   # the largest remainders get one more (ties: lower class index)
        order = sorted(range(len(counts)), key=lambda c: (-(share[c] - take[c]).item(), c))
        for c in order[:rest]:
            take[c] += 1
    picked = []
    for c in range(len(counts)):
        if take[c] > 0:
            members = torch.nonzero(labels == c).flatten()
            picked.append(members[torch.randperm(len(members), generator=g)[: int(take[c])]])
    return torch.sort(torch.cat(picked)).values


def data_roots(data_dir: str | None) -> list[Path]:
    if data_dir:
        return [Path(data_dir).expanduser()]
    roots = []
    if os.environ.get("SSLBENCH_DATA_DIR"):
        roots.append(Path(os.environ["SSLBENCH_DATA_DIR"]).expanduser())
    roots += [Path("data"), Path("~/.cache/sslbench/data").expanduser()]
    return roots


def to_tensor_nchw(x: np.ndarray) -> torch.Tensor:
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if x.ndim != 4:
        raise DataError(f"expected images of shape (N, H, W[, C]), got {x.shape}")
    return torch.from_numpy(np.array(x, dtype=np.uint8, order="C", copy=True))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of training batch ``step``: epoch-wise seeded permutations, drop-last.

    A pure function of (n, batch_size, step, seed), so a resumed run sees exactly the batches
    an uninterrupted run would.
    """
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[i * batch_size : (i + 1) * batch_size]
