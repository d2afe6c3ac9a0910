"""One generic, passive registry: a name -> object table that never imports anything.

Methods, backbones and datasets each have one (``harness.method.registry.METHODS``,
``harness.models.backbones.BACKBONES``, ``harness.data.sources.DATASETS``). Things register
themselves when their module is imported; the registry itself loads nothing (the plugin
loader, ``harness.run.plugins``, is the only place that imports plugins by name).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from harness.core.errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """``registry.register(name)(obj)`` (a decorator) or ``registry.add(name, obj)``; ``get``
    raises a one-line :class:`ConfigError` naming the valid choices for an unknown name."""

    def __init__(self, kind: str, hint: str = "", empty_hint: str = ""):
        self.kind = kind
        self.hint = hint            # appended to the unknown-name error, e.g. "list them with 'sslbench methods'"
        self.empty_hint = empty_hint  # the error when nothing is registered yet (plugins not loaded)
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def get(self, name: str) -> T:
        if not self._items and self.empty_hint:
            raise ConfigError(f"unknown {self.kind} '{name}': {self.empty_hint}")
        if name not in self._items:
            hint = f" ({self.hint})" if self.hint else ""
            raise ConfigError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; "
                              f"valid choices: {', '.join(sorted(self._items)) or 'none registered'}{hint}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def names(self) -> list[str]:
        return sorted(self._items)
