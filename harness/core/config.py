"""Config machinery: dataclass sections validated from their field metadata, YAML files and
``key=value`` overrides.

A config is a tree of dataclasses. A field's type is checked (and coerced: YAML ``1e-5`` to a
float, ``10`` to ``[10]`` for a list), and its metadata declares what else a value must satisfy,
so no method or section writes its own argument checks:

* ``choices(*values, default=...)``: one of ``values`` (for a list field: every element);
* ``positive(default)`` / ``between(default, lo, hi)`` / ``at_least(default, lo)``: numeric ranges.

An unknown key or a bad value raises :class:`ConfigError` naming the key and the valid
choices. Precedence (applied by ``harness.train.config.resolve``), lowest first: a method's
paper defaults (its ``Config`` dataclass) -> a preset YAML -> a suite YAML -> ``key=value``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from harness.core.errors import ConfigError, did_you_mean

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def choices(*values: str, default):
    """A field restricted to ``values`` (each element, for a list field)."""
    return field(default=default, metadata={"choices": values})


def list_of_choices(*values: str, default: list):
    """A list field whose every element is one of ``values``."""
    return field(default_factory=lambda: list(default), metadata={"choices": values})


def positive(default, *, allow_zero: bool = False):
    """A number > 0 (>= 0 with ``allow_zero``)."""
    return field(default=default, metadata={"min": 0, "strict": not allow_zero})


def at_least(default, lo: float):
    """A number >= ``lo``."""
    return field(default=default, metadata={"min": lo})


def between(default, lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False):
    """A number in [lo, hi] (``open_lo`` / ``open_hi`` exclude an end)."""
    return field(default=default, metadata={"min": lo, "max": hi, "strict": open_lo, "strict_max": open_hi})


def ordered(low: str, high: str) -> tuple:
    """A cross-field check (for a Config's ``checks``): field ``low`` <= field ``high``."""
    return (lambda c: getattr(c, low) <= getattr(c, high), f"{low} <= {high}")


def check_value(meta: typing.Mapping[str, Any], value: Any, full: str) -> None:
    """Raise ConfigError unless ``value`` satisfies the field metadata (choices, min/max)."""
    items = value if isinstance(value, list) else [value]
    if "choices" in meta:
        for v in items:
            if v not in meta["choices"]:
                where = f" in '{full}'" if isinstance(value, list) else f" for '{full}'"
                shown = [str(c) for c in meta["choices"] if c is not None]
                unset = " (or null: the default)" if None in meta["choices"] else ""
                raise ConfigError(f"bad value {v!r}{where}{did_you_mean(str(v), shown)}; "
                                  f"valid choices: {', '.join(shown)}{unset}")
    if "pattern" in meta:
        for v in items:
            if v is not None and not re.fullmatch(meta["pattern"], str(v)):
                raise ConfigError(f"bad value {v!r} for '{full}': use letters, digits and . _ + - only, "
                                  "starting with a letter or digit (it becomes a folder name)")
    lo, hi = meta.get("min"), meta.get("max")
    for v in items:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v != v:   # NaN: no range holds it
            raise ConfigError(f"bad value {v!r} for '{full}': must be a number")
        if lo is not None and (v < lo or (meta.get("strict") and v == lo)):
            raise ConfigError(f"bad value {v!r} for '{full}': must be {'>' if meta.get('strict') else '>='} {lo}")
        if hi is not None and (v > hi or (meta.get("strict_max") and v == hi)):
            raise ConfigError(f"bad value {v!r} for '{full}': must be {'<' if meta.get('strict_max') else '<='} {hi}")


def validate(obj, prefix: str = "") -> None:
    """Check every field of a dataclass tree against its metadata (defaults included), then the
    dataclass's cross-field ``checks``: a class attribute of ``(predicate, "what must hold")`` pairs,
    e.g. ``checks = ((lambda c: c.base_momentum <= c.final_momentum, "base_momentum <= final_momentum"),)``."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            validate(v, f"{prefix}{f.name}.")
        else:
            check_value(f.metadata, list(v) if isinstance(v, tuple) else v, f"{prefix}{f.name}")
    for predicate, what in getattr(type(obj), "checks", ()):
        if not predicate(obj):
            section = prefix.rstrip(".") or type(obj).__name__
            raise ConfigError(f"bad values in '{section}': need {what} ({_describe(obj, what)})")


def _describe(obj, what: str) -> str:
    """The current values of the fields a check names."""
    names = [f.name for f in dataclasses.fields(obj) if f.name in what]
    return ", ".join(f"{n}={getattr(obj, n)!r}" for n in names)


def parse_scalar(text: str) -> Any:
    """``key=value`` values are YAML scalars/lists: 0.1, true, null, [10, 20], "a b"."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _type_ok(tp, value) -> tuple[bool, Any]:
    """Check/coerce ``value`` against a dataclass field type; returns (ok, coerced)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        if value is None and type(None) in args:
            return True, None
        for a in args:
            if a is type(None):
                continue
            ok, v = _type_ok(a, value)
            if ok:
                return True, v
        return False, value
    if tp is Any:
        return True, value
    if origin is list:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for v in value:
            ok, c = _type_ok(args[0] if args else Any, v)
            if not ok:
                return False, value
            out.append(c)
        return True, out
    if origin is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    return True, value


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def set_field(obj, key: str, value: Any, prefix: str = "") -> None:
    """Set ``obj.key = value`` with validation; ``key`` may be dotted (``optim.lr``)."""
    full = f"{prefix}{key}"
    head, _, rest = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if head not in fields:
        raise ConfigError(
            f"unknown config key '{prefix}{head}'{did_you_mean(head, fields)}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    f = fields[head]
    current = getattr(obj, head)
    if rest:
        if dataclasses.is_dataclass(current):
            set_field(current, rest, value, prefix=f"{prefix}{head}.")
            return
        if isinstance(current, dict):
            current[rest] = value
            return
        raise ConfigError(f"config key '{prefix}{head}' has no sub-keys (got '{full}')")
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{full}' is a section: set its keys, e.g. {full}.<key>=...")
        for k, v in value.items():
            set_field(current, str(k), v, prefix=f"{full}.")
        return
    hints = typing.get_type_hints(type(obj))
    ok, coerced = _type_ok(hints[head], value)
    if not ok:
        raise ConfigError(f"bad value {value!r} for '{full}': expected {_type_name(hints[head])}")
    check_value(f.metadata, coerced, full)
    if isinstance(current, dict) and isinstance(coerced, dict):
        current.update(coerced)
        return
    setattr(obj, head, coerced)


def apply_dict(obj, values: dict[str, Any], prefix: str = "") -> None:
    for k, v in (values or {}).items():
        set_field(obj, str(k), v, prefix=prefix)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.1", "seed=1"]`` -> ``{"optim.lr": 0.1, "seed": 1}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"bad override '{item}': write key=value, e.g. budget.value=120")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_scalar(v)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        named = CONFIG_DIR / f"{path}.yaml"
        for cand in (named, CONFIG_DIR / "suites" / f"{path}.yaml", CONFIG_DIR / "presets" / f"{path}.yaml"):
            if cand.exists():
                p = cand
                break
        else:
            suites = sorted(q.stem for q in (CONFIG_DIR / "suites").glob("*.yaml"))
            raise ConfigError(f"config file '{path}' not found (looked in the working directory and {CONFIG_DIR})"
                              f"{did_you_mean(str(path), suites)}; built-in suites: {', '.join(suites)}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(d):
        d = dataclasses.asdict(d)
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
