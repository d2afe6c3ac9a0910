"""The captions reader (harness.data.captions): CSV and JSONL files keyed by image path or training index,
templated captions from class names, and one clear line for every mistake."""

import json

import numpy as np
import pytest
from PIL import Image

from harness.core.errors import ConfigError, DataError
from harness.core.schema import DataConfig
from harness.data.captions import DEFAULT_TEMPLATE, captions_for, class_names, read_captions, templated
from harness.data.sources import imagefolder, synthetic


@pytest.fixture
def folder(tmp_path):
    """ROOT/train/{cat,dog}/{0,1}.png and ROOT/val/{cat,dog}/0.png (4 training images)."""
    root = tmp_path / "pets"
    for split, n in (("train", 2), ("val", 1)):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 40 * c + 10 * i, np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def small():
    return synthetic(n_train=4, n_test=4, image_size=8, num_classes=2)


def write_csv(path, rows, header=("index", "caption")):
    path.write_text(",".join(header) + "\n" + "".join(",".join(f'"{v}"' for v in r) + "\n" for r in rows))
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_csv_by_index_with_several_captions_per_image(tmp_path):
    ds = small()
    f = write_csv(tmp_path / "c.csv", [(0, "a red ball"), (1, "two  dogs"), (2, "a cat"), (3, "a red ball"), (1, "a dog, sleeping")])
    c = read_captions(f, ds)
    assert c.mode == "file" and not c.uses_labels
    assert [c.of(i) for i in range(4)] == [["a red ball"], ["two dogs", "a dog, sleeping"], ["a cat"], ["a red ball"]]
    assert c.texts == ["a red ball", "two dogs", "a cat", "a dog, sleeping"]        # distinct, first seen first
    assert c.starts.tolist() == [0, 1, 3, 4, 5]


def test_jsonl_by_index_equals_the_csv(tmp_path):
    ds = small()
    rows = [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    a = read_captions(write_csv(tmp_path / "c.csv", rows), ds)
    b = read_captions(write_jsonl(tmp_path / "c.jsonl", [{"index": i, "caption": t} for i, t in rows]), ds)
    assert a.fingerprint() == b.fingerprint() and [b.of(i) for i in range(4)] == [["a"], ["b"], ["c"], ["d"]]


def test_image_paths_of_a_folder_in_both_layouts(folder, tmp_path):
    ds = imagefolder(str(folder))
    # the loader's order: train/cat/0, train/cat/1, train/dog/0, train/dog/1; paths relative to the folder,
    # to its train/, or absolute
    rows = [("train/cat/0.png", "cat zero"), ("cat/1.png", "cat one"), (str(folder / "train/dog/0.png"), "dog zero"),
            ("train/dog/1.png", "dog one")]
    c = read_captions(write_csv(folder / "captions.csv", rows, ("image", "caption")), ds, str(folder))
    assert [c.of(i) for i in range(4)] == [["cat zero"], ["cat one"], ["dog zero"], ["dog one"]]
    j = read_captions(write_jsonl(tmp_path / "c.jsonl", [{"image": p, "caption": t} for p, t in rows]), ds, str(folder))
    assert j.fingerprint() == c.fingerprint()
    # through the run's config: a relative captions path is found beside the data
    cfg = DataConfig(name="imagefolder", data_dir=str(folder), captions="captions.csv")
    assert captions_for("clip", True, cfg, ds).fingerprint() == c.fingerprint()


def test_missing_image(folder):
    ds = imagefolder(str(folder))
    f = write_csv(folder / "c.csv", [("train/cat/0.png", "x"), ("train/cat/9.png", "y")], ("image", "caption"))
    with pytest.raises(DataError, match=r"c.csv line 3: image 'train/cat/9.png' is not one of the 4 training images"):
        read_captions(f, ds, str(folder))


def test_empty_caption(tmp_path):
    f = write_csv(tmp_path / "c.csv", [(0, "a"), (1, "   ")])
    with pytest.raises(DataError, match=r"c.csv line 3: empty caption for image 1"):
        read_captions(f, small())
    j = write_jsonl(tmp_path / "c.jsonl", [{"index": 0, "caption": "a"}, {"index": 1, "caption": ""}])
    with pytest.raises(DataError, match=r"c.jsonl line 2: empty caption"):
        read_captions(j, small())


def test_unknown_index(tmp_path):
    with pytest.raises(DataError, match=r"line 2: unknown index 4: the training split has images 0..3"):
        read_captions(write_csv(tmp_path / "c.csv", [(4, "a")]), small())
    with pytest.raises(DataError, match=r"line 2: index 'two' is not an integer"):
        read_captions(write_csv(tmp_path / "c.csv", [("two", "a")]), small())
    with pytest.raises(DataError, match=r"line 1: unknown index -1"):
        read_captions(write_jsonl(tmp_path / "c.jsonl", [{"index": -1, "caption": "a"}]), small())


def test_other_mistakes_are_one_line(tmp_path):
    ds = small()
    cases = [
        (write_csv(tmp_path / "a.csv", [(0, "a"), (1, "b")]), r"2 of the 4 training images have no caption \(the first: index 2\)"),
        (write_csv(tmp_path / "b.csv", [("x.png", "a")], ("image", "caption")), r"names a file, but dataset 'synthetic' has no image files"),
        (write_csv(tmp_path / "c.csv", [(0, "a")], ("index", "text")), r"no 'caption' field"),
        (tmp_path / "d.txt", r"must be a .csv or .jsonl file"),
        (write_jsonl(tmp_path / "e.jsonl", [[0, "a"]]), r"e.jsonl line 1: not a JSON object"),
    ]
    (tmp_path / "d.txt").write_text("0,a\n")
    for path, msg in cases:
        with pytest.raises(DataError, match=msg) as e:
            read_captions(path, ds)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"captions file nope.csv not found"):
        captions_for("clip", True, DataConfig(name="synthetic", captions="nope.csv"), ds)


