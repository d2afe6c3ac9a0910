"""The method registry: ``@register_method(name, family, paper, venue)`` adds a :class:`Method` subclass.

Passive: registering happens when a method's module is imported; the plugin loader
(``harness.run.plugins``) imports the built-ins (``methods``) and the third-party plugins of the
entry-point group :data:`ENTRY_POINT_GROUP`.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.registry import Registry

ENTRY_POINT_GROUP = "sslbench.methods"
RANDOM_INIT = "random_init"     # the reserved method name of random-init (untrained) encoder rows

# The method families, as the field names them (the order `sslbench methods` lists them in). Every
# built-in method's ``family`` is one of these (tests/test_methods_listing.py); a third-party plugin
# should pick one too (any other string is listed after them, as given).
#   pretext                  a hand-made task with pseudo-labels: rotations, jigsaw, colours, counting, positions
#   contrastive              positives pulled together, in-batch negatives pushed apart (InfoNCE and its variants)
#   memory bank              negatives drawn from stored features of past steps (a bank or a queue)
#   self-distillation        a student predicts a (momentum) teacher's output, no negatives (BYOL, SimSiam, DINO)
#   clustering               codes / prototypes assigned over the batch and predicted across views (SwAV)
#   redundancy reduction     decorrelating embedding dimensions across views (Barlow Twins, VICReg)
#   masked image modelling   reconstruct or predict masked patches (pixels, tokens, features)
#   multimodal               views that act as modalities, or image-text pairs (CMC, CLIP)
#   applications             SSL objectives used for another end (RL, translation, distilling a finished model)
#   baseline                 reference rows, not SSL: the supervised ceiling, the random-init floor
FAMILIES: tuple[str, ...] = ("pretext", "contrastive", "memory bank", "self-distillation", "clustering",
                             "redundancy reduction", "masked image modelling", "multimodal", "applications",
                             "baseline")


@dataclass
class MethodEntry:
    name: str
    cls: type
    family: str
    paper: str
    source: str = "builtin"
    venue: str = ""


METHODS: Registry[MethodEntry] = Registry(
    "method", hint="list them with 'sslbench methods'",
    empty_hint="no method is registered yet; load the plugins first (harness.run.plugins.load_plugins(); the CLI does)")


def register_method(name: str, family: str, paper: str, venue: str = ""):
    """Class decorator: ``@register_method("byol", family="self-distillation", paper="Grill et al., 2020 (BYOL)",
    venue="NeurIPS 2020, arXiv:2006.07733")``. ``family`` is one of :data:`FAMILIES`; ``venue`` is where
    the paper appeared and its arXiv id, where it has one."""

    def deco(cls):
        if name == RANDOM_INIT:
            raise ValueError(f"'{RANDOM_INIT}' is reserved for random-init rows")
        cls.name = name
        cls.family = family
        cls.paper = paper
        cls.venue = venue
        METHODS.add(name, MethodEntry(name, cls, family, paper, source=cls.__module__, venue=venue))
        return cls

    return deco


def progressive_methods() -> list[str]:
    """The registered methods that take progressive resizing (``views.resolution``)."""
    return sorted(name for name in METHODS.names() if getattr(METHODS.get(name).cls, "progressive_views", False))
