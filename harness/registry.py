"""Registries for methods, backbones and datasets.

Built-in methods register themselves with :func:`register_method` when ``methods`` is
imported; third-party plugins are found through the entry-point group ``sslbench.methods``
(each entry point names a module or a Method class; importing it registers it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

from harness.errors import ConfigError, did_you_mean

ENTRY_POINT_GROUP = "sslbench.methods"


@dataclass
class MethodEntry:
    name: str
    cls: type
    family: str
    paper: str
    source: str = "builtin"


_METHODS: dict[str, MethodEntry] = {}
_BACKBONES: dict[str, Callable[..., Any]] = {}
_DATASETS: dict[str, Callable[..., Any]] = {}
_loaded = False


def register_method(name: str, family: str, paper: str):
    """Class decorator: ``@register_method("byol", family="siamese", paper="Grill et al., 2020")``."""

    def deco(cls):
        cls.name = name
        cls.family = family
        cls.paper = paper
        _METHODS[name] = MethodEntry(name, cls, family, paper, source=cls.__module__)
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("methods")  # built-ins
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not break the built-ins
            import warnings

            warnings.warn(f"sslbench: plugin '{ep.name}' ({ep.value}) failed to load: {e}", stacklevel=2)


def methods() -> dict[str, MethodEntry]:
    _load_all()
    return dict(sorted(_METHODS.items()))


def get_method(name: str) -> MethodEntry:
    _load_all()
    if name not in _METHODS:
        raise ConfigError(
            f"unknown method '{name}'{did_you_mean(name, _METHODS)}; "
            f"valid choices: {', '.join(sorted(_METHODS))} (list them with 'sslbench methods')"
        )
    return _METHODS[name]


def register_backbone(name: str):
    def deco(fn):
        _BACKBONES[name] = fn
        return fn

    return deco


def backbones() -> dict[str, Callable[..., Any]]:
    importlib.import_module("harness.backbones")
    return dict(_BACKBONES)


def register_dataset(name: str):
    def deco(fn):
        _DATASETS[name] = fn
        return fn

    return deco


def datasets() -> dict[str, Callable[..., Any]]:
    importlib.import_module("harness.data")
    return dict(_DATASETS)


def get_dataset_factory(name: str):
    ds = datasets()
    if name not in ds:
        raise ConfigError(
            f"unknown dataset '{name}'{did_you_mean(name, ds)}; valid choices: {', '.join(sorted(ds))}"
        )
    return ds[name]