def test_templated_captions_from_class_names():
    ds = synthetic(n_train=6, n_test=2, image_size=8, num_classes=3)
    c = templated(ds)
    assert c.uses_labels and c.mode == "templated" and DEFAULT_TEMPLATE == "a photo of a {class}."
    assert class_names(ds) == ["class 0", "class 1", "class 2"]           # synthetic data has no names
    assert [c.of(i) for i in range(6)] == [[f"a photo of a class {int(y)}."] for y in ds.y_train]
    ds.class_names = ["cat", "dog", "t-shirt/top"]
    c = captions_for("clip", True, DataConfig(name="synthetic", captions="templated", caption_template="an image of a {class}"), ds)
    assert c.of(int((ds.y_train == 2).nonzero()[0])) == ["an image of a t-shirt/top"]


def test_config_mistakes(tmp_path):
    ds = small()
    with pytest.raises(ConfigError, match=r"must contain \{class\}"):
        captions_for("clip", True, DataConfig(name="synthetic", captions="templated", caption_template="a photo"), ds)
    with pytest.raises(ConfigError, match="caption_template is used only with data.captions=templated"):
        captions_for("clip", True, DataConfig(name="synthetic", caption_template="a {class}"), ds)
    with pytest.raises(ConfigError, match="method 'clip' learns from captions: pass data.captions"):
        captions_for("clip", True, DataConfig(name="synthetic"), ds)
    with pytest.raises(ConfigError, match="method 'simclr' reads none: drop data.captions"):
        captions_for("simclr", False, DataConfig(name="synthetic", captions="templated"), ds)
    f = write_csv(tmp_path / "c.csv", [(i, "a") for i in range(4)])
    with pytest.raises(ConfigError, match="does not combine with data.train_subset"):
        captions_for("clip", True, DataConfig(name="synthetic", captions=str(f), train_subset=2), ds)
    assert captions_for("simclr", False, DataConfig(name="synthetic"), ds) is None


def test_a_run_refuses_a_bad_captions_file_before_training(tmp_path):
    from harness.train.config import resolve
    from harness.train.trainer import Trainer

    f = write_csv(tmp_path / "c.csv", [(0, "a"), (9999, "b")])
    cfg = resolve({"method": "clip", "data.name": "synthetic", "data.captions": str(f), "budget.kind": "steps",
                   "budget.value": 1, "optim.batch_size": 2, "train.progress": False})
    with pytest.raises(DataError, match="line 3: unknown index 9999") as e:   # the CLI prints it as one line
        Trainer(cfg, small(), tmp_path / "run")
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()
