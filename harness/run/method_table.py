"""What ``sslbench methods`` prints: every method with its family, what it needs, its paper and venue;
``-v`` adds each method's paper defaults and what every shipped preset overrides of them;
``sslbench methods NAME`` is one method's full card.

Everything here is read from the plugins (the registry entries, each method's ``Config`` dataclass,
``optim`` and ``requires``) and from the preset YAMLs (``harness/configs/presets/*.yaml``, applied by
:func:`harness.train.config.preset_overrides`, the same function a run uses), so the listing
cannot drift from what a run gets. Nothing here loads data or builds a model.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

from harness.core.config import CONFIG_DIR, flatten
from harness.method.registry import FAMILIES, RANDOM_INIT, MethodEntry
from harness.models.backbones import BACKBONES
from harness.run.plugins import get_method, methods
from harness.train.config import RunConfig, preset_overrides
from harness.train.optim import effective_optim

WIDTH = 120          # the listing fits a 120-column terminal
INDENT = "    "
_UNKNOWN = object()  # a preset key the method does not have
_OPTIM_PAPER = ("name", "weight_decay", "momentum", "betas", "lars_eta")   # optim.* keys the method declares


# ----------------------------------------------------------------------------- values and needs


def format_value(v: Any) -> str:
    """A config value as the YAML presets write it: true/false, none, 0.0005, [0.9, 0.95]."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v) if v != "" else '""'


def _same(a: Any, b: Any) -> bool:
    def norm(x):
        return tuple(x) if isinstance(x, list) else x

    return a is not _UNKNOWN and norm(a) == norm(b)


def needs(cls: type) -> str:
    """The short column: what the method needs before any data loads, e.g. "ViT; >=16 px"; "any" if nothing."""
    r = cls.requires
    parts = []
    if r.vit:
        parts.append("ViT")
    elif getattr(r, "backbone", ""):
        parts.append(r.backbone)
    elif getattr(r, "convnet", False):
        parts.append("convnet")
    if r.color:
        parts.append("colour")
    if r.min_image_size:
        parts.append(f">={r.min_image_size} px")
    if getattr(r, "captions", False):
        parts.append("captions")
    if getattr(r, "domains", False):
        parts.append("two domains")
    if getattr(r, "clips", False):
        parts.append("video clips")
    if getattr(cls, "uses_labels", False):
        parts.append("labels")
    return "; ".join(parts) or "any"


def _needs_long(cls: type) -> list[str]:
    r = cls.requires
    if r.vit:
        bb = "a ViT backbone (vit_mini_p4, vit_tiny_p4 or a timm VisionTransformer)"
    elif getattr(r, "backbone", ""):
        names = [n for n in BACKBONES.names() if n.startswith(r.backbone)]
        bb = f"its {r.backbone} backbone ({', '.join(names) or r.backbone})"
    elif getattr(r, "convnet", False):
        bb = "a convolutional backbone (cnn4, cnn4_wide, resnet18_cifar, resnet50_cifar, a timm ResNet), not a ViT"
    else:
        bb = "any backbone (convnet or ViT)"
    channels = "colour images (3 channels): grayscale datasets are refused" if r.color else \
        "any number of channels (no colour augmentation; Atari frame stacks: 4)" if getattr(r, "any_channels", False) \
        else "1- or 3-channel images"
    out = [bb, channels,
           f"images of at least {r.min_image_size} px" if r.min_image_size else "any image size"]
    if getattr(r, "captions", False):
        out.append("captions (data.captions: a CSV/JSONL file, or templated from the class labels: then label-using)")
    if getattr(r, "domains", False):
        out.append("two image domains (data.domains=[A,B] of a labelled dataset: then label-using; or "
                   "data.name=unpaired: trainA/ trainB/ testA/ testB/ folders)")
    if getattr(r, "clips", False):
        out.append("video clips (data.name=moving_fashion_mnist, clips or clipfolder); their optical flow is computed "
                   "once (OpenCV Farnebäck) and cached")
    if getattr(cls, "uses_labels", False):
        out.append("class labels (a baseline, not self-supervised)")
    return out


# ----------------------------------------------------------------------------- paper defaults and presets


def preset_names() -> list[str]:
    """The shipped presets (``harness/configs/presets/*.yaml``), by name."""
    return sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml"))


