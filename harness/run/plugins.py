"""The plugin loader: the only place that imports method plugins.

Built-in methods are the package ``methods`` (each module registers itself with
``@register_method``); third-party methods are found through the entry-point group
``sslbench.methods`` (each entry point names a module or a Method class; loading it registers
it). Everything that looks a method up by name goes through :func:`get_method` /
:func:`methods`, which load the plugins first.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

import methods as _builtin_methods  # noqa: F401  (importing the package registers the built-ins)
from harness.method.registry import ENTRY_POINT_GROUP, METHODS, MethodEntry

_loaded = False


def load_plugins() -> None:
    """Register the third-party methods of the entry-point group (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not break the built-ins
            warnings.warn(f"sslbench: plugin '{ep.name}' ({ep.value}) failed to load: {e}", stacklevel=2)


def methods() -> dict[str, MethodEntry]:
    load_plugins()
    return dict(METHODS.items())


def get_method(name: str) -> MethodEntry:
    load_plugins()
    return METHODS.get(name)
