"""Datasets read from their standard on-disk layouts into :class:`ImageDataset` (uint8 (N, C, H, W)).

* Fashion-MNIST / MNIST: the official IDX files (``.gz`` or not). Debian's package
  ``dataset-fashion-mnist`` installs them at ``/usr/share/datasets/fashion-mnist/``.
* CIFAR-10/100: the official ``cifar-10-batches-py`` / ``cifar-100-python`` folders, read with a
  restricted unpickler that only rebuilds plain containers and numpy arrays (a batch file that
  carries any other pickle payload is refused), or an ``.npz`` with
  ``x_train, y_train, x_test, y_test``.
* ``npz``: any such ``.npz`` file (``data.data_dir`` is the file).
* ``imagefolder``: ImageNet-style ``root/{train,val}/<class>/<image>`` (``test/`` when there is no
  ``val/``), at the images' native size when they share one (else 64; ``data.image_size`` resizes),
  grayscale kept as one channel; held in memory when its decoded images fit in ``data.memory_cap_mb``,
  else streamed from disk (decoded by ``data.workers`` processes as batches are read).
* ``unpaired``: the unpaired-translation layout ``root/{trainA,trainB,testA,testB}/<image>`` (CycleGAN /
  CUT datasets); the two folders are two image domains (:mod:`harness.data.domains`).
* ``synthetic``: small generated data for tests only.
* Video clips (``clips`` .npz, ``clipfolder``, the generated ``moving_fashion_mnist``, ``synthetic_clips``):
  an ImageDataset whose channels are the frames' channels stacked, ``frames = T`` (``harness.data.video``).

Nothing is downloaded: a missing dataset is a :class:`DataError` saying where we looked and
how to get it. Each loader registers itself in :data:`DATASETS`.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from harness.core.errors import DataError
from harness.core.registry import Registry
from harness.core.schema import DataConfig
from harness.data import video
from harness.data.dataset import DomainSpec, ImageDataset, data_roots, to_tensor_nchw
from harness.data.domains import UNPAIRED, select_domains
from harness.data.store import FolderImages, nbytes

DATASETS: Registry = Registry("dataset")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable ({e}); re-download or reinstall the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes; re-download the dataset")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions); re-download the dataset")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({data.size} of {int(np.prod(dims))} bytes); re-download it")
    return data.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def _load_idx_dataset(name: str, data_dir: str | None, default_dirs: list[Path], how: str,
                      class_names: list[str]) -> ImageDataset:
    roots = data_roots(data_dir) if data_dir else default_dirs + [r / name.replace("_", "-") for r in data_roots(None)]
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for root in roots:
        paths = [_find_idx(root, s) for s in stems]
        if all(paths):
            xtr, ytr, xte, yte = (read_idx(p) for p in paths)
            return ImageDataset(name, to_tensor_nchw(xtr), torch.from_numpy(ytr.astype(np.int64)),
                                to_tensor_nchw(xte), torch.from_numpy(yte.astype(np.int64)),
                                10, class_names, source=str(root))
    looked = ", ".join(str(r) for r in roots)
    raise DataError(f"{name} not found (looked in {looked} for train-images-idx3-ubyte[.gz] etc.); {how}")


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


FASHION_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


@DATASETS.register("fashion_mnist")
def fashion_mnist(data_dir: str | None = None, **_) -> ImageDataset:
    return _load_idx_dataset(
        "fashion_mnist", data_dir, [FASHION_DIR],
        "install it with 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu) or put the four official "
        "IDX files from the Fashion-MNIST repository in a folder and pass data.data_dir=FOLDER",
        FASHION_CLASSES,
    )


@DATASETS.register("mnist")
def mnist(data_dir: str | None = None, **_) -> ImageDataset:
    return _load_idx_dataset(
        "mnist", data_dir, [Path("/usr/share/datasets/mnist")],
        "put the four official MNIST IDX files in a folder and pass data.data_dir=FOLDER",
        [str(i) for i in range(10)],
    )


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays and plain containers; anything else is refused.

    The official CIFAR batches are pickled dicts of bytes/str keys, lists of ints and one
    uint8 ndarray. A pickle can run arbitrary code through ``find_class`` (``os.system``,
    ``builtins.eval``...); we allow only the few numpy names needed to rebuild an array.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused pickle global {module}.{name}")


def safe_unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{path}: refusing to load, the file carries a pickle payload that is not plain data ({e}); "
            "replace it with the official CIFAR download"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as e:
        raise DataError(f"{path}: corrupt or truncated CIFAR batch ({type(e).__name__}); re-download it") from None


def _batch_arrays(d, path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a CIFAR batch (expected a dict)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    lk = label_key.decode()
    if "data" not in d or lk not in d:
        raise DataError(f"{path}: not a CIFAR batch (missing 'data' or '{lk}')")
    x = np.asarray(d["data"])
    y = np.asarray(d[lk], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise DataError(f"{path}: corrupt CIFAR batch (data {x.shape} {x.dtype}, {len(y)} labels)")
    return x.reshape(-1, 3, 32, 32), y


def load_npz(path: Path, name: str, num_classes: int | None = None) -> ImageDataset:
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
        raise DataError(f"{path}: corrupt or unreadable .npz ({type(e).__name__}: {str(e)[:80]}); re-create or re-download it") from None
    for k in ("x_train", "x_test"):
        if arrs[k].dtype != np.uint8:
            raise DataError(f"{path}: {k} must be uint8 images, got {arrs[k].dtype}")
    for k in ("y_train", "y_test"):
        if not np.issubdtype(arrs[k].dtype, np.integer):
            raise DataError(f"{path}: {k} must hold integer class indices, got {arrs[k].dtype}")
    ytr = arrs["y_train"].astype(np.int64).reshape(-1)
    yte = arrs["y_test"].astype(np.int64).reshape(-1)
    k = num_classes or int(max(ytr.max(initial=0), yte.max(initial=0)) + 1)
    return ImageDataset(name, to_tensor_nchw(arrs["x_train"]), torch.from_numpy(ytr),
                        to_tensor_nchw(arrs["x_test"]), torch.from_numpy(yte), k, names, source=str(path))


def _load_cifar(name: str, data_dir: str | None, folder: str, npz_name: str, train_files: list[str],
                test_file: str, label_key: bytes, num_classes: int) -> ImageDataset:
    roots = data_roots(data_dir)
    for root in roots:
        if root.is_file() and root.suffix == ".npz":
            return load_npz(root, name, num_classes)
        for cand in (root / folder, root):
            if all((cand / f).exists() for f in train_files + [test_file]):
                xs, ys = zip(*(_batch_arrays(safe_unpickle(cand / f), cand / f, label_key) for f in train_files))
                xte, yte = _batch_arrays(safe_unpickle(cand / test_file), cand / test_file, label_key)
                return ImageDataset(name, torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)),
                                    torch.from_numpy(xte), torch.from_numpy(yte), num_classes, source=str(cand))
        if (root / npz_name).exists():
            return load_npz(root / npz_name, name, num_classes)
    looked = ", ".join(str(r) for r in roots)
    raise DataError(
        f"{name} not found (looked for {folder}/ or {npz_name} in {looked}); download and extract the official "
        f"python version of {name.upper().replace('CIFAR', 'CIFAR-')} and pass data.data_dir=FOLDER (or a .npz file)"
    )


@DATASETS.register("cifar10")
def cifar10(data_dir: str | None = None, **_) -> ImageDataset:
    return _load_cifar("cifar10", data_dir, "cifar-10-batches-py", "cifar10.npz",
                       [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10)


@DATASETS.register("cifar100")
def cifar100(data_dir: str | None = None, **_) -> ImageDataset:
    return _load_cifar("cifar100", data_dir, "cifar-100-python", "cifar100.npz", ["train"], "test", b"fine_labels", 100)


@DATASETS.register("npz")
def npz(data_dir: str | None = None, **_) -> ImageDataset:
    if not data_dir:
        raise DataError("dataset 'npz' needs data.data_dir=FILE.npz (arrays x_train, y_train, x_test, y_test)")
    p = Path(data_dir).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: no such .npz file; pass data.data_dir=FILE.npz")
    return load_npz(p, p.stem)


IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _folder_files(root: Path, classes: list[str] | None) -> tuple[list[tuple[Path, int]], list[str]]:
    classes = classes or sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [(f, ci) for ci, c in enumerate(classes) if (root / c).is_dir()
             for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMG_EXT]
    if not files:
        raise DataError(f"{root}: no images found in class sub-folders (one folder per class, images with "
                        f"extensions {', '.join(sorted(IMG_EXT))})")
    return files, classes


def _survey(files: list[tuple[Path, int]]) -> tuple[set[tuple[int, int]], bool]:
    """The image sizes and whether every image is grayscale (headers only: no pixels decoded)."""
    from PIL import Image

    sizes, gray = set(), True
    for f, _ in files:
        try:
            with Image.open(f) as im:
                sizes.add(im.size)
                gray = gray and im.mode in GRAY_MODES
        except OSError as e:
            raise DataError(f"{f}: unreadable image ({e}); remove or replace it") from None
    return sizes, gray


def decode_image(path: str, size: int, gray: bool) -> np.ndarray:
    """One image file as uint8 (size, size) (``gray``) or (size, size, 3): converted to L / RGB,
    centre-cropped to a square at its short side, resized (bilinear) when that side is not ``size``.
    The one decode of image folders, in memory or streamed (it runs in the loader's worker processes)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if gray else "RGB")
            w, h = im.size
            s = min(w, h)  # centre square crop, then resize (none when the side is already `size`)
            if (w, h) != (s, s):
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            if s != size:
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: unreadable image ({e}); remove or replace it") from None


def _mb(n_bytes: int) -> str:
    mb = n_bytes / 2**20
    return f"{mb:,.0f} MB" if mb >= 100 else f"{mb:.3g} MB"


DEFAULT_FOLDER_SIZE = 64   # the side used when a folder's images do not share one size


@DATASETS.register("imagefolder")
def imagefolder(data_dir: str | None = None, image_size: int | None = None, memory_cap_mb: float | None = None,
                workers: int | None = None, **_) -> ImageDataset:
    """``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>`` (or ``ROOT/test/``): the
    evaluation split is val/ (test/ when there is no val/); the classes are the sub-folders of
    train/ (sorted; the same names in val/). Images are centre-cropped to a square and kept at their
    native side when they all share one (``data.image_size`` resizes); grayscale folders stay one
    channel, anything else is RGB (:func:`decode_image`). A folder whose decoded images fit in
    ``memory_cap_mb`` (``data.memory_cap_mb``) is decoded into memory; a larger one is streamed
    from disk (:class:`~harness.data.store.FolderImages`, decoded by ``workers`` processes per read).
    One line at load says what was done and which of the two was chosen."""
    if not data_dir:
        raise DataError("dataset 'imagefolder' needs data.data_dir=ROOT with ROOT/train/<class>/* and ROOT/val/<class>/*")
    root = Path(data_dir).expanduser()
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(f"{root}: expected sub-folders train/ and val/ (or test/), each with one folder per class")
    train_files, classes = _folder_files(root / "train", None)
    test_files, _ = _folder_files(test_dir, classes)
    return _files_dataset(root, train_files, test_files, classes, test_dir.name, image_size, memory_cap_mb, workers)


def _files_dataset(root: Path, train_files: list[tuple[Path, int]], test_files: list[tuple[Path, int]],
                   classes: list[str], test_name: str, image_size: int | None, memory_cap_mb: float | None,
                   workers: int | None, **extra) -> ImageDataset:
    """An image folder's files (path, class) as a dataset: size chosen, held in memory or streamed, one line said."""
    sizes, gray = _survey(train_files + test_files)
    sides = {min(w, h) for w, h in sizes}
    if image_size:
        size, how = image_size, f"resized to {image_size}x{image_size} (data.image_size)"
    elif len(sides) == 1:
        size = sides.pop()
        how = f"native size {size}x{size}" + ("" if sizes == {(size, size)} else " (centre-cropped to a square)")
    else:
        size = DEFAULT_FOLDER_SIZE
        lo, hi = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
        how = (f"sizes differ ({lo[0]}x{lo[1]} .. {hi[0]}x{hi[1]}): centre-cropped and resized to {size}x{size} "
               f"(set data.image_size=N to choose)")
    xtr, xte = (FolderImages([str(f) for f, _ in fs], size, gray, decode_image, workers)
                for fs in (train_files, test_files))
    ytr, yte = (torch.tensor([ci for _, ci in fs], dtype=torch.int64) for fs in (train_files, test_files))
    cap = DataConfig.memory_cap_mb if memory_cap_mb is None else memory_cap_mb
    decoded = nbytes(xtr) + nbytes(xte)
    if decoded > cap * 2**20:
        where = f"streamed from disk {xtr.readers} (decoded {_mb(decoded)} > data.memory_cap_mb={cap:g})"
    else:
        xtr, xte = xtr.materialise(), xte.materialise()
        where = f"held in memory (decoded {_mb(decoded)} <= data.memory_cap_mb={cap:g})"
    print(f"sslbench: {root}: {len(ytr)} train / {len(yte)} {test_name} images, {len(classes)} classes, {how}, "
          + ("grayscale (1 channel)" if gray else "RGB (3 channels)") + f", {where}", file=sys.stderr)
    return ImageDataset(root.name, xtr, ytr, xte, yte, len(classes), classes, source=str(root), **extra)


@DATASETS.register(UNPAIRED)
def unpaired(data_dir: str | None = None, image_size: int | None = None, memory_cap_mb: float | None = None,
             workers: int | None = None, **_) -> ImageDataset:
    """The unpaired-translation layout of CycleGAN / CUT datasets: ``ROOT/trainA/``, ``ROOT/trainB/``,
    ``ROOT/testA/``, ``ROOT/testB/``, each a flat folder of images (sub-folders are not read). The two
    folders are the two domains (classes ``A`` and ``B``; :mod:`harness.data.domains`), read without any
    label. Sizes, grayscale, memory or streaming: as ``imagefolder``."""
    layout = "ROOT/trainA/, ROOT/trainB/, ROOT/testA/ and ROOT/testB/, each a folder of images"
    if not data_dir:
        raise DataError(f"dataset '{UNPAIRED}' needs data.data_dir=ROOT with {layout}")
    root = Path(data_dir).expanduser()
    missing = [d for d in ("trainA", "trainB", "testA", "testB") if not (root / d).is_dir()]
    if missing:
        raise DataError(f"{root}: no {', '.join(missing)} folder; the unpaired layout is {layout}")
    files = {}
    for d in ("trainA", "trainB", "testA", "testB"):
        files[d] = [(f, "AB".index(d[-1])) for f in sorted((root / d).iterdir()) if f.is_file() and f.suffix.lower() in IMG_EXT]
        if not files[d]:
            raise DataError(f"{root / d}: no images (domain {d[-1]} is empty); put the domain's images there "
                            f"(extensions {', '.join(sorted(IMG_EXT))})")
    return _files_dataset(root, files["trainA"] + files["trainB"], files["testA"] + files["testB"], ["A", "B"],
                          "test", image_size, memory_cap_mb, workers, domains=DomainSpec((0, 1), ("A", "B"), "folders"))


@DATASETS.register("synthetic")
def synthetic(data_dir: str | None = None, image_size: int | None = None, n_train: int = 512, n_test: int = 256,
              channels: int = 3, num_classes: int = 4, seed: int = 0, **_) -> ImageDataset:
    """Tests only: class-dependent coloured blobs on noise; learnable but not trivial."""
    size = image_size or 16
    g = torch.Generator().manual_seed(seed)

    def make(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        cx = (y.float() + 0.5) / num_classes * size
        blob = torch.exp(-((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - size / 2) ** 2) / (size / 3) ** 2)
        x = 0.6 * blob[:, None].expand(n, channels, size, size) + 0.4 * torch.rand(n, channels, size, size, generator=g)
        return (x.clamp(0, 1) * 255).to(torch.uint8), y

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return ImageDataset("synthetic", xtr, ytr, xte, yte, num_classes, source="generated")


# ----------------------------------------------------------------------------- video clips (harness.data.video)

@DATASETS.register("clips")
def clips(data_dir: str | None = None, **_) -> ImageDataset:
    """Video clips from an .npz: x_train / x_test uint8 (N, T, H, W[, C]), y_train / y_test."""
    if not data_dir:
        raise DataError("dataset 'clips' needs data.data_dir=FILE.npz (x_train / x_test uint8 clips (N, T, H, W, C), "
                        "y_train, y_test)")
    return video.load_clip_npz(data_dir)


@DATASETS.register("clipfolder")
def clipfolder(data_dir: str | None = None, **_) -> ImageDataset:
    """Video clips from ROOT/{train,val}/<class>/<clip>: a folder of frame images or <clip>.npy."""
    if not data_dir:
        raise DataError("dataset 'clipfolder' needs data.data_dir=ROOT with ROOT/train/<class>/<clip>/ (frame images) "
                        "or <clip>.npy, and ROOT/val/ (or test/) alike")
    return video.read_clip_folder(data_dir)


@DATASETS.register("moving_fashion_mnist")
def moving_fashion_mnist(data_dir: str | None = None, **_) -> ImageDataset:
    """Fashion-MNIST garments moving on a canvas, 8-frame 32-px clips (``data.data_dir``: where the
    Fashion-MNIST IDX files are, as for fashion_mnist); generated once and cached under
    $SSLBENCH_DATA_DIR (else ~/.cache/sslbench/data)/moving_fashion_mnist/."""
    return video.moving_fashion_mnist(fashion_mnist(data_dir), video.generated_dir() / "moving_fashion_mnist")


@DATASETS.register("synthetic_clips")
def synthetic_clips(**_) -> ImageDataset:
    """Tests only: moving squares whose side is the class."""
    return video.synthetic_clips()


@DATASETS.register("atari")
def atari(data_dir: str | None = None, game: str | None = None, train_frames: int | None = None,
          test_frames: int | None = None, collect_seed: int | None = None, **_) -> ImageDataset:
    """Frame stacks of an Atari game with its RAM state variables (``harness.data.atari``): generated by a
    seeded random policy on first use, cached under ``data.data_dir`` (or ~/.cache/sslbench/data)/atari/."""
    from harness.data.atari import load_atari  # gymnasium and ale-py load only for this dataset

    return load_atari(game, train_frames, test_frames, collect_seed, data_dir)


def load_dataset(cfg) -> ImageDataset:
    """Load ``cfg.data`` (a DataConfig) through the registry. A streamed folder whose subsets
    (``data.train_subset`` / ``test_subset``) fit in ``data.memory_cap_mb`` is then held in memory."""
    factory = DATASETS.get(cfg.name)
    ds = factory(data_dir=cfg.data_dir, image_size=cfg.image_size, memory_cap_mb=cfg.memory_cap_mb,
                 workers=cfg.workers, game=cfg.game, train_frames=cfg.train_frames, test_frames=cfg.test_frames,
                 collect_seed=cfg.collect_seed)
    if cfg.image_size and ds.image_size != cfg.image_size:   # every layout honours data.image_size
        ds = ds.resized(cfg.image_size)
    if cfg.domains:        # two image domains (translation): the dataset restricted to their classes
        ds = select_domains(ds, cfg.domains)
    if cfg.label:
        ds.name = cfg.label
    if cfg.validation:     # TRAIN images as the evaluation split: tuning never reads TEST
        ds = ds.validation_split(cfg.validation, cfg.subset_seed)
        ds.name = f"{ds.name}-val{cfg.validation}"
    ds = ds.subset(cfg.train_subset, cfg.test_subset, cfg.subset_seed)
    if ds.streamed and ds.nbytes <= cfg.memory_cap_mb * 2**20:
        print(f"sslbench: {ds.name}: the subsets ({len(ds.y_train)} train / {len(ds.y_test)} test images, decoded "
              f"{_mb(ds.nbytes)}) fit data.memory_cap_mb={cfg.memory_cap_mb:g}: held in memory", file=sys.stderr)
        ds = ds.materialised()
    return ds
