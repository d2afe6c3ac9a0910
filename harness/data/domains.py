"""Two image domains, for unpaired image-to-image translation (CUT): which images are domain A (the
source) and which are domain B (the target).

A dataset gets its domains in one of two ways:

* ``data.domains=[A, B]`` on a labelled dataset (``cifar10``, an image folder, an ``.npz``, ...): each side
  is a class, by name or index, or a list of classes (``data.domains=[[cat,deer],[dog,horse]]``).
  :func:`select_domains` restricts the dataset, TRAIN and TEST, to those classes, ordered A's then B's
  (the evaluator's kNN / linear probes then classify these classes), names it ``<dataset>-<A>-to-<B>``
  and records the domain of each class (:class:`~harness.data.dataset.DomainSpec`). The selection reads
  the class labels, so such a run is **label-using**, whatever its method (:func:`uses_labels`: the tag
  ``sslbench.uses_labels``, ``(labels)`` rows in leaderboards), like templated captions.
* ``data.name=unpaired data.data_dir=ROOT``: the standard unpaired layout that CycleGAN / CUT datasets
  ship (``ROOT/trainA/``, ``trainB/``, ``testA/``, ``testB/``, flat folders of images; loaded by
  ``harness.data.sources.unpaired``). The folders are the domains; no label is read. ``data.domains=[B, A]``
  translates the other way.

A method that translates declares ``Requirements(domains=True)``. The trainer then hands it the
membership (:class:`Domains`, via ``attach_domains``) on every start and resume (data, not state) and
draws its batches half from each domain (:func:`domain_batch_indices`: A and B interleaved, each domain
in its own seeded epoch-wise order, a pure function of the step). A domain without images is a one-line
:class:`~harness.core.errors.DataError`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import torch

from harness.core.errors import ConfigError, DataError
from harness.data.dataset import DomainSpec, ImageDataset, batch_indices
from harness.data.store import take

UNPAIRED = "unpaired"          # the dataset name of the trainA/ trainB/ testA/ testB/ layout (harness.data.sources)
SIDES = ("A", "B")


@dataclass
class Domains:
    """The domain of every image of a dataset's two splits (0 = A, the source; 1 = B, the target)."""

    train: torch.Tensor          # int64 (N_train,)
    test: torch.Tensor           # int64 (N_test,)
    names: tuple[str, str]
    mode: str                    # "classes" | "folders"

    @property
    def uses_labels(self) -> bool:
        return self.mode == "classes"

    def members(self, split: str, domain: int) -> torch.Tensor:
        """Indices (sorted) of the ``split`` images of ``domain``."""
        d = self.train if split == "train" else self.test
        return torch.nonzero(d == domain).flatten()

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.train, self.test):
            h.update(t.to(torch.int8).numpy().tobytes())
        return h.hexdigest()[:16]


def uses_labels(data_cfg) -> bool:
    """Whether ``data.domains`` selects the domains by class labels (any dataset but the unpaired layout)."""
    return bool(getattr(data_cfg, "domains", None)) and getattr(data_cfg, "name", None) != UNPAIRED


def _sides(spec) -> list[list[str]]:
    if not isinstance(spec, (list, tuple)) or len(spec) != 2:
        raise ConfigError(f"data.domains={spec!r}: give two domains, A (the source) and B (the target), each a class "
                          f"or a list of classes, e.g. data.domains=[cat,dog] or data.domains=[[cat,deer],[dog,horse]]")
    sides = [[str(c).strip() for c in (s if isinstance(s, (list, tuple)) else [s])] for s in spec]
    for name, side in zip(SIDES, sides):
        if not side or any(not c for c in side):
            raise ConfigError(f"data.domains: domain {name} names no class ({spec!r})")
    return sides


def _class_index(token: str, names: list[str], ds: ImageDataset) -> int:
    if token in names:
        return names.index(token)
    lower = [n.lower() for n in names]
    if token.lower() in lower and lower.count(token.lower()) == 1:
        return lower.index(token.lower())
    if re.fullmatch(r"\d+", token) and int(token) < ds.num_classes:
        return int(token)
    shown = ", ".join(names) if names else f"indices 0..{ds.num_classes - 1} (it has no class names)"
    raise ConfigError(f"data.domains: '{token}' is not a class of {ds.name}; its classes: {shown}")


def _label(parts: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "+".join(parts))


