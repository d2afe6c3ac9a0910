"""Video clips as a dataset kind (issue 18): both layouts read the same clips, bad clips are one line,
OpenCV's Farnebäck flow has the motion's sign and size, a flow field follows its view's crop and
flip, and clip views draw one augmentation per clip."""

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.core.errors import DataError
from harness.data.dataset import ImageDataset
from harness.data.video import (
    clip_array,
    clip_modalities,
    crop_flow,
    farneback_flow,
    gray_frames,
    load_clip_npz,
    moving_clips,
    permute_frames,
    read_clip_folder,
    save_clip_npz,
    synthetic_clips,
)
from harness.data.views import ViewRecipe


def _clips(n, t=3, h=6, w=5, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, t, h, w, c), dtype=np.uint8)


def test_npz_layout_stacks_frames_on_channels(tmp_path):
    xtr, xte = _clips(4), _clips(2, seed=1)
    path = save_clip_npz(tmp_path / "c.npz", xtr, [0, 1, 2, 1], xte, [2, 0], ["a", "b", "c"])
    ds = load_clip_npz(path)
    assert ds.frames == 3 and ds.channels == 9 and tuple(ds.x_train.shape) == (4, 9, 6, 5)
    # frame t, channel c is channel t*C + c
    assert torch.equal(ds.x_train[1, 3 + 2], torch.from_numpy(xtr[1, 1, :, :, 2]))
    assert np.array_equal(clip_array(ds.x_test, 3), xte)
    assert ds.class_names == ["a", "b", "c"] and ds.y_train.tolist() == [0, 1, 2, 1]
    gray = load_clip_npz(save_clip_npz(tmp_path / "g.npz", xtr[..., 0], [0] * 4, xte[..., 0], [0, 0]))
    assert gray.frames == 3 and gray.channels == 3


def test_clip_folder_reads_frame_folders_and_npy_alike(tmp_path):
    from PIL import Image

    xtr, xte = _clips(4, t=3, h=8, w=8), _clips(2, t=3, h=8, w=8, seed=1)
    ytr, yte = [0, 0, 1, 1], [0, 1]
    for split, x, y in (("train", xtr, ytr), ("val", xte, yte)):
        for i, (clip, label) in enumerate(zip(x, y)):
            cls = tmp_path / "root" / split / f"class{label}"
            cls.mkdir(parents=True, exist_ok=True)
            if i % 2:
                np.save(cls / f"clip{i}.npy", clip)                      # a clip as one array
            else:
                (cls / f"clip{i}").mkdir()
                for t, frame in enumerate(clip):                        # a clip as a folder of frames
                    Image.fromarray(frame).save(cls / f"clip{i}" / f"{t:03d}.png")
    ds = read_clip_folder(tmp_path / "root")
    assert ds.frames == 3 and ds.class_names == ["class0", "class1"] and ds.y_train.tolist() == ytr
    assert np.array_equal(clip_array(ds.x_train, 3), xtr) and np.array_equal(clip_array(ds.x_test, 3), xte)


def test_mixed_clip_lengths_are_one_line_errors(tmp_path, capsys):
    for split in ("train", "val"):
        for i, t in enumerate((3, 4)):
            d = tmp_path / "root" / split / "a"
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / f"c{i}.npy", _clips(1, t=t)[0])
    with pytest.raises(DataError, match=r"c1\.npy: 4 frames of 6x5x3, but .*c0\.npy has 3 frames"):
        read_clip_folder(tmp_path / "root")
    code = main(["evolve", "data.name=clipfolder", f"data.data_dir={tmp_path / 'root'}", "method=evolving_loss",
                 "backbone=video_cnn_small", f"out_dir={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sslbench: error: ") and "same number of frames" in err[0]


def test_farneback_flow_has_the_translation_sign_and_size():
    g = np.random.default_rng(0)
    tex = g.integers(60, 255, (10, 10), dtype=np.uint8)
    frames = np.zeros((3, 32, 32, 1), np.uint8)
    for t in range(3):                      # a textured square moving +2 px in x and -1 px in y per frame
        frames[t, 12 - t:22 - t, 8 + 2 * t:18 + 2 * t, 0] = tex
    flow = farneback_flow(frames)
    assert flow.shape == (2, 2, 32, 32)
    inside = np.zeros((32, 32), bool)
    inside[13:19, 11:17] = True              # the square's inner part, in both pairs
    dx, dy = flow[:, 0][:, inside].mean(), flow[:, 1][:, inside].mean()
    assert abs(dx - 2) < 0.35 and abs(dy + 1) < 0.35, (dx, dy)
    assert abs(flow[:, :, :4, :4]).max() < 0.1       # the still background


def test_crop_flow_follows_the_views_crop_and_flip():
    flow = torch.zeros(2, 1, 2, 8, 8)
    flow[:, :, 0], flow[:, :, 1] = 1.0, 0.5          # everywhere (dx, dy) = (1, 0.5) source px per frame
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 0.75, 1.0]])
    out = crop_flow(flow, boxes, torch.tensor([False, True]), 8)
    # a half-width crop shown at full size doubles the displacements; a flip negates dx
    assert torch.allclose(out[0, 0, 0], torch.full((8, 8), 2.0)) and torch.allclose(out[0, 0, 1], torch.full((8, 8), 1.0))
    assert torch.allclose(out[1, 0, 0], torch.full((8, 8), -2.0)) and torch.allclose(out[1, 0, 1], torch.full((8, 8), 1.0))
    ramp = torch.arange(8.0).view(1, 1, 1, 1, 8).expand(1, 1, 2, 8, 8).clone()   # dx grows with x
    flipped = crop_flow(ramp, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([True]), 8)
    assert torch.allclose(flipped[0, 0, 0], -ramp[0, 0, 0].flip(-1))            # mirrored and negated