@dataclass(frozen=True)
class Override:
    """One key a preset sets for a method: the value a run would get without it (``paper``; from the
    method's ``Config`` / ``optim`` or, ``source == "harness"``, the harness-wide default) and the preset's."""

    key: str
    paper: Any
    value: Any
    source: str = "paper"      # paper | harness | unknown (the method has no such key)
    note: str = ""             # e.g. how the paper LR follows the batch size

    @property
    def changed(self) -> bool:
        return not _same(self.paper, self.value)


def _default_of(cls: type, key: str, batch_size: int) -> tuple[Any, str, str]:
    """(the value without any preset, its source, a note) for a config key of this method."""
    if key.startswith("method_cfg."):
        cfg = flatten(cls.Config())
        sub = key[len("method_cfg."):]
        return (cfg[sub], "paper", "") if sub in cfg else (_UNKNOWN, "unknown", "not a key of this method")
    if key == "optim.lr":
        base = cls.optim.base_lr
        return base * batch_size / 256, "paper", f"{format_value(base)} x batch/256 at batch {batch_size}"
    if key.startswith("optim.") and key[len("optim."):] in _OPTIM_PAPER:
        return getattr(cls.optim, key[len("optim."):]), "paper", ""
    defaults = flatten(RunConfig())
    if key in defaults:
        return defaults[key], "harness", "harness default"
    return _UNKNOWN, "unknown", "not a config key"


def preset_changes(name: str, preset: str) -> list[Override]:
    """Every key ``preset`` sets for method ``name`` (its ``defaults`` section, then the method's own),
    each with the value it replaces."""
    cls = get_method(name).cls
    keys = preset_overrides(preset, name)
    batch = int(keys.get("optim.batch_size", RunConfig().optim.batch_size))
    out = []
    for k, v in keys.items():
        old, source, note = _default_of(cls, k, batch)
        out.append(Override(k, old, v, source, note))
    return out


def _optimizer_line(cls: type) -> str:
    batch = RunConfig().optim.batch_size
    opt = effective_optim(cls.optim, RunConfig().optim)   # what a run gets without a preset or override
    betas = f", betas {format_value(opt.betas)}" if opt.name == "adamw" else ""
    eta = f", trust coefficient {opt.lars_eta:g}" if opt.name == "lars" else ""
    mom = f", momentum {opt.momentum:g}" if opt.name != "adamw" else ""
    return (f"optimizer {opt.name}: lr {format_value(cls.optim.base_lr)} x batch/256 (= {opt.lr:g} at batch {batch}), "
            f"weight decay {opt.weight_decay:g}{mom}{betas}{eta}; no decay on biases/norms")


def _defaults_block(cls: type, indent: str) -> list[str]:
    lines = [f"{indent}paper defaults:"]
    lines += [f"{indent}  method_cfg.{k} = {format_value(v)}" for k, v in flatten(cls.Config()).items()]
    lines += textwrap.wrap(_optimizer_line(cls), WIDTH, initial_indent=indent + "  ", subsequent_indent=indent + "    ")
    return lines


def _presets_block(name: str, indent: str) -> list[str]:
    lines = []
    for preset in preset_names():
        changes = preset_changes(name, preset)
        changed = [c for c in changes if c.changed]
        same = [c for c in changes if not c.changed]
        if not changed:
            lines.append(f"{indent}preset={preset}: overrides nothing of this method")
        else:
            lines.append(f"{indent}preset={preset} overrides (paper default -> preset value):")
            kw = max(len(c.key) for c in changed)
            cells = [f"{format_value(c.paper) if c.paper is not _UNKNOWN else '?'} -> {format_value(c.value)}"
                     for c in changed]
            vw = max(len(s) for s in cells)
            for c, cell in zip(changed, cells):
                note = f"   ({c.note})" if c.note else ""
                line = f"{indent}  {c.key.ljust(kw)}  {cell.ljust(vw)}{note}".rstrip()
                if len(line) > WIDTH and note:     # a long value (a list): the note goes on a line of its own
                    line = f"{indent}  {c.key.ljust(kw)}  {cell}\n{indent}  {' ' * kw}  {note.strip()}"
                lines += line.split("\n")
        if same:
            text = "already the default: " + ", ".join(f"{c.key} = {format_value(c.value)}" for c in same)
            lines += textwrap.wrap(text, WIDTH, initial_indent=indent + "  ", subsequent_indent=indent + "    ")
    return lines


# ----------------------------------------------------------------------------- the listing and the card