def select_domains(ds: ImageDataset, spec) -> ImageDataset:
    """``ds`` restricted to the classes of ``spec`` (``data.domains``: two sides, each a class or a list),
    classes ordered A's then B's, with its :class:`DomainSpec`. Refuses unknown or shared classes and a
    domain without training or test images."""
    sides = _sides(spec)
    names = list(ds.class_names) if len(ds.class_names) == ds.num_classes else []
    picked = [[_class_index(t, names, ds) for t in side] for side in sides]
    shared = set(picked[0]) & set(picked[1])
    if shared or any(len(set(p)) != len(p) for p in picked):
        which = sorted(shared) or [c for p in picked for c in set(p) if p.count(c) > 1]
        raise ConfigError(f"data.domains: class {', '.join(names[c] if names else str(c) for c in which)} is named "
                          f"twice; each class belongs to one domain")
    order = picked[0] + picked[1]
    label = [names[c] if names else str(c) for c in order]
    side_names = ("+".join(label[:len(picked[0])]), "+".join(label[len(picked[0]):]))
    folders = ds.domains is not None and ds.domains.mode == "folders"
    if folders and order == list(range(ds.num_classes)) and ds.domains.of_class == (0, 1):
        return ds                                        # the layout's own A -> B
    remap = torch.full((ds.num_classes,), -1, dtype=torch.int64)
    remap[torch.tensor(order)] = torch.arange(len(order))
    of_class = tuple(0 if i < len(picked[0]) else 1 for i in range(len(order)))
    splits = {}
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        new = remap[y]
        keep = torch.nonzero(new >= 0).flatten()
        for d, side in enumerate(SIDES):
            if not bool((torch.tensor(of_class)[new[keep]] == d).any()):
                what = "training" if split == "train" else "test"
                raise DataError(f"data.domains: domain {side} ({side_names[d]}) has no {what} images in {ds.name} "
                                f"({ds.source or 'no source'}); choose classes that have images")
        splits[split] = (take(x, keep), new[keep])
    name = f"{ds.name}-{_label(label[:len(picked[0])])}-to-{_label(label[len(picked[0]):])}"
    return ImageDataset(name, *splits["train"], *splits["test"], len(order), label, ds.source,
                        domains=DomainSpec(of_class, side_names, "folders" if folders else "classes"))


def domains_of(ds: ImageDataset) -> Domains | None:
    """The domain of every image of ``ds`` (None when it has no domains)."""
    spec = ds.domains
    if spec is None:
        return None
    of_class = torch.tensor(spec.of_class, dtype=torch.int64)
    return Domains(of_class[ds.y_train], of_class[ds.y_test], spec.names, spec.mode)


def domains_for(method: str, wants: bool, data_cfg, ds: ImageDataset) -> Domains | None:
    """The domains a run's method gets (None for a method that reads none); refuses a method that needs
    them on a dataset that has none."""
    if not wants:
        return None
    d = domains_of(ds)
    if d is None:
        raise ConfigError(f"method '{method}' translates between two image domains: pass data.domains=[A,B] (a class "
                          f"or a list of classes each, e.g. data.domains=[cat,dog] on cifar10; uses the labels) or "
                          f"data.name={UNPAIRED} data.data_dir=ROOT (ROOT/trainA, trainB, testA, testB)")
    return d


def check_domain_batch(d: Domains, batch_size: int, processes: int = 1) -> None:
    """A translation batch is half A, half B (interleaved; every process gets both halves)."""
    if batch_size % (2 * processes):
        raise ConfigError(f"optim.batch_size={batch_size}: a two-domain batch is half domain A, half domain B, "
                          f"split over {processes} process(es); use a multiple of {2 * processes}")
    for k, side in enumerate(SIDES):
        n = int((d.train == k).sum())
        if n < batch_size // 2:
            raise ConfigError(f"optim.batch_size={batch_size} needs {batch_size // 2} training images of domain {side} "
                              f"({d.names[k]}) per step; it has {n}: lower optim.batch_size")


def domain_batch_indices(d: Domains, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Training batch ``step`` of a two-domain run: ``batch_size / 2`` images of each domain, interleaved
    (A, B, A, B, ...), each domain drawn in its own seeded epoch-wise order (:func:`batch_indices` over its
    members). A pure function of its arguments, like the single-domain batches."""
    half = batch_size // 2
    picks = []
    for k in range(2):
        members = d.members("train", k)
        picks.append(members[batch_indices(len(members), half, step, 2 * seed + k)])
    return torch.stack(picks, 1).reshape(-1)
