"""The method plugin contract.

A method is an ``nn.Module`` subclass registered with ``@register_method(name, family, paper, venue)``
(``family`` one of ``harness.method.registry.FAMILIES``):

```python
@register_method("byol", family="self-distillation", paper="Grill et al., 2020 (BYOL)",
                 venue="NeurIPS 2020, arXiv:2006.07733")
class BYOL(Method):
    Config = BYOLConfig                         # dataclass of the paper's defaults

    def __init__(self, backbone, cfg, info): ...
    def view_recipe(self, info) -> ViewRecipe:  # how many views, sizes, augmentations
    def training_step(self, batch, step) -> dict[str, Tensor]:   # {"loss": ..., extras}
    def on_step_end(self, step) -> None:        # EMA update, queue push, schedules
    def encoder(self) -> nn.Module:             # what the evaluator scores
```

Everything the method must resume with (EMA teachers, queues, prototypes, centres) is a
submodule, parameter or buffer, so it lands in ``state_dict`` and therefore in checkpoints.
Schedules are functions of ``step.progress`` in [0, 1], so every budget type completes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from harness.core.config import apply_dict, validate
from harness.core.errors import ConfigError
from harness.data.views import ViewRecipe, Views
from harness.models.backbones import is_vit


@dataclass
class DataInfo:
    """What a method may know about the data before training."""

    name: str
    channels: int
    image_size: int
    num_train: int
    num_classes: int
    mean: tuple[float, ...] = ()  # per-channel normalisation of the views (empty in checkpoints older than these fields)
    std: tuple[float, ...] = ()
    frames: int = 1               # video clips: T frames stacked on the channel axis, channels // frames each

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised views back to [0, 1] pixel values (methods that work on colours: Lab, channel drop)."""
        m, s = self._stats(x)
        return x * s + m

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixel values -> the views' normalisation (the inverse of :meth:`denormalize`)."""
        m, s = self._stats(x)
        return (x - m) / s

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.mean:
            raise ConfigError("this checkpoint's data_info has no normalisation statistics; retrain it with this version")
        shape = (1, -1, 1, 1)
        return (torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(shape),
                torch.tensor(self.std, device=x.device, dtype=x.dtype).view(shape))


@dataclass
class StepInfo:
    step: int                     # 0-based optimisation step
    progress: float               # fraction of the budget spent, in [0, 1]
    total_steps: int | None       # None for wall-clock budgets
    generator: torch.Generator    # seeded per step: use it for any randomness (masks, rotations)
    phase: str = ""               # which optimiser this call trains, for a method with several (Method.optimizer_phases)


@dataclass
class Batch:
    views: Views
    indices: torch.Tensor         # dataset indices of the batch (memory-bank methods)
    labels: torch.Tensor | None = None  # class labels: only methods with uses_labels = True may read them
    # in the prepare pass only: ``views.source`` holds the normalised un-augmented images


@dataclass(frozen=True)
class OptimDefaults:
    """A method's optimiser as its paper states it: what a run gets when neither a preset nor an
    ``optim.*`` override says otherwise (``harness.train.optim.effective_optim``). The LR is
    ``base_lr * batch / 256`` (linear scaling); biases and norms get no weight decay and no LARS
    trust ratio (``Method.param_groups``)."""

    name: str = "sgd"                        # sgd | lars | adamw
    base_lr: float = 0.05                    # at batch 256
    weight_decay: float = 1e-4
    momentum: float = 0.9                    # sgd, lars
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    lars_eta: float = 0.001                  # LARS trust coefficient

    def __post_init__(self):
        if self.name not in ("sgd", "lars", "adamw"):
            raise ValueError(f"OptimDefaults.name must be sgd, lars or adamw, got {self.name!r}")


@dataclass
class OptimPhase:
    """One optimiser of a method's step (:meth:`Method.optimizer_phases`): its name (``StepInfo.phase``), its
    parameter groups and, when it differs from the method's ``optim``, its own declared optimiser."""

    name: str
    groups: list[dict]
    optim: OptimDefaults | None = None       # None: the method's ``optim`` (with the run's optim.* overrides)