def test_clip_views_draw_one_augmentation_per_clip():
    frame = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    clip = frame.repeat(1, 4, 1, 1)                                    # 4 identical frames
    recipe = ViewRecipe.simclr(12, n=1, blur=True).with_frames(4)
    recipe.check(12, 16)
    v = recipe(clip, torch.Generator().manual_seed(0), (0.5,) * 12, (0.25,) * 12).images[0]
    per = v.view(2, 4, 3, 12, 12)
    assert all(torch.allclose(per[:, t], per[:, 0], atol=1e-5) for t in range(4))
    assert not torch.allclose(per[0, 0], per[1, 0])


def test_permuted_frames_are_never_in_order_and_keep_the_frames():
    x = torch.arange(5).float().view(1, 5, 1, 1).repeat(64, 1, 2, 3)        # frame t holds the value t (1 channel)
    which = torch.arange(64) % 2 == 0
    y = permute_frames(x, 5, which, torch.Generator().manual_seed(0))
    order = y[:, :, 0, 0]
    assert torch.equal(order[~which], x[~which, :, 0, 0])
    assert all(not torch.equal(o, torch.arange(5.0)) for o in order[which])
    assert torch.equal(order.sort(1).values, x[:, :, 0, 0])


def test_gray_frames_and_flow_cache(tmp_path):
    ds = synthetic_clips(n_train=6, n_test=3, frames=3, size=12)
    x = ds.x_train.float() / 255
    g = gray_frames(x, 3)
    assert g.shape == (6, 3, 12, 12)
    assert torch.allclose(g[:, 1], 0.299 * x[:, 3] + 0.587 * x[:, 4] + 0.114 * x[:, 5])
    first = clip_modalities(ds, tmp_path)
    assert first.flow.shape == (6, 2, 2, 12, 12) and first.flow.dtype == torch.float16
    assert len(list(tmp_path.glob("flow-*.npy"))) == 1
    again = clip_modalities(ds, tmp_path)                            # read back from the cache
    assert torch.equal(first.flow, again.flow)


def test_frames_are_checked_and_fingerprinted():
    x = torch.zeros(4, 6, 4, 4, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(DataError, match="not 4 frames"):
        ImageDataset("x", x, y, x, y, 1, frames=4)
    a, b = ImageDataset("x", x, y, x, y, 1, frames=3), ImageDataset("x", x, y, x, y, 1, frames=2)
    assert a.fingerprint() != b.fingerprint() and a.subset(2, 2).frames == 3


def test_moving_clips_are_deterministic_and_keep_the_image():
    imgs = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    imgs[:, :, 4:24, 4:24] = 255
    a, pick = moving_clips(imgs, 5, frames=4, size=32, glyph=20, seed=3)
    b, _ = moving_clips(imgs, 5, frames=4, size=32, glyph=20, seed=3)
    assert np.array_equal(a, b) and a.shape == (5, 4, 32, 32, 3) and sorted(pick[:3].tolist()) == [0, 1, 2]
    bg = a[:, :, 0, 0]                                                 # a corner pixel: some clips' background
    assert (np.abs(a[:, 0].astype(int) - a[:, 1].astype(int)).sum((1, 2, 3)) > 0).all()   # it moves
    assert bg.std() > 0
