"""A run's identity: everything that changes its result, hashed.

Two records share a leaderboard cell, supersede each other or pair in ``compare`` only when their
identities say they were measured the same way. The identity is computed from the params a run
logs (the resolved config flattened, plus what the run resolved at start: the method's full
config ``method_config.*``, the optimiser it got ``optim.effective.*``, the device / precision /
kernels ``train.resolved.*`` -- with, for a seconds budget, the hardware the seconds were spent on
(``train.resolved.hardware``: CPU model and threads, or GPU and processes) -- and the dataset's content
fingerprint ``data.fingerprint``), minus
the knobs that cannot change a result (tracking, output folders, progress bars, checkpoint
intervals, thread count, where the data lives and whether it is streamed from disk or held in memory
(``data.memory_cap_mb``, ``data.workers``), display labels, the preset's name). Evaluation
knobs are not in it: they are the leaderboard's protocol key.

* ``config_id``: the identity without the seed (the runs one table row averages);
* ``run_identity``: with the seed (the records that supersede each other).

Records logged before these params existed fall back to what they have (``method_cfg.*``
overrides, ``optim.*``, ``data.name``), so old and new records never collide silently.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

RANDOM_INIT_KEYS = ("method", "backbone", "seed")   # plus data.*: a random-init encoder trains nothing
TRAINING_ONLY_DATA = ("data.captions", "data.caption_template")   # what only training reads: not a random init's
NOT_RESULT = ("tracking.", "out_dir", "preset", "train.progress", "train.checkpoint_every_", "train.threads",
              "data.data_dir", "data.label", "data.memory_cap_mb", "data.workers", "eval.", "eval/")


def param_text(v: Any) -> str:
    """A param value as MLflow stores it (lists and dicts as JSON)."""
    s = json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
    return s[:6000]


def identity_fields(params: Mapping[str, Any]) -> dict[str, str]:
    """The params that change a run's result (values as text)."""
    # None is stored by MLflow as the text "None": either way an unset key is left out, so a key added to the
    # config later (unset in every older record, which lacks it) never splits a run from its older twins
    p = {k: param_text(v) for k, v in params.items()
         if v is not None and param_text(v) != "None" and not str(k).startswith(NOT_RESULT)}
    if p.get("method") == "random_init":
        return {k: v for k, v in p.items()
                if k in RANDOM_INIT_KEYS or (k.startswith("data.") and not k.startswith(TRAINING_ONLY_DATA))}
    if any(k.startswith("method_config.") for k in p):
        p = {k: v for k, v in p.items() if not k.startswith("method_cfg.")}       # the full config subsumes overrides
    if any(k.startswith("optim.effective.") for k in p):
        inputs = {f"optim.{k}" for k in ("name", "lr", "weight_decay", "momentum", "betas", "lars_eta")}
        p = {k: v for k, v in p.items() if k not in inputs}   # the effective values subsume the None-able inputs
    if any(k.startswith("train.resolved.") for k in p):
        p = {k: v for k, v in p.items() if k not in ("train.device", "train.precision", "train.channels_last",
                                                     "train.conv_wgrad", "train.attention")}
    if "data.fingerprint" in p:
        p.pop("data.name", None)   # the contents decide, not the loader's name
    if p.get("views.background", "none") == "none":
        # background augmentation is off (as for every record logged before it existed): its settings cannot
        # change the result, so they stay out and the option's absence hashes as it always did; progressive
        # resizing (views.resolution) is its own option, in the identity whenever it is set
        p = {k: v for k, v in p.items() if not k.startswith("views.") or k == "views.resolution"}
    if p.get("train.compile") == param_text(False):
        p.pop("train.compile")    # off: the eager step every record before the option ran
    if p.get("train.attention") == "auto":
        p.pop("train.attention")  # the default: run names and ids stay those of the records before the option
    return dict(sorted(p.items()))


def _hash(fields: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def identity(params: Mapping[str, Any]) -> tuple[str, str]:
    """(config_id, run_identity) of a run's params."""
    fields = identity_fields(params)
    return _hash({k: v for k, v in fields.items() if k != "seed"}), _hash(fields)


def differences(a: Mapping[str, Any], b: Mapping[str, Any], limit: int = 4) -> list[str]:
    """The identity fields two runs disagree on, as ``key: A vs B`` (seed left out)."""
    fa, fb = identity_fields(a), identity_fields(b)
    keys = sorted(k for k in set(fa) | set(fb) if k != "seed" and fa.get(k) != fb.get(k))
    return [f"{k}: {fa.get(k, '-')} vs {fb.get(k, '-')}" for k in keys[:limit]] + \
        ([f"... {len(keys) - limit} more"] if len(keys) > limit else [])
