"""A run's name, tags and state file, and the one-line progress log of the run layer."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from harness.core.config import flatten
from harness.core.errors import SSLBenchError
from harness.core.identity import identity
from harness.data.captions import uses_labels as captions_use_labels
from harness.data.domains import uses_labels as domains_use_labels
from harness.method.registry import METHODS
from harness.tracking.provenance import environment_tags
from harness.train.config import RunConfig


def dataset_label(cfg: RunConfig, dataset=None) -> str:
    """The dataset's name in run names, tags and tables: ``data.label``, else the dataset's own name
    (an image folder's or .npz file's name; ``cifar10`` for the built-in loaders)."""
    return cfg.data.label or (dataset.name if dataset is not None else cfg.data.name)


def run_name(cfg: RunConfig, dataset=None) -> str:
    """``method-backbone-dataset-budget-sSEED-CONFIG``: CONFIG (6 hex digits) hashes everything else that
    changes the result (``harness.core.identity``), so two configurations never share a run folder."""
    params = flatten(cfg)
    if dataset is not None:
        params["data.fingerprint"] = dataset.fingerprint()
    config_id, _ = identity(params)
    return f"{cfg.method}-{cfg.backbone}-{dataset_label(cfg, dataset)}-{cfg.budget.label}-s{cfg.seed}-{config_id[:6]}"


def run_dir(cfg: RunConfig, dataset=None) -> Path:
    return Path(cfg.out_dir) / cfg.tracking.experiment / run_name(cfg, dataset)


LABELS_TAG = "sslbench.uses_labels"   # "true" on runs that train on class labels (leaderboards mark their rows)


def uses_labels(cfg: RunConfig) -> bool:
    """Whether a run trains on class labels, resolved per run: its method reads them (the supervised
    baseline), its captions are templated from them (``data.captions=templated``), or its training images
    were selected by them (``data.domains`` on a labelled dataset: two image domains from class labels)."""
    if cfg.method not in METHODS:    # random_init trains nothing
        return False
    cls = METHODS.get(cfg.method).cls
    return bool(getattr(cls, "uses_labels", False)) or \
        bool(getattr(cls.requires, "captions", False)) and captions_use_labels(cfg.data) or \
        domains_use_labels(cfg.data)


def run_tags(cfg: RunConfig, device: str, dataset=None) -> dict[str, str]:
    tags = environment_tags(device)
    argv = [os.path.basename(sys.argv[0]) if i == 0 else a for i, a in enumerate(sys.argv)]
    tags["command"] = "sslbench " + " ".join(shlex.quote(a) for a in argv[1:]) if argv else ""
    tags.update({"method": cfg.method, "backbone": cfg.backbone, "dataset": dataset_label(cfg, dataset),
                 "budget": cfg.budget.text, "seed": str(cfg.seed)})
    if uses_labels(cfg):
        tags[LABELS_TAG] = "true"
    return tags


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SSLBenchError(f"cannot write {path} ({e.strerror}); free space or choose another out_dir") from None


def log(msg: str) -> None:
    print(f"sslbench: {msg}", file=sys.stderr, flush=True)


def read_state(path: Path) -> dict:
    """A run folder's ``run.json`` (absent, unreadable or not a mapping, e.g. after a full disk: empty)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