@dataclass
class Requirements:
    """What a method needs of the backbone and the data, known before any data loads: shown by
    ``sslbench methods``; ``vit``, ``color`` and ``min_image_size`` are refused before training by
    :meth:`Method.check_requirements`, ``convnet`` and ``backbone`` by the method's own constructor."""

    vit: bool = False             # needs a timm VisionTransformer backbone
    color: bool = False           # needs 3-channel images
    min_image_size: int = 0
    convnet: bool = False         # needs a convolutional backbone (a spatial feature map or conv patch embeddings), not a ViT
    backbone: str = ""            # needs this one backbone family by name (ConvMAE: "convvit"), when vit/convnet do not say it
    captions: bool = False        # learns from captions (data.captions: a file, or templated from labels); refused without them
    clips: bool = False           # learns from video clips (a dataset with frames >= 2) and their optical flow (attach_clips)
    domains: bool = False         # translates between two image domains (data.domains, or the unpaired layout); refused without them
    any_channels: bool = False    # its views have no colour operations: any number of channels (Atari frame stacks: 4)


class Method(nn.Module):
    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    venue: ClassVar[str] = ""     # where the paper appeared and its arXiv id, e.g. "ICML 2020, arXiv:2002.05709"
    Config: ClassVar[type] = object
    requires: ClassVar[Requirements] = Requirements()
    optim: ClassVar[OptimDefaults] = OptimDefaults()   # the paper's optimiser (name, base LR at batch 256, WD, ...)
    uses_labels: ClassVar[bool] = False  # True only for baselines (the supervised row); SSL methods never see labels
    # under DDP, BatchNorm statistics run over the global batch (harness.core.distributed.GlobalBatchNorm),
    # as SimCLR/BYOL/SwAV/Barlow Twins/MoCo v3 do; False keeps per-process BN (MoCo v1/v2's shuffled BN)
    global_bn: ClassVar[bool] = True
    # True when some parameters get no gradient in some steps (BEiT's two stages): DDP is then built
    # with find_unused_parameters=True
    unused_parameters: ClassVar[bool] = False
    # True when every view goes straight into the backbone (and heads on its pooled features), so the views
    # may be made smaller early in training (views.resolution, progressive resizing; convnet backbones)
    progressive_views: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, cfg: Any, info: DataInfo):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.info = info

    # ---------------------------------------------------------------- contract
    def view_recipe(self, info: DataInfo) -> ViewRecipe:
        raise NotImplementedError

    def training_step(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_step_end(self, step: StepInfo) -> None:
        pass

    def wants_prepare_pass(self) -> bool:
        """True if the method needs one pass over the training set before its first step
        (e.g. filling a memory bank with real features); the trainer then calls
        :meth:`prepare_batch` once per batch, in index order, without gradients, under the
        same precision as training, and counts the time in a seconds budget."""
        return False

    def prepare_batch(self, batch: Batch) -> None:
        pass

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        # the trainer calls the module (so DDP's hooks run); it is the training step
        return self.training_step(batch, step)

    def encoder(self) -> nn.Module:
        return self.backbone

    def projector(self) -> nn.Module | None:
        """Backbone + projector for projector-feature evaluation, if the method has one."""
        return None

    def teacher_reference(self) -> str | None:
        """A finished checkpoint this method learns from (feature distillation's teacher), or None.
        Before the first step, the trainer loads it (``harness.train.build``), checks it, and hands
        its ``encoder()`` to :meth:`attach_teacher`; the teacher is not part of this method's
        checkpoint (it is reloaded, and its file's sha256 checked, on resume)."""
        return None

    def teacher_digest(self) -> str:
        """The sha256 the teacher file must have ('' = not pinned); pinned in the config by the run
        layer, so a replaced teacher file is refused (and changes the run's identity and folder)."""
        return ""

    def attach_teacher(self, encoder: nn.Module, provenance: dict[str, str]) -> None:
        raise NotImplementedError(f"{type(self).__name__} names a teacher but cannot take one")

    def attach_domains(self, domains: Any) -> None:
        """The domain of every image (``harness.data.domains.Domains``: 0 = A, the source; 1 = B, the target),
        before the first step and on every resume (data, not state), for a method whose ``requires.domains``
        is True; its batches are then half A, half B (interleaved), each half in its own seeded order."""
        raise NotImplementedError(f"{type(self).__name__} reads no domains")

    def translator(self) -> nn.Module | None:
        """For a method with a generator (image translation): a module mapping normalised source-domain images
        (B, C, H, W) to normalised translated images of the same shape (the ``translation`` protocol, which
        reports nothing for a method that returns None: the default)."""
        return None

    def attach_captions(self, captions: Any) -> None:
        """The training split's captions (``harness.data.captions.Captions``), before the first step and
        on every resume (they are data, not state), for a method whose ``requires.captions`` is True."""
        raise NotImplementedError(f"{type(self).__name__} reads no captions")

    def zero_shot_classifier(self, class_names: list[str]) -> nn.Module | None:
        """For a method with a text tower: a module mapping normalised images (B, C, H, W) to class scores
        (B, len(class_names)) from prompts of the class names alone (the ``zero_shot`` protocol, which
        reports nothing for a method that returns None: the default)."""
        return None

    def attach_clips(self, clips: Any) -> None:
        """The training clips' modalities (``harness.data.video.ClipModalities``: the optical flow of every
        training clip, indexed like the dataset), before the first step and on every resume (data, not
        state), for a method whose ``requires.clips`` is True."""
        raise NotImplementedError(f"{type(self).__name__} reads no clips")

    @classmethod
    def search_space(cls, cfg: Any) -> dict[str, tuple[float, float]]:
        """The config fields an outer search may set (``sslbench evolve``: the loss weights), with their
        bounds; empty (the default) for a method with nothing to search."""
        return {}

    def resolved_params(self) -> dict[str, Any]:
        """Facts resolved at build time that change the result and are not in the config (e.g. a
        teacher checkpoint's sha256): logged as params, so they are part of the run's identity."""
        return {}

    def param_groups(self, *modules: nn.Module) -> list[dict]:
        """Optimiser parameter groups; default: everything trainable (of ``modules`` when given: one phase's
        share, :meth:`optimizer_phases`), no WD on biases/norms."""
        decay, no_decay = [], []
        params = [p for m in modules for p in m.parameters()] if modules else self.parameters()
        for p in params:
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]

    def optimizer_phases(self) -> list[OptimPhase]:
        """The optimisers of one training step, in order. Default: one, over :meth:`param_groups`. A method
        with several (a GAN: the discriminator, then the generator) returns one :class:`OptimPhase` each;
        every trainable parameter belongs to exactly one. Per step and phase the trainer zeroes every
        gradient, calls :meth:`training_step` with ``step.phase`` set (the same batch, views and step
        generator object), back-propagates that call's ``"loss"``, clips and steps that phase's optimiser;
        ``on_step_end`` runs once, after the last phase. Each optimiser gets the run's ``optim.*`` overrides
        and the LR schedule; all their states are in the checkpoint."""
        return [OptimPhase("", self.param_groups())]

    # ---------------------------------------------------------------- helpers
    @classmethod
    def make_config(cls, overrides: dict[str, Any]):
        """The paper's defaults (``Config``) with ``overrides``, every field checked against its metadata."""
        cfg = cls.Config()
        apply_dict(cfg, overrides, prefix="method_cfg.")
        validate(cfg, prefix="method_cfg.")
        return cfg

    @classmethod
    def check_requirements(cls, backbone: nn.Module, info: DataInfo, backbone_name: str) -> None:
        r = cls.requires
        if r.vit and not is_vit(backbone):
            raise ConfigError(f"method '{cls.name}' needs a ViT backbone, got '{backbone_name}'; "
                              "try backbone=vit_mini_p4 or vit_tiny_p4")
        if r.color and info.channels != 3:
            raise ConfigError(f"method '{cls.name}' needs colour images; dataset '{info.name}' has {info.channels} channel(s); "
                              "choose a colour dataset such as cifar10")
        if r.clips and info.frames < 2:
            raise ConfigError(f"method '{cls.name}' learns from video clips; dataset '{info.name}' holds single images: "
                              "choose a clip dataset (data.name=moving_fashion_mnist, clips or clipfolder)")
        if info.image_size < r.min_image_size:
            raise ConfigError(f"method '{cls.name}' needs images of at least {r.min_image_size} px; "
                              f"dataset '{info.name}' has {info.image_size} px")

