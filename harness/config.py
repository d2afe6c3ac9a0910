"""Dataclass configs, YAML presets/suites and ``key=value`` overrides.

Precedence, lowest first: a method's paper defaults (its ``Config`` dataclass) -> a preset
YAML (small-image settings) -> a suite YAML -> ``key=value`` on the command line.
An unknown key or a bad value raises :class:`ConfigError` naming the key and the valid
choices.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError, did_you_mean

CONFIG_DIR = Path(__file__).parent / "configs"


def choices(*values: str, default: str):
    """A string field restricted to ``values``."""
    return field(default=default, metadata={"choices": values})


def positive(default, *, allow_zero: bool = False):
    return field(default=default, metadata={"min": 0, "strict": not allow_zero})


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    data_dir: str | None = None          # where the dataset lives; None = its standard place
    image_size: int | None = None        # resize for image folders; None = native size
    train_subset: int | None = None      # use only the first N train images (tests, smoke runs)
    test_subset: int | None = None


@dataclass
class BudgetConfig:
    """Exactly one budget per run; schedules are functions of progress in [0, 1]."""

    kind: str = choices("epochs", "steps", "samples", "seconds", "flops", default="seconds")
    value: float = positive(60.0)   # flops: training FLOPs (forward + backward, all processes), e.g. 2e15


@dataclass
class OptimConfig:
    name: str = choices("sgd", "lars", "adamw", default="sgd")
    lr: float | None = None              # None: the method's default base LR scaled by batch/256
    weight_decay: float | None = None    # None: the method's default
    momentum: float = 0.9
    lars_eta: float = field(default=0.001, metadata={"min": 0, "max": 1})  # LARS trust coefficient
    batch_size: int = positive(256)
    warmup: float = field(default=0.05, metadata={"min": 0, "max": 1})  # fraction of progress
    grad_clip: float | None = None       # max global grad norm; None = off


@dataclass
class TrainConfig:
    device: str = choices("auto", "cpu", "cuda", default="auto")
    precision: str = choices("auto", "bf16", "fp32", default="auto")
    channels_last: str = choices("auto", "on", "off", default="auto")
    # weight gradients of small-map, many-channel convs as one im2col GEMM instead of oneDNN's
    # bf16 backward-weights kernel, slow there; auto = on for CPU + bf16 + channels-last (harness/conv_wgrad.py)
    conv_wgrad: str = choices("auto", "gemm", "native", default="auto")
    checkpoint_every_steps: int | None = None
    checkpoint_every_seconds: float = positive(60.0)
    progress: bool = True
    threads: int | None = None           # torch.set_num_threads; None = torch's default
    max_steps_per_epoch: int | None = None


@dataclass
class EvalConfig:
    protocols: list[str] = field(default_factory=lambda: ["knn", "linear", "align_uniform"])
    knn_k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    knn_temperature: float = positive(0.07)
    knn_backend: str = choices("auto", "torch", "faiss", default="auto")  # auto: FAISS on GPU, exact torch GEMM on CPU
    knn_index: str = choices("flat", "ivf", "hnsw", default="flat")       # ivf/hnsw: approximate, for >= 1M features
    label_fractions: list[float] = field(default_factory=list)            # extra linear probes on e.g. [0.01, 0.1] of train
    batch_size: int = positive(512)
    linear_epochs: int = positive(30)
    features: str = choices("backbone", "projector", default="backbone")
    holdout_fraction: float = field(default=0.1, metadata={"min": 0, "max": 1, "strict": True})
    au_pairs: int = positive(4096)
    finetune_steps: int = positive(300)  # fine-tuning budget (steps of finetune_batch_size), per grid point
    finetune_batch_size: int = positive(256)
    semisup_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])  # SimCLR v2 protocol's label fractions
    distill_temperature: float = positive(1.0)


@dataclass
class TrackingConfig:
    uri: str | None = None               # None: $MLFLOW_TRACKING_URI, else sqlite under results/
    experiment: str = "sslbench"


@dataclass
class RunConfig:
    method: str = "simclr"
    backbone: str = "cnn4"
    seed: int = 0
    out_dir: str = "runs"                # checkpoints live under out_dir/<run name>
    preset: str | None = None            # a YAML under harness/configs/presets, e.g. "small"
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    method_cfg: dict[str, Any] = field(default_factory=dict)  # the method's own Config keys


PROTOCOLS = ("knn", "linear", "align_uniform", "linear_lbfgs", "finetune", "semisup")


# --------------------------------------------------------------------------- parsing


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
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
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
    meta = f.metadata
    if "choices" in meta and coerced not in meta["choices"]:
        raise ConfigError(
            f"bad value {value!r} for '{full}'{did_you_mean(str(value), meta['choices'])}; "
            f"valid choices: {', '.join(meta['choices'])}"
        )
    if coerced is not None and isinstance(coerced, (int, float)):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (coerced < lo or (meta.get("strict") and coerced == lo)):
            op = ">" if meta.get("strict") else ">="
            raise ConfigError(f"bad value {value!r} for '{full}': must be {op} {lo}")
        if hi is not None and coerced > hi:
            raise ConfigError(f"bad value {value!r} for '{full}': must be <= {hi}")
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
            raise ConfigError(f"config file '{path}' not found (looked in the working directory and {CONFIG_DIR})")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def preset_overrides(preset: str | None, method: str) -> dict[str, Any]:
    """A preset YAML has a ``defaults`` section and one section per method name."""
    if not preset:
        return {}
    path = CONFIG_DIR / "presets" / f"{preset}.yaml"
    if not path.exists():
        avail = sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml"))
        raise ConfigError(f"unknown preset '{preset}'{did_you_mean(preset, avail)}; valid choices: {', '.join(avail)}")
    data = load_yaml(path)
    out = dict(data.get("defaults") or {})
    out.update(data.get(method) or {})
    return out


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


def resolve(overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> RunConfig:
    """Build a RunConfig: preset (chosen by base/overrides) < base < overrides."""
    base = dict(base or {})
    overrides = dict(overrides or {})
    probe = RunConfig()
    apply_dict(probe, {k: v for k, v in {**base, **overrides}.items() if k in ("method", "preset")})
    cfg = RunConfig()
    apply_dict(cfg, preset_overrides(probe.preset, probe.method))
    apply_dict(cfg, base)
    apply_dict(cfg, overrides)
    cfg.method, cfg.preset = probe.method, probe.preset
    for p in cfg.eval.protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"bad value {p!r} in 'eval.protocols'{did_you_mean(p, PROTOCOLS)}; valid choices: {', '.join(PROTOCOLS)}")
    return cfg


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> RunConfig:
    cfg = RunConfig()
    apply_dict(cfg, d)
    return cfg
