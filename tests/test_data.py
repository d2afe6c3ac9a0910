import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from conftest import CIFAR_NPZ
from harness.core.errors import DataError
from harness.data.dataset import batch_indices
from harness.data.sources import cifar10, fashion_mnist, load_npz, npz, read_idx


def _write_idx(path, arr, compress=False):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if compress:
        raw = gzip.compress(raw)
        path = str(path) + ".gz"
    with open(path, "wb") as f:
        f.write(raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip(tmp_path, compress):
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 255, (20, 28, 28)), rng.integers(0, 255, (10, 28, 28))
    ytr, yte = rng.integers(0, 10, 20), rng.integers(0, 10, 10)
    for name, a in [("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                    ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)]:
        _write_idx(tmp_path / name, a, compress)
    ds = fashion_mnist(str(tmp_path))
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert np.array_equal(ds.x_train[:, 0].numpy(), xtr) and np.array_equal(ds.y_test.numpy(), yte)


def test_idx_truncated(tmp_path):
    p = tmp_path / "x"
    _write_idx(p, np.zeros((4, 3, 3)))
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_missing_dir_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=f"looked in {tmp_path / 'nope'}.*apt-get install dataset-fashion-mnist"):
        fashion_mnist(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        cifar10(str(tmp_path / "nope"))


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"x", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 255, (n, 3072)).astype(np.uint8), b"filenames": [b"f"] * n}


def test_cifar_batches_layout(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = [_cifar_batch(6, i) for i in range(6)]
    for i in range(5):
        (root / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batches[i], protocol=2))
    (root / "test_batch").write_bytes(pickle.dumps(batches[5], protocol=2))
    ds = cifar10(str(tmp_path))
    assert ds.x_train.shape == (30, 3, 32, 32)
    assert np.array_equal(ds.x_train[6:12].reshape(6, -1).numpy(), batches[1][b"data"])
    assert ds.y_test.tolist() == batches[5][b"labels"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/sslbench_pwned",))


def test_cifar_batch_with_pickle_payload_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(5):
        (root / f"data_batch_{i + 1}").write_bytes(pickle.dumps(_cifar_batch(4, i)))
    evil = _cifar_batch(4, 9)
    evil[b"extra"] = _Evil()
    (root / "test_batch").write_bytes(pickle.dumps(evil))
    if os.path.exists("/tmp/sslbench_pwned"):
        os.unlink("/tmp/sslbench_pwned")
    with pytest.raises(DataError, match="refusing to load.*pickle payload"):
        cifar10(str(tmp_path))
    assert not os.path.exists("/tmp/sslbench_pwned")


def test_npz_roundtrip_and_corrupt(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=rng.integers(0, 255, (8, 32, 32, 3)).astype(np.uint8), y_train=np.arange(8) % 3,
             x_test=rng.integers(0, 255, (4, 32, 32, 3)).astype(np.uint8), y_test=np.arange(4) % 3)
    ds = npz(str(p))
    assert ds.x_train.shape == (8, 3, 32, 32) and ds.num_classes == 3
    bad = tmp_path / "bad.npz"
    bad.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match="corrupt"):
        load_npz(bad, "bad")
    obj = tmp_path / "obj.npz"
    np.savez(obj, x_train=np.array([object()], dtype=object), y_train=[0], x_test=[0], y_test=[0])
    with pytest.raises(DataError):
        load_npz(obj, "obj")
    missing = tmp_path / "m.npz"
    np.savez(missing, x_train=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DataError, match="lacks y_train"):
        load_npz(missing, "m")


@pytest.mark.skipif(not os.path.exists(CIFAR_NPZ), reason="shared CIFAR-10 npz not present")
def test_shared_cifar10_npz():
    ds = cifar10(CIFAR_NPZ)
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert np.allclose(ds.mean, (0.4914, 0.4822, 0.4465), atol=2e-3)


def test_batch_indices_are_epoch_permutations():
    n, b = 100, 10
    seen = torch.cat([batch_indices(n, b, s, seed=1) for s in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    assert torch.equal(batch_indices(n, b, 13, 1), batch_indices(n, b, 13, 1))
    assert not torch.equal(batch_indices(n, b, 3, 1), batch_indices(n, b, 13, 1))


def _folder(root, sizes, mode="L", split="val"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for sp in ("train", split):
        for c in ("a", "b"):
            d = root / sp / c
            d.mkdir(parents=True, exist_ok=True)
            for i, (w, h) in enumerate(sizes):
                px = rng.integers(0, 255, (h, w) if mode == "L" else (h, w, 3)).astype(np.uint8)
                Image.fromarray(px, mode).save(d / f"{i}.png")
    return root


def test_an_image_folder_keeps_its_native_size_and_grayscale_and_says_so(tmp_path, capsys):
    from PIL import Image

    from harness.data.sources import imagefolder

    root = _folder(tmp_path / "g", [(28, 28)] * 3)
    ds = imagefolder(str(root))
    assert tuple(ds.x_train.shape) == (6, 1, 28, 28) and tuple(ds.x_test.shape) == (6, 1, 28, 28)
    with Image.open(root / "train" / "b" / "2.png") as im:            # the pixels themselves, untouched
        assert torch.equal(ds.x_train[5, 0], torch.from_numpy(np.array(im)))
    err = capsys.readouterr().err
    assert "native size 28x28" in err and "grayscale (1 channel)" in err and "6 train / 6 val" in err
    # test/ is the evaluation split when there is no val/; RGB stays 3 channels; data.image_size resizes
    rgb = imagefolder(str(_folder(tmp_path / "c", [(20, 20)] * 2, mode="RGB", split="test")), image_size=16)
    assert tuple(rgb.x_test.shape) == (4, 3, 16, 16)
    assert "resized to 16x16" in capsys.readouterr().err
    # one shared non-square size: a centre square at the short side; mixed sizes: 64, said
    assert imagefolder(str(_folder(tmp_path / "r", [(30, 24)] * 2))).image_size == 24
    mixed = imagefolder(str(_folder(tmp_path / "m", [(28, 28), (40, 40)])))
    assert mixed.image_size == 64 and "sizes differ (28x28 .. 40x40)" in capsys.readouterr().err
