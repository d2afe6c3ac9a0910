"""The method registry: ``@register_method(name, family, paper)`` adds a :class:`Method` subclass.

Passive: registering happens when a method's module is imported; the plugin loader
(``harness.run.plugins``) imports the built-ins (``methods``) and the third-party plugins of the
entry-point group :data:`ENTRY_POINT_GROUP`.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.registry import Registry

ENTRY_POINT_GROUP = "sslbench.methods"
RANDOM_INIT = "random_init"     # the reserved method name of random-init (untrained) encoder rows


@dataclass
class MethodEntry:
    name: str
    cls: type
    family: str
    paper: str
    source: str = "builtin"


METHODS: Registry[MethodEntry] = Registry(
    "method", hint="list them with 'sslbench methods'",
    empty_hint="no method is registered yet; load the plugins first (harness.run.plugins.load_plugins(); the CLI does)")


def register_method(name: str, family: str, paper: str):
    """Class decorator: ``@register_method("byol", family="siamese", paper="Grill et al., 2020")``."""

    def deco(cls):
        if name == RANDOM_INIT:
            raise ValueError(f"'{RANDOM_INIT}' is reserved for random-init rows")
        cls.name = name
        cls.family = family
        cls.paper = paper
        METHODS.add(name, MethodEntry(name, cls, family, paper, source=cls.__module__))
        return cls

    return deco
