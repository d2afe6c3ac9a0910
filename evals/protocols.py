"""The protocol table: every evaluation protocol, in one place.

The config (``evals.config.EvalConfig``: which names ``eval.protocols`` accepts), the evaluator
(:func:`evals.evaluate.evaluate`: what runs) and the leaderboard (``harness.report``: which
columns a table shows) all read :data:`PROTOCOLS`. Adding a protocol is one entry here: a
``run`` function that receives the evaluation :class:`Context` and returns its metrics (under
stable names) and knobs (``eval/...``), the splits whose frozen features it needs, and the
leaderboard columns it fills. The table itself imports no torch (configs, ``--help`` and
leaderboards read it); each ``run`` imports its protocol's module when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from evals.budgets import finetune_budget

HEADLINE = "knn/top1@20"          # the headline metric: default sort key, CI gate and compare metric
HEADLINE_METRICS = (HEADLINE, "linear/top1")


@dataclass(frozen=True)
class Column:
    metric: str                   # stable metric name, e.g. "knn/top1@20"
    header: str                   # leaderboard header
    higher_is_better: bool = True
    digits: int = 1


@dataclass
class Context:
    """What a protocol gets: the encoder, the data, the knobs, and the cached frozen features."""

    encoder: Any                  # torch.nn.Module
    dataset: Any                  # harness.data.dataset.ImageDataset
    cfg: Any                      # evals.config.EvalConfig
    device: Any                   # torch.device
    precision: str
    seed: int
    progress: bool
    label_fractions: tuple[float, ...]
    features: Callable[[str], Any]                 # split -> (N, D) float32 features (torch), extracted once
    timed: Callable[..., None]                     # timed(name, fn, splits): run fn, merge its dict, time it
    shared: dict[str, Any] = field(default_factory=dict)   # what one protocol fits for another (the linear probe)
    # the method's zero_shot_classifier hook (class names -> images-to-scores module, or None): zero_shot
    zero_shot: Callable[[list[str]], Any] | None = None
    # the method's translator hook (-> a generator module mapping normalised source images to translated ones,
    # or None): translation; and a folder for files a protocol writes (logged with the run as artifacts)
    translator: Callable[[], Any] | None = None
    artifact_dir: Any = None


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    run: Callable[[Context], dict[str, Any]]       # returns knobs (eval/...) logged before the timed runs
    columns: tuple[Column, ...] = ()
    default: bool = False                          # in eval.protocols when not set


def fraction_prefix(name: str, frac: float) -> str:
    """``linear`` for the full label set, ``linear@1%`` for a fraction."""
    return name if frac >= 1 else f"{name}@{frac * 100:g}%"


# ----------------------------------------------------------------------------- the protocols


def _knn(ctx: Context) -> dict[str, Any]:
    from evals.knn import knn_eval, resolve_backend

    c, ds = ctx.cfg, ctx.dataset
    # auto: on a CPU the faster exact backend of a timed trial on these features (cached per machine)
    backend = resolve_backend(c.knn_backend, c.knn_index, ctx.device, ctx.features("test"), ctx.features("train"),
                              max(c.knn_k))
    ctx.timed("knn", lambda: knn_eval(ctx.features("train"), ds.y_train, ctx.features("test"), ds.y_test, c.knn_k,
                                      c.knn_temperature, ds.num_classes, backend=backend, index=c.knn_index,
                                      device=ctx.device, shard_rows=c.knn_shard_rows))
    return {"eval/knn_k": ",".join(map(str, c.knn_k)), "eval/knn_temperature": c.knn_temperature,
            "eval/knn_metric": "cosine", "eval/knn_index": c.knn_index, "eval/knn_backend": backend}


LIGHTLY_K, LIGHTLY_T = 200, 0.1


def _knn_lightly(ctx: Context) -> dict[str, Any]:
    """lightly's benchmark kNN (k = 200, T = 0.1, cosine, exp(s / T) votes): the same protocol as ``knn`` at
    other settings, as its own clearly named column, so a row can be read against lightly's published
    CIFAR-10 table; scored once, after training (never the maximum over epochs)."""
    from evals.knn import knn_eval, resolve_backend

    c, ds = ctx.cfg, ctx.dataset
    backend = resolve_backend(c.knn_backend, c.knn_index, ctx.device, ctx.features("test"), ctx.features("train"), LIGHTLY_K)

    def run():
        m = knn_eval(ctx.features("train"), ds.y_train, ctx.features("test"), ds.y_test, (LIGHTLY_K,), LIGHTLY_T,
                     ds.num_classes, backend=backend, index=c.knn_index, device=ctx.device, shard_rows=c.knn_shard_rows)
        return {f"knn_lightly/top{t}": m[f"knn/top{t}@{LIGHTLY_K}"] for t in (1, 5)}

    ctx.timed("knn_lightly", run)
    return {"eval/knn_lightly_k": LIGHTLY_K, "eval/knn_lightly_temperature": LIGHTLY_T, "eval/knn_index": c.knn_index}


def _linear(ctx: Context) -> dict[str, Any]:
    from evals.linear import LR_GRID, WD_GRID, linear_probe

    c, ds = ctx.cfg, ctx.dataset
    for frac in [1.0, *ctx.label_fractions]:
        prefix = fraction_prefix("linear", frac)
        ctx.timed(prefix, lambda frac=frac, prefix=prefix: linear_probe(
            ctx.features("train"), ds.y_train, ctx.features("test"), ds.y_test, ds.num_classes, c.linear_epochs,
            c.holdout_fraction, label_fraction=frac, seed=ctx.seed, prefix=prefix,
            fitted=ctx.shared.setdefault("linear_probe", {}) if frac >= 1 else None))   # reused by background
    return {"eval/linear_epochs": c.linear_epochs, "eval/holdout_fraction": c.holdout_fraction,
            "eval/linear_version": "2 (selection and refit heads in one pass)",
            "eval/linear_lr_grid": ",".join(map(str, LR_GRID)), "eval/linear_wd_grid": ",".join(map(str, WD_GRID))}


def _linear_lbfgs(ctx: Context) -> dict[str, Any]:
    from evals.linear_lbfgs import LBFGS_WD_GRID, lbfgs_probe

    c, ds = ctx.cfg, ctx.dataset
    ctx.timed("linear_lbfgs", lambda: lbfgs_probe(ctx.features("train"), ds.y_train, ctx.features("test"), ds.y_test,
                                                  ds.num_classes, holdout_fraction=c.holdout_fraction, seed=ctx.seed))
    return {"eval/linear_lbfgs_wd_grid": ",".join(map(str, LBFGS_WD_GRID))}


def _finetune(ctx: Context) -> dict[str, Any]:
    from evals.finetune import CONVNET_LRS, VIT_LRS, finetune_eval
    from harness.models.backbones import is_vit

    c, ds = ctx.cfg, ctx.dataset
    steps, bs = finetune_budget(c)
    for frac in [1.0, *ctx.label_fractions]:
        prefix = fraction_prefix("finetune", frac)
        ctx.timed(prefix, lambda frac=frac, prefix=prefix: finetune_eval(
            ctx.encoder, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, ds.mean, ds.std,
            steps=steps, batch_size=bs, holdout_fraction=c.holdout_fraction,
            label_fraction=frac, seed=ctx.seed, device=ctx.device, precision=ctx.precision, progress=ctx.progress,
            prefix=prefix), splits=())
    return {"eval/finetune_steps": steps, "eval/finetune_batch_size": bs,
            "eval/finetune_lr_grid": ",".join(map(str, VIT_LRS if is_vit(ctx.encoder) or
                                                  getattr(ctx.encoder, "is_hybrid_vit", False) else CONVNET_LRS))}


def _semisup(ctx: Context) -> dict[str, Any]:
    from evals.semisup import semisup_eval

    c, ds = ctx.cfg, ctx.dataset
    steps, bs = finetune_budget(c)
    for frac in c.semisup_fractions:
        ctx.timed(fraction_prefix("semisup", frac), lambda frac=frac: semisup_eval(
            ctx.encoder, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, ds.mean, ds.std,
            label_fraction=frac, steps=steps, batch_size=bs,
            holdout_fraction=c.holdout_fraction, temperature=c.distill_temperature, seed=ctx.seed, device=ctx.device,
            precision=ctx.precision, progress=ctx.progress), splits=())
    return {"eval/semisup_fractions": ",".join(map(str, c.semisup_fractions)),
            "eval/distill_temperature": c.distill_temperature,
            "eval/finetune_steps": steps, "eval/finetune_batch_size": bs}


def _align_uniform(ctx: Context) -> dict[str, Any]:
    from evals.align_uniform import align_uniform_eval

    c, ds = ctx.cfg, ctx.dataset
    ctx.timed("align_uniform", lambda: align_uniform_eval(
        ctx.encoder, ds.x_test, ds.mean, ds.std, c.au_pairs, features=ctx.features("test"), seed=ctx.seed,
        batch_size=c.batch_size, device=ctx.device, precision=ctx.precision, progress=ctx.progress), splits=("test",))
    return {"eval/au_pairs": c.au_pairs, "eval/au_alpha": 2.0, "eval/au_t": 2.0}


def _background(ctx: Context) -> dict[str, Any]:
    from evals.background import background_eval

    c, ds = ctx.cfg, ctx.dataset
    ctx.timed("background", lambda: background_eval(
        ctx.encoder, ds, ctx.features("train"), ctx.features("test"), c, probe=ctx.shared.get("linear_probe"),
        seed=ctx.seed, device=ctx.device, precision=ctx.precision, progress=ctx.progress))
    out = {"eval/bg_saliency": c.bg_saliency, "eval/bg_threshold": c.bg_threshold, "eval/bg_seed": c.bg_seed,
           "eval/bg_swap": "derangement of the test set, fixed by eval.bg_seed", "eval/bg_probe": "linear",
           "eval/linear_epochs": c.linear_epochs, "eval/holdout_fraction": c.holdout_fraction}
    if c.bg_threshold == "quantile":
        out["eval/bg_quantile"] = c.bg_quantile
    return out


def _zero_shot(ctx: Context) -> dict[str, Any]:
    from evals.zero_shot import zero_shot_eval
    from harness.data.captions import class_names

    ds = ctx.dataset
    names = class_names(ds)
    clf = ctx.zero_shot(names) if ctx.zero_shot is not None else None
    if clf is None:                  # a method without a text tower: no value, no error
        return {}
    ctx.timed("zero_shot", lambda: zero_shot_eval(clf, ds.x_test, ds.y_test, ds.mean, ds.std, ctx.cfg.batch_size,
                                                  ctx.device, ctx.precision, ctx.progress), splits=())
    return {"eval/zero_shot_class_names": "dataset" if names == list(ds.class_names) else "class indices"}


def _state_probe(ctx: Context) -> dict[str, Any]:
    from evals.state_probe import BLOCK, ENTROPY_THRESHOLD, EPOCHS, LR_GRID, state_probe

    c, ds = ctx.cfg, ctx.dataset
    ctx.timed("state_probe", lambda: state_probe(ctx.features("train"), ds.state_train, ctx.features("test"),
                                                 ds.state_test, c.holdout_fraction, seed=ctx.seed, lrs=LR_GRID,
                                                 precision=ctx.precision))
    return {"eval/state_probe_lr_grid": ",".join(map(str, LR_GRID)), "eval/state_probe_epochs": EPOCHS,
            "eval/state_probe_holdout": f"{c.holdout_fraction:g} of TRAIN in blocks of {BLOCK} consecutive samples",
            "eval/state_probe_min_entropy": ENTROPY_THRESHOLD}


def _translation(ctx: Context) -> dict[str, Any]:
    from evals.translation import CLASSIFIER_BATCH, CLASSIFIER_SIDE, WIDTHS, translation_eval
    from harness.data.domains import domains_of

    c, ds = ctx.cfg, ctx.dataset
    # the protocol's settings, logged for every run that lists it (so a random-init floor, which has no
    # generator and gets no translation metric, shares its table with the generator's rows)
    knobs = {"eval/translation_steps": c.translation_steps, "eval/translation_grid": c.translation_grid,
             "eval/translation_classifier": f"{len(WIDTHS)} conv-BN-ReLU stages ({'-'.join(map(str, WIDTHS))}), "
                                            f"Adam 1e-3, batch {CLASSIFIER_BATCH} half per domain, flips, "
                                            f"<= {CLASSIFIER_SIDE} px, seeded by eval/seed"}
    gen = ctx.translator() if ctx.translator is not None else None
    if gen is None:                  # a method without a generator: no value, no error
        return knobs
    domains = domains_of(ds)
    if domains is None:
        return {**knobs, "eval/translation": "not scored: the dataset has no two domains (data.domains or "
                                             "data.name=unpaired)"}
    ctx.timed("translation", lambda: translation_eval(gen, ds, domains, c.translation_steps, c.translation_grid,
                                                      seed=ctx.seed, batch_size=c.batch_size, device=ctx.device,
                                                      precision=ctx.precision, artifact_dir=ctx.artifact_dir),
              splits=())
    return knobs


# In the order the evaluator runs them (and the leaderboard shows their columns).
_TABLE = [
    Protocol("knn", "weighted kNN on L2-normalised frozen features, T = 0.07, k in eval.knn_k (headline k = 20)", _knn,
             (Column(HEADLINE, "kNN@20"), Column("knn/top1@200", "kNN@200")), default=True),
    Protocol("knn_lightly", "lightly's benchmark kNN: k = 200, T = 0.1 on the same L2-normalised frozen features, "
             "scored once after training (its published CIFAR-10 table's protocol)", _knn_lightly,
             (Column("knn_lightly/top1", "kNN@200 T0.1 (lightly)"),)),
    Protocol("linear", "BN + linear probe on cached features, SGD, LR/WD chosen on a TRAIN hold-out, refit on TRAIN",
             _linear, (Column("linear/top1", "linear"), Column("linear@1%/top1", "linear 1%"),
                       Column("linear@10%/top1", "linear 10%")), default=True),
    Protocol("linear_lbfgs", "multinomial logistic regression to convergence (L-BFGS), L2 chosen on a TRAIN hold-out",
             _linear_lbfgs, (Column("linear_lbfgs/top1", "L-BFGS"),)),
    Protocol("finetune", "the whole encoder + a linear head, crop + flip, fixed step budget, LR chosen on a TRAIN hold-out",
             _finetune, (Column("finetune/top1", "fine-tune"),)),
    Protocol("semisup", "SimCLR v2's protocol: fine-tune on 1% / 10% of the labels, distil into a student without labels",
             _semisup, (Column("semisup@1%/top1", "semi-sup 1%"), Column("semisup@10%/top1", "semi-sup 10%"))),
    Protocol("align_uniform", "alignment and uniformity (Wang & Isola, 2020) on the test images", _align_uniform,
             (Column("align", "align", higher_is_better=False, digits=3),
              Column("uniform", "uniform", higher_is_better=False, digits=3)), default=True),
    Protocol("background", "the linear probe on TEST images with backgrounds swapped between images (saliency masks, "
             "fixed seeded derangement): accuracy drop from original to swapped (Ryali et al., 2021)", _background,
             (Column("bg/drop", "bg drop", higher_is_better=False),)),
    Protocol("state_probe", "a linear probe per state variable (AtariARI: an Atari game's RAM bytes, each a "
             "classification of its value) on frozen features, LR chosen per variable on a TRAIN hold-out of "
             "consecutive-frame blocks, refit on TRAIN; mean weighted F1 and accuracy over the variables", _state_probe,
             (Column("state/f1", "state F1", digits=3), Column("state/acc", "state acc"))),
    Protocol("zero_shot", "CLIP's zero-shot classification: class-name prompts through the method's text tower, "
             "nearest prompt embedding in cosine (methods without a text tower: nothing)", _zero_shot,
             (Column("zero_shot/top1", "zero-shot"),)),
    Protocol("translation", "image translation A -> B (CUT): a seeded domain classifier trained on real TRAIN images "
             "of both domains judges the translated TEST images of A (percent called B vs the inputs'), edge-map "
             "SSIM between input and output vs random A/B pairs, a PNG grid of samples (methods without a "
             "generator: nothing)", _translation,
             (Column("translation/to_target", "to target"), Column("translation/input_to_target", "inputs to target"),
              Column("translation/edge_ssim", "edge SSIM", digits=3),
              Column("translation/edge_ssim_random", "edge SSIM random", digits=3))),
]
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in _TABLE}
DEFAULT_PROTOCOLS = [p.name for p in _TABLE if p.default]


def columns() -> list[Column]:
    """Every protocol's leaderboard columns, in table order."""
    return [c for p in _TABLE for c in p.columns]