@dataclass(frozen=True)
class _Row:
    name: str
    family: str
    needs: str
    paper: str
    venue: str
    note: str = ""          # a third-party plugin's module


def _random_init_row() -> _Row:
    return _Row(RANDOM_INIT, "baseline", "any", "an untrained encoder of the same backbone (the floor)", "")


def _rows() -> list[tuple[_Row, MethodEntry | None]]:
    entries = list(methods().values())
    rank = {f: i for i, f in enumerate(FAMILIES)}
    entries.sort(key=lambda e: rank.get(e.family, len(FAMILIES)))   # stable: by name within a family
    rows = []
    for e in entries:
        venue = e.venue or getattr(e.cls, "venue", "") or ("" if e.family == "baseline" else "venue not given")
        note = "" if e.source.startswith("methods.") else f"[plugin: {e.source}]"
        rows.append((_Row(e.name, e.family, needs(e.cls), e.paper, venue, note), e))
    at = max((i + 1 for i, (r, _) in enumerate(rows) if r.family == "baseline"), default=len(rows))
    rows.insert(at, (_random_init_row(), None))
    return rows


def _paper_lines(row: _Row, width: int) -> list[str]:
    """The paper column: "paper, venue" on one line if it fits, else the venue on its own line(s)."""
    tail = " ".join(t for t in (row.venue, row.note) if t)
    one = f"{row.paper}, {tail}" if tail else row.paper
    if len(one) <= width:
        return [one]
    def wrap(s: str) -> list[str]:
        return textwrap.wrap(s, width, break_long_words=False) or [""]

    return wrap(row.paper) + (wrap(tail) if tail else [])


def methods_table(verbose: bool = False, width: int = WIDTH) -> str:
    """The whole listing of ``sslbench methods`` (``-v``: with paper defaults and preset overrides)."""
    rows = _rows()
    head = ("method", "family", "needs")
    w = [max(len(h), *(len(getattr(r, f)) for r, _ in rows)) for h, f in zip(head, ("name", "family", "needs"))]
    left = sum(w) + 2 * len(w)
    pw = max(30, width - left)
    out = ["  ".join(h.ljust(n) for h, n in zip(head, w)) + "  paper, venue"]
    for row, entry in rows:
        lines = _paper_lines(row, pw)
        out.append(f"{row.name.ljust(w[0])}  {row.family.ljust(w[1])}  {row.needs.ljust(w[2])}  {lines[0]}")
        out += [" " * left + ln for ln in lines[1:]]
        if verbose:
            if entry is None:
                out.append(f"{INDENT}nothing to train or configure: 'sslbench eval BACKBONE', or random_init: true in a suite")
            else:
                out += _defaults_block(entry.cls, INDENT)
                out += _presets_block(entry.name, INDENT)
    foot = (f"{len(rows) - 1} methods and the random-init rows. needs: ViT / convnet / convvit = the only backbones it "
            "takes (else any), colour = 3-channel images, >=N px = the smallest image size, labels = it trains on class "
            "labels, captions = it learns from captions (data.captions). 'sslbench methods -v': each method's paper defaults and what each preset overrides of them; "
            "'sslbench methods NAME': one method's card.")
    return "\n".join(out + [""] + textwrap.wrap(foot, width))


def method_card(name: str, width: int = WIDTH) -> str:
    """One method's full card: family, paper, venue, needs, source, paper defaults, preset overrides."""
    if name == RANDOM_INIT:
        r = _random_init_row()
        return "\n".join([
            f"{r.name}  ({r.family})", f"  what:    {r.paper}",
            "  needs:   any backbone (a registered name or any timm model name), any data",
            "  run:     'sslbench eval BACKBONE' scores one; every suite adds one per backbone (random_init: true)",
        ])
    e = get_method(name)
    venue = e.venue or getattr(e.cls, "venue", "") or ("none (a baseline)" if e.family == "baseline" else "not given")
    fam = e.family if e.family in FAMILIES else f"{e.family} (not one of: {', '.join(FAMILIES)})"
    lines = [f"{e.name}  ({fam})", f"  paper:   {e.paper}", f"  venue:   {venue}"]
    lines += [("  needs:   " if i == 0 else " " * 11) + text for i, text in enumerate(_needs_long(e.cls))]
    lines.append(f"  source:  {e.source}" + ("" if e.source.startswith("methods.") else " (third-party plugin)"))
    lines += _defaults_block(e.cls, "  ")
    lines += _presets_block(e.name, "  ")
    return "\n".join(lines)
