"""Two image domains (issue 18, CUT): class groups of a labelled dataset (label-using) and the unpaired
trainA/ trainB/ testA/ testB/ layout (not label-using); their errors; domain-balanced batches."""

import numpy as np
import pytest
import torch
from PIL import Image

from harness.core.errors import ConfigError, DataError
from harness.core.schema import DataConfig
from harness.data.dataset import ImageDataset
from harness.data.domains import domain_batch_indices, domains_of, select_domains
from harness.data.sources import load_dataset, synthetic
from harness.run.naming import LABELS_TAG, run_tags, uses_labels
from harness.train.config import resolve


def named(n_per_class=(6, 5, 4, 3), names=("cat", "dog", "bird", "frog")):
    """A tiny labelled dataset with class names; class k's pixels all equal k (to check which images are kept)."""
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(n_per_class)])
    x = (y.view(-1, 1, 1, 1).expand(-1, 3, 8, 8) * 10).to(torch.uint8).contiguous()
    return ImageDataset("toy", x, y, x.clone(), y.clone(), len(n_per_class), list(names), source="test")


def test_class_groups_restrict_and_reorder_the_dataset():
    ds = select_domains(named(), ["dog", ["frog", "cat"]])
    assert ds.name == "toy-dog-to-frog+cat" and ds.class_names == ["dog", "frog", "cat"]
    assert ds.domains.of_class == (0, 1, 1) and ds.domains.names == ("dog", "frog+cat") and ds.domains.mode == "classes"
    assert len(ds.y_train) == 5 + 3 + 6
    # every image kept with its new label: pixel value / 10 = the old class
    old = ds.x_train[:, 0, 0, 0].long() // 10
    assert torch.equal(old, torch.tensor([1, 3, 0])[ds.y_train])     # new labels dog, frog, cat = old 1, 3, 0
    d = domains_of(ds)
    assert d.uses_labels and torch.equal(d.train, (ds.y_train > 0).long())
    assert torch.equal(d.members("train", 0), torch.nonzero(ds.y_train == 0).flatten())
    # indices work as class names do; names are matched case-insensitively; subsets keep the domains
    by_index = select_domains(named(), ["1", ["3", "0"]])
    assert by_index.class_names == ds.class_names and torch.equal(by_index.y_train, ds.y_train)
    assert select_domains(named(), ["DOG", "Frog"]).class_names == ["dog", "frog"]
    assert ds.subset(4, None).domains == ds.domains


def test_bad_class_groups_are_one_line_errors():
    with pytest.raises(ConfigError, match="'horse' is not a class of toy; its classes: cat, dog, bird, frog"):
        select_domains(named(), ["cat", "horse"])
    with pytest.raises(ConfigError, match="class cat is named twice"):
        select_domains(named(), [["cat", "dog"], "cat"])
    with pytest.raises(ConfigError, match="give two domains"):
        select_domains(named(), ["cat"])
    with pytest.raises(DataError, match=r"domain B \(frog\) has no training images in toy"):
        select_domains(named(n_per_class=(6, 5, 4, 0)), ["cat", "frog"])
    # a method that translates refuses a dataset without domains, before training
    from harness.train.trainer import Trainer

    cfg = resolve({"method": "cut", "backbone": "cut_encoder_small", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 1, "optim.batch_size": 8, "train.progress": False, "method_cfg.d_layers": 2,
                   "method_cfg.nce_layers": [0, 4, 8, 12]})
    with pytest.raises(ConfigError, match=r"translates between two image domains: pass data.domains=\[A,B\]"):
        Trainer(cfg, synthetic(n_train=32, n_test=8, image_size=16), "/nonexistent")


def _folder(root, counts):
    g = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            level = 40 if name.endswith("A") else 200
            img = np.clip(g.normal(level, 10, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


def test_the_unpaired_layout_is_two_domains_without_labels(tmp_path):
    root = _folder(tmp_path / "horse2zebra", {"trainA": 5, "trainB": 3, "testA": 2, "testB": 4})
    (root / "trainA" / "notes.txt").write_text("not an image")
    ds = load_dataset(DataConfig(name="unpaired", data_dir=str(root)))
    assert ds.name == "horse2zebra" and ds.class_names == ["A", "B"] and ds.domains.mode == "folders"
    assert (len(ds.y_train), len(ds.y_test)) == (8, 6) and ds.image_size == 12
    d = domains_of(ds)
    assert not d.uses_labels and d.train.tolist() == [0] * 5 + [1] * 3 and d.test.tolist() == [0] * 2 + [1] * 4
    assert float(ds.x_train[:5].float().mean()) < 100 < float(ds.x_train[5:].float().mean())
    # [B, A] translates the other way (still the folders, still no labels)
    rev = load_dataset(DataConfig(name="unpaired", data_dir=str(root), domains=["B", "A"]))
    assert rev.name == "horse2zebra-B-to-A" and rev.domains.mode == "folders" and domains_of(rev).train.tolist() == [1] * 5 + [0] * 3
    assert load_dataset(DataConfig(name="unpaired", data_dir=str(root), domains=["A", "B"])).name == "horse2zebra"


def test_unpaired_layout_errors(tmp_path):
    root = _folder(tmp_path / "d", {"trainA": 2, "trainB": 0, "testA": 1, "testB": 1})
    with pytest.raises(DataError, match=r"trainB: no images \(domain B is empty\)"):
        load_dataset(DataConfig(name="unpaired", data_dir=str(root)))
    with pytest.raises(DataError, match="no testA, testB folder"):
        load_dataset(DataConfig(name="unpaired", data_dir=str(_folder(tmp_path / "e", {"trainA": 1, "trainB": 1}))))
    with pytest.raises(DataError, match="needs data.data_dir=ROOT"):
        load_dataset(DataConfig(name="unpaired"))


def test_class_domains_are_label_using_and_folder_domains_are_not():
    cls = resolve({"method": "cut", "data.name": "cifar10", "data.domains": ["cat", "dog"]})
    folders = resolve({"method": "cut", "data.name": "unpaired", "data.domains": ["B", "A"]})
    assert uses_labels(cls) and run_tags(cls, "cpu")[LABELS_TAG] == "true"
    assert not uses_labels(folders) and LABELS_TAG not in run_tags(folders, "cpu")
    # the selection is label-derived for any method trained on it (the random-init floor trains nothing)
    assert uses_labels(resolve({"method": "simclr", "data.domains": ["0", "1"]}))
    assert not uses_labels(resolve({"method": "simclr"}))


def test_domain_batches_are_half_each_interleaved_and_a_function_of_the_step():
    d = domains_of(select_domains(synthetic(n_train=200, n_test=16, image_size=8), ["0", ["2", "3"]]))
    n_a = int((d.train == 0).sum())
    first_epoch = []
    for step in range(n_a // 5 + 2):
        idx = domain_batch_indices(d, 10, step, seed=3)
        assert d.train[idx].tolist() == [0, 1] * 5
        assert torch.equal(idx, domain_batch_indices(d, 10, step, seed=3))
        if step < n_a // 5:
            first_epoch += idx[0::2].tolist()
    assert len(set(first_epoch)) == len(first_epoch) == 5 * (n_a // 5)     # an epoch of A draws each image once
    assert not torch.equal(domain_batch_indices(d, 10, 0, seed=3), domain_batch_indices(d, 10, 0, seed=4))
