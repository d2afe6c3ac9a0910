"""Image stores: what ``ImageDataset.x_train`` / ``x_test`` hold.

An image store is uint8 images (N, C, H, W) with ``len``, ``shape``, ``dtype``, ``ndim`` and
indexing (an int, a slice, a list or an index tensor gives a decoded uint8 tensor). Two kinds
satisfy it:

* a ``torch.Tensor`` held in memory (every loader; an image folder under ``data.memory_cap_mb``);
* :class:`FolderImages`, image files decoded on demand (an image folder over the cap): indexing
  decodes in this process (a few images); bulk reads go through :func:`iter_batches`, which
  decodes in ``data.workers`` worker processes (a ``torch.utils.data.DataLoader`` whose batch
  sampler yields exactly the requested index batches, in order).

Code that reads many images goes through three functions, so it never special-cases a store:
:func:`take` (a subset: a lazy store stays lazy), :func:`iter_batches` (batches in order, decoded
in workers when the store streams) and :func:`nbytes` (the decoded size).
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from harness.core.errors import DataError

Index = Union[torch.Tensor, slice, Sequence[int]]
CHUNK_VALUES = 1 << 22     # pixel values per chunk of a bulk read (stats, fingerprint, materialising)
MAX_AUTO_WORKERS = 8


def resolve_workers(workers: int | None) -> int:
    """``data.workers``: None = min(8, the CPUs this process may use, shared with the other training
    processes of this machine under torchrun)."""
    if workers is not None:
        return int(workers)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:    # not Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(MAX_AUTO_WORKERS, cpus // local))


class FolderImages:
    """uint8 (N, C, H, W) images decoded from files on demand by ``decode(path, size, gray)`` (an
    array (size, size) or (size, size, 3)); ``workers`` processes decode bulk reads."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, files: Sequence[str], size: int, gray: bool,
                 decode: Callable[[str, int, bool], np.ndarray], workers: int | None = None):
        self.files = [str(f) for f in files]
        self.size, self.gray, self.decode = int(size), bool(gray), decode
        self.workers = resolve_workers(workers)
        self._samples: dict[int, bytes] = {}

    # ------------------------------------------------------------------ the tensor-like surface
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), 1 if self.gray else 3, self.size, self.size))

    def __len__(self) -> int:
        return len(self.files)

    def numel(self) -> int:
        n, c, h, w = self.shape
        return n * c * h * w

    def __repr__(self) -> str:
        return f"FolderImages({tuple(self.shape)}, {self.readers})"

    @property
    def readers(self) -> str:
        """Who decodes bulk reads, in words."""
        return f"by {self.workers} worker processes" if self.workers else "in the main process"

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` decoded, (C, H, W)."""
        a = self.decode(self.files[i], self.size, self.gray)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(np.array(a, dtype=np.uint8, order="C"))   # a copy: decoders may return read-only arrays

    def indices(self, key: Index) -> torch.Tensor:
        """``key`` (a slice, a list, an index or bool tensor) as int64 indices, bounds-checked."""
        n = len(self)
        if isinstance(key, slice):
            return torch.arange(*key.indices(n))
        idx = torch.as_tensor(key)
        if idx.dtype == torch.bool:
            return torch.nonzero(idx).flatten()
        idx = idx.long().reshape(-1)
        idx = torch.where(idx < 0, idx + n, idx)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"index out of range for {n} images")
        return idx

    def __getitem__(self, key):
        if isinstance(key, tuple):                         # x[i, c], x[idx, :, 2:4]: decode, then index the rest
            first = self[key[0]]
            return first[key[1:]] if _is_int(key[0]) else first[(slice(None), *key[1:])]
        if _is_int(key):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} images")
            return self.image(i % len(self))
        idx = self.indices(key)
        if len(idx) == 0:
            return torch.zeros((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.stack([self.image(int(i)) for i in idx])

    # ------------------------------------------------------------------ lazy operations
    def subset(self, key: Index) -> "FolderImages":
        """The images ``key`` selects, still on disk."""
        return FolderImages([self.files[int(i)] for i in self.indices(key)], self.size, self.gray, self.decode,
                            self.workers)

    def materialise(self) -> torch.Tensor:
        """Every image decoded into one uint8 tensor (by the workers)."""
        out = torch.empty(tuple(self.shape), dtype=torch.uint8)
        for idx, x in iter_batches(self, chunks(self)):
            out[idx] = x
        return out

    def flat_sample(self, stride: int) -> bytes:
        """``x.reshape(-1)[::stride]`` as bytes without decoding more than the images it touches
        (what :meth:`ImageDataset.fingerprint` hashes; memoised: the files are read once)."""
        if stride not in self._samples:
            per = self.numel() // max(1, len(self))
            pos = torch.arange(0, self.numel(), stride)
            img, off = pos // per, pos % per
            uniq, inv = torch.unique(img, return_inverse=True)
            out = torch.empty(len(pos), dtype=torch.uint8)
            lo = 0
            for _, x in iter_batches(self, uniq.split(max(1, CHUNK_VALUES // max(1, per)))):
                hi = lo + len(x)
                sel = (inv >= lo) & (inv < hi)
                out[sel] = x.reshape(len(x), -1)[inv[sel] - lo, off[sel]]
                lo = hi
            self._samples[stride] = out.numpy().tobytes()
        return self._samples[stride]


def _is_int(key) -> bool:
    return isinstance(key, (int, np.integer)) and not isinstance(key, bool) or \
        torch.is_tensor(key) and key.ndim == 0 and not key.dtype.is_floating_point and key.dtype != torch.bool


def is_streamed(x) -> bool:
    """Whether ``x`` is a store read from disk (not a tensor in memory)."""
    return isinstance(x, FolderImages)


def nbytes(x) -> int:
    """The decoded size of a store in bytes."""
    return x.numel() * (1 if x.dtype == torch.uint8 else x.element_size())


def take(x, key: Index):
    """The images ``key`` selects: ``x[key]`` for a tensor, a lazy subset for a streamed store."""
    if isinstance(key, slice) and key == slice(None):
        return x
    return x.subset(key) if is_streamed(x) else x[key]


def chunks(x, values: int = CHUNK_VALUES) -> list[slice]:
    """Slices covering ``x`` in order, each of about ``values`` pixel values (at least one image)."""
    n = len(x)
    per = max(1, int(np.prod(tuple(x.shape[1:]))))
    step = max(1, values // per)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def iter_batches(x, batches: Iterable[Index], pin_memory: bool = False) -> Iterator[tuple[Index, torch.Tensor]]:
    """``(key, x[key])`` for each key of ``batches``, in order. A tensor is indexed directly (no copy
    for a slice); a streamed store is decoded by its ``workers`` processes, which read ahead of the
    consumer (the keys are drawn from ``batches`` ahead of time: it must not depend on what was
    yielded); its keys come back as int64 index tensors. Close the generator (``with
    contextlib.closing(...)``) when leaving it early: that stops the workers."""
    if not is_streamed(x):
        for key in batches:
            yield key, x[key]
        return
    workers = 0 if multiprocessing.current_process().daemon else x.workers   # a daemon may not have children
    loader = torch.utils.data.DataLoader(
        _Files(x), batch_sampler=_IndexBatches(x, batches), num_workers=workers, collate_fn=_collate,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(0),   # the global RNG stays untouched
        prefetch_factor=4 if workers else None)
    it = iter(loader)
    try:
        for idx, images, err in it:
            if err:
                raise DataError(err)
            yield idx, images if images is not None else torch.zeros((0, *x.shape[1:]), dtype=torch.uint8)
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class _Files(torch.utils.data.Dataset):
    """What a worker decodes: image ``i`` of a store, or the one-line error it raised."""

    def __init__(self, store: FolderImages):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        try:
            return i, self.store.image(i), ""
        except DataError as e:
            return i, None, str(e)


class _IndexBatches:
    """A batch sampler yielding exactly the given index batches (lists of ints), in order."""

    def __init__(self, store: FolderImages, batches: Iterable[Index]):
        self.store, self.batches = store, batches

    def __iter__(self):
        for key in self.batches:
            yield self.store.indices(key).tolist()


def _collate(items):
    err = next((e for _, _, e in items if e), "")
    if err or not items:
        return torch.empty(0, dtype=torch.long), None, err
    return torch.tensor([i for i, _, _ in items], dtype=torch.long), torch.stack([x for _, x, _ in items]), ""
