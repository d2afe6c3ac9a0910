"""The config sections every run has (data, budget, optimiser, training, tracking).

The evaluation section lives with the protocols (``evals.config.EvalConfig``) and a method's
own section with the method (its ``Config`` dataclass); ``harness.train.config.RunConfig``
puts them together. Field metadata (``choices``, ``positive``, ``between``) is the validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.core.config import between, choices, positive
from harness.core.errors import ConfigError

NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]*"   # names that become folder names: no path separators, no '..'


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    data_dir: str | None = None          # where the dataset lives; None = its standard place
    label: str | None = field(default=None, metadata={"pattern": NAME})  # the name in run names and tables;
    #                                      None = the dataset's own (an image folder's or .npz file's name)
    image_size: int | None = positive(None)  # resize to this side (any layout); None = native size (a folder of mixed sizes: 64)
    train_subset: int | None = positive(None)  # N train images, stratified by class and seeded (tests, smoke runs)
    test_subset: int | None = positive(None)
    subset_seed: int = 0                 # the seed of the subsets' draw (the same for every run seed)
    # hold out N TRAIN images (stratified by class, seeded by subset_seed) as the evaluation split; TEST is
    # not read. For tuning presets and methods without selecting on the test split (tables say "val N")
    validation: int | None = positive(None)
    # an image folder whose decoded images (train + val, uint8) exceed this is streamed from disk
    # instead of held in memory (0: always stream); the same images and results either way
    memory_cap_mb: float = positive(4096.0, allow_zero=True)
    workers: int | None = positive(None, allow_zero=True)   # processes decoding a streamed folder (0: in the
    #                                      main process); None = min(8, the CPUs this process may use)
    # captions, for methods that learn from text (clip; harness.data.captions): a CSV or JSONL file of
    # (image path or index, caption) rows, 'templated' (one caption per image from its class name:
    # uses the labels, and the run is marked label-using), or None (no captions)
    captions: str | None = None
    caption_template: str | None = None  # templated mode: must hold '{class}'; None = 'a photo of a {class}.'
    # two image domains, for unpaired translation (cut; harness.data.domains): [A, B], each a class (name or
    # index) or a list of classes, e.g. [cat, dog]: the dataset is restricted to them, and the run is
    # label-using (the selection reads the labels); with data.name=unpaired the folders are the domains
    # (trainA/ trainB/ testA/ testB/, no labels) and [B, A] reverses the direction
    domains: list[str | list[str]] | None = None
    # data.name=atari (harness.data.atari): frame stacks (4 x 84 x 84) of an Atari game played by a seeded random
    # policy, with the game's RAM state variables (AtariARI annotations) per frame stack, for the state_probe protocol
    game: str | None = None              # an annotated game (ale-py's ROM id: pong, breakout, ...); required for
    #                                      data.name=atari, checked against the annotated games when the data loads
    train_frames: int | None = positive(None)   # frame stacks in TRAIN; None = 10000
    test_frames: int | None = positive(None)    # in TEST (other episodes; stacks identical to a TRAIN one dropped); None = 2000
    collect_seed: int | None = positive(None, allow_zero=True)   # seeds the episodes (policy, no-op starts); None = 0


BUDGET_KINDS = ("epochs", "steps", "samples", "seconds", "flops")
_SHORT = {"seconds": "s", "steps": "steps", "epochs": "ep", "samples": "img", "flops": "flops"}


@dataclass
class BudgetConfig:
    """Exactly one budget per run; schedules are functions of progress in [0, 1].

    The one place a budget is formatted and parsed: ``text`` (``seconds=240.0``, the form tables,
    ``compare`` and ``--budget`` use; MLflow stores ``budget.kind`` / ``budget.value`` as params),
    ``label`` (``240s``, the form in run names) and :meth:`parse`, which reads either."""

    kind: str = choices(*BUDGET_KINDS, default="seconds")
    value: float = positive(60.0)   # flops: training FLOPs (forward + backward, all processes), e.g. 2e15

    @property
    def text(self) -> str:
        return f"{self.kind}={float(self.value)}"

    @property
    def label(self) -> str:
        v = float(self.value)
        if self.kind == "flops":
            return f"{v:.3g}flops".replace("+", "")
        return f"{int(v) if v.is_integer() else v}{_SHORT[self.kind]}"

    @classmethod
    def parse(cls, text: str) -> "BudgetConfig":
        """``seconds=240``, ``seconds=240.0`` or a label such as ``240s`` / ``2e15flops``."""
        t = str(text).strip()
        kind, sep, value = t.partition("=")
        if not sep:
            m = re.fullmatch(r"([0-9.eE+-]+)(s|steps|ep|img|flops)", t)
            if not m:
                raise ConfigError(f"bad budget '{text}': write KIND=VALUE (e.g. seconds=240) or a label such as 240s")
            value, kind = m.group(1), {v: k for k, v in _SHORT.items()}[m.group(2)]
        try:
            v = float(value)
        except ValueError:
            raise ConfigError(f"bad budget '{text}': '{value}' is not a number") from None
        if kind not in BUDGET_KINDS:
            raise ConfigError(f"bad budget '{text}': kind must be one of {', '.join(BUDGET_KINDS)}")
        return cls(kind, v)


@dataclass
class OptimConfig:
    """``None`` means: the method's declared paper default (``Method.optim``)."""

    name: str | None = choices("sgd", "lars", "adamw", None, default=None)
    lr: float | None = positive(None)              # None: the method's base LR scaled by batch/256
    weight_decay: float | None = positive(None, allow_zero=True)
    momentum: float | None = between(None, 0, 1)   # SGD / LARS momentum
    betas: list[float] | None = between(None, 0, 1, open_hi=True)   # AdamW (beta1, beta2)
    lars_eta: float | None = between(None, 0, 1, open_lo=True)      # LARS trust coefficient
    batch_size: int = positive(256)
    warmup: float = between(0.05, 0, 1)            # fraction of progress
    grad_clip: float | None = positive(None)       # max global grad norm; None = off


