"""State-variable probes: how linearly a frozen encoder's features tell a game's state (the AtariARI
evaluation of Anand et al., 2019, "Unsupervised State Representation Learning in Atari", arXiv:1906.08226).

A dataset with state variables (``ImageDataset.state_train`` / ``state_test``; ``data.name=atari``: the
RAM bytes of the AtariARI annotations) gets one linear probe per variable on the encoder's frozen
features, each a classification of the variable's value, as in AtariARI (a RAM byte: 256 classes). A
head can only ever predict values it was trained on, so each variable's head covers the values that
occur in TRAIN; a TEST value outside them counts as an error, as it would for a 256-way head. The
reported numbers are AtariARI's: per variable the accuracy and the F1 score averaged over the values,
weighted by their TEST support (scikit-learn's ``average="weighted"``), then the mean over variables:

    state/f1 = 1/V sum_v F1_w(v),   state/acc = 100/V sum_v acc(v)   (per-variable values: state/f1/<v>, state/acc/<v>)

Variables whose TRAIN distribution has an entropy below 0.6 nats (a constant x position, a score that
barely moves) are left out, as AtariARI does; ``eval/state_probe_skipped`` lists them.

Training (:func:`evals.linear.train_heads`: standardised features, softmax cross-entropy, SGD with
momentum 0.9 and a cosine schedule): per variable, for every learning rate of :data:`LR_GRID`, a
selection head that never sees a hold-out of TRAIN and a refit head that sees all of TRAIN train side by
side; the selection heads' hold-out F1 picks the learning rate, whose refit head is scored on TEST.
The hold-out is a seeded choice of blocks of :data:`BLOCK` consecutive TRAIN samples (consecutive frames
of an episode are near-copies: a per-sample hold-out would leak them), ``eval.holdout_fraction`` of the
blocks. Nothing is selected on TEST.
"""

from __future__ import annotations

import torch

from evals.linear import Standardizer, _logits, train_heads

LR_GRID = (0.03, 0.3)
EPOCHS = 20
BATCH = 512
BLOCK = 100                  # consecutive samples per hold-out block
ENTROPY_THRESHOLD = 0.6      # nats, AtariARI's


def entropy(values: torch.Tensor) -> float:
    """The entropy (nats) of the empirical distribution of ``values``."""
    _, counts = values.unique(return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log()).sum())


def block_holdout(n: int, fraction: float, seed: int, block: int = BLOCK) -> torch.Tensor:
    """A bool mask over ``n`` samples: a seeded ``fraction`` of the blocks of ``block`` consecutive samples
    (at least one block, never all of them)."""
    blocks = max(1, -(-n // block))
    k = min(max(1, round(fraction * blocks)), blocks - 1) if blocks > 1 else 0
    g = torch.Generator().manual_seed(seed)
    held = torch.zeros(n, dtype=torch.bool)
    for j in torch.randperm(blocks, generator=g)[:k].tolist():
        held[j * block:(j + 1) * block] = True
    return held


def weighted_f1(pred: torch.Tensor, true: torch.Tensor) -> float:
    """F1 per value, averaged with the values' support in ``true`` as weights (scikit-learn's
    ``f1_score(true, pred, average="weighted")``)."""
    values, support = true.unique(return_counts=True)
    tp = torch.stack([((pred == v) & (true == v)).sum() for v in values]).double()
    predicted = torch.stack([(pred == v).sum() for v in values]).double()
    f1 = torch.where(tp > 0, 2 * tp / (predicted + support.double()), torch.zeros_like(tp))
    return float((f1 * support.double()).sum() / support.sum())


def state_probe(train_features: torch.Tensor, train_states: dict[str, torch.Tensor], test_features: torch.Tensor,
                test_states: dict[str, torch.Tensor], holdout_fraction: float = 0.1, seed: int = 0,
                lrs=LR_GRID, epochs: int = EPOCHS, precision: str = "auto") -> dict[str, float | str]:
    """Probe every state variable (TRAIN entropy >= 0.6 nats) and report ``state/f1``, ``state/acc``, their
    per-variable values, each variable's selected learning rate (``state/lr/<v>``) and the variables left
    out (``eval/state_probe_skipped``: a property of the TRAIN data). Every choice reads TRAIN only."""
    std = Standardizer.fit(train_features)
    z, zt = std(train_features), std(test_features)
    held = block_holdout(len(z), holdout_fraction, seed)
    g = len(lrs)
    out: dict[str, float | str] = {}
    f1s, accs, skipped = [], [], []
    for name in sorted(train_states):
        y_raw = train_states[name]
        if entropy(y_raw) < ENTROPY_THRESHOLD:
            skipped.append(name)
            continue
        values, y = y_raw.unique(return_inverse=True)
        w, b = train_heads(z, y, len(values), list(lrs) * 2, [0.0] * (2 * g), epochs, BATCH, seed=seed,
                           precision=precision, hidden_rows=held, blind_heads=g)
        sel = _logits(z[held], w[:, :g], b[:g]).argmax(-1)            # (held, g): hold-out predictions
        scores = [weighted_f1(values[sel[:, i]], y_raw[held]) for i in range(g)]
        best = max(range(g), key=lambda i: (scores[i], -i))
        pred = values[_logits(zt, w[:, g + best:g + best + 1], b[g + best:g + best + 1])[:, 0].argmax(-1)]
        true = test_states[name]
        f1, acc = weighted_f1(pred, true), 100.0 * float((pred == true).double().mean())
        out[f"state/f1/{name}"], out[f"state/acc/{name}"] = f1, acc
        f1s.append(f1)
        accs.append(acc)
        out[f"state/lr/{name}"] = lrs[best]
    if f1s:
        out["state/f1"] = sum(f1s) / len(f1s)
        out["state/acc"] = sum(accs) / len(accs)
    out["eval/state_probe_skipped"] = ",".join(skipped) or "none"
    return out