@dataclass
class TrainConfig:
    device: str = choices("auto", "cpu", "cuda", default="auto")
    precision: str = choices("auto", "bf16", "fp32", default="auto")
    channels_last: str = choices("auto", "on", "off", default="auto")
    # auto (channels_last, conv_wgrad): decided by a timed trial on this run's shapes on this machine, cached
    # per machine (harness/models/autotune.py). conv_wgrad: the weight gradient of convs as one im2col GEMM
    # (CPU, bf16, channels-last) instead of oneDNN's kernel; gemm = by the size rule, native = never
    conv_wgrad: str = choices("auto", "gemm", "native", default="auto")
    # attention of ViTs on a CPU: PyTorch's fused flash kernel (its default) or the math path (two matmuls and a
    # softmax, which autocast runs in bf16); auto = a timed trial of both on this run's attention shape, cached
    attention: str = choices("auto", "flash", "math", default="auto")
    # torch.compile the training step (inductor; CPU needs a C++ compiler): a compile error falls back to
    # eager with one warning line. Off by default: see README, "Performance"
    compile: bool = False
    checkpoint_every_steps: int | None = positive(None)
    checkpoint_every_seconds: float = positive(60.0)
    progress: bool = True
    threads: int | None = positive(None)           # torch.set_num_threads; None = torch's default
    max_steps_per_epoch: int | None = positive(None)


@dataclass
class TrackingConfig:
    uri: str | None = None               # None: $MLFLOW_TRACKING_URI, else sqlite under results/
    experiment: str = field(default="sslbench", metadata={"pattern": NAME})   # also a folder name under out_dir
    log_checkpoint: bool = False         # also log the final checkpoint.pt as an artifact of the run (a copy in the store)




# background augmentations (Ryali, Schwab & Morcos, 2021): the names harness.data.views and
# harness.data.saliency implement; here so the config can check them (the one place they are listed)
BACKGROUND_MODES = ("none", "random", "constant", "noise")
BACKGROUND_VIEWS = ("all", "first", "second")
SALIENCY_METHODS = ("frequency_tuned", "spectral_residual")
SALIENCY_THRESHOLDS = ("otsu", "quantile")


@dataclass
class ViewsConfig:
    """Options every method's view recipe carries (``views.*``), applied by ``harness.data.views``.

    ``background``: replace the background of the source image (before the view's crop) with another
    image's from the batch (``random``, the paper's BG_Random), the dataset's mean colour
    (``constant``, BG_RM) or uniform noise (``noise``), per image with probability ``background_p``,
    in the views ``background_views`` names (``all``: every view, each drawn independently). The
    foreground mask is an unsupervised saliency estimate (``saliency``; ``harness.data.saliency``)
    thresholded by Otsu or at a quantile. All of it is logged as ``views.*`` params: part of the
    run's identity when ``background`` is not ``none``."""

    background: str = choices(*BACKGROUND_MODES, default="none")
    background_p: float = between(0.2, 0, 1)
    background_views: str = choices(*BACKGROUND_VIEWS, default="all")
    saliency: str = choices(*SALIENCY_METHODS, default="frequency_tuned")
    saliency_threshold: str = choices(*SALIENCY_THRESHOLDS, default="otsu")
    saliency_quantile: float = between(0.5, 0, 1, open_lo=True, open_hi=True)   # with saliency_threshold=quantile
    # progressive resizing: the views' side for equal shares of training, e.g. [16, 24, 32] (the last should
    # be the images' side: evaluation sees full-size images); a recipe's smaller crops scale alike. Convnet
    # backbones only (their pooling takes any size); None: the recipe's sizes throughout
    resolution: list[int] | None = positive(None)
