"""`sslbench methods`: every built-in method has a family of the fixed vocabulary, a venue, and what it
needs; `-v` shows what each shipped preset overrides of the paper defaults. Expected values are read
from the method classes and the preset YAMLs, never written out here."""

import re

import pytest

from harness.core.config import CONFIG_DIR, load_yaml
from harness.core.errors import ConfigError
from harness.method.contract import DataInfo
from harness.method.registry import FAMILIES, RANDOM_INIT
from harness.run import plugins
from harness.run.method_table import WIDTH, format_value, method_card, methods_table, needs, preset_changes, preset_names

VENUE = re.compile(r"^(preprint|[A-Za-z]+ \d{4}(; [A-Za-z]+ \d{4})*)(, arXiv:\d{4}\.\d{4,5})?$")


def _builtins():
    return {n: e for n, e in plugins.methods().items() if e.source.startswith("methods.")}


def _block(text: str, name: str) -> list[str]:
    """The lines of one method in the listing: its row and the indented lines under it."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(name + " "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines))
    return lines[start:end]


def test_every_builtin_family_is_in_the_vocabulary():
    ms = _builtins()
    assert len(ms) >= 38
    assert len(set(FAMILIES)) == len(FAMILIES)
    for name, e in ms.items():
        assert e.family in FAMILIES, (name, e.family)
        assert e.cls.family == e.family
    # the families the field uses for the flagship methods
    fam = {n: e.family for n, e in ms.items()}
    assert fam["byol"] == fam["simsiam"] == fam["dino"] == "self-distillation"
    assert fam["swav"] == "clustering" and fam["barlow_twins"] == "redundancy reduction"
    assert fam["mae"] == "masked image modelling" and fam["rotnet"] == "pretext" and fam["supervised"] == "baseline"


def test_every_method_has_a_venue():
    for name, e in _builtins().items():
        assert e.venue == e.cls.venue
        if e.family == "baseline":
            continue
        assert VENUE.match(e.venue), (name, e.venue)


def test_the_listing_says_what_each_method_needs():
    text = methods_table()
    ms = _builtins()
    for name, e in ms.items():
        row = _block(text, name)[0]
        assert f" {e.family} " in row and f" {needs(e.cls)} " in row, row
    assert ms["mae"].cls.requires.vit and "ViT" in needs(ms["mae"].cls)
    assert ms["colorization"].cls.requires.color and "colour" in needs(ms["colorization"].cls)
    assert "labels" in needs(ms["supervised"].cls)
    assert needs(ms["simclr"].cls) == "any"
    assert _block(text, RANDOM_INIT)[0].split()[1] == "baseline"
    assert "ViT" in _block(text, "mae")[0] and "colour" in _block(text, "colorization")[0]


def test_the_listing_fits_the_terminal():
    for verbose in (False, True):
        assert max(len(ln) for ln in methods_table(verbose=verbose).splitlines()) <= WIDTH


def test_verbose_shows_paper_default_to_preset_value():
    small = load_yaml(CONFIG_DIR / "presets" / "small.yaml")
    text = methods_table(verbose=True)

    simclr = plugins.get_method("simclr").cls
    new = small["simclr"]["method_cfg.temperature"]
    old = simclr.Config().temperature
    assert old != new
    line = next(ln for ln in _block(text, "simclr") if ln.strip().startswith("method_cfg.temperature ") and "->" in ln)
    assert f"{format_value(old)} -> {format_value(new)}" in line
    line = next(ln for ln in _block(text, "simclr") if ln.strip().startswith("optim.name "))
    assert f"{simclr.optim.name} -> {small['simclr']['optim.name']}" in line

    # the paper LR follows the preset's batch size (BYOL's preset runs at another batch than 256)
    byol = plugins.get_method("byol").cls
    batch = small["byol"]["optim.batch_size"]
    assert batch != 256
    lr = next(c for c in preset_changes("byol", "small") if c.key == "optim.lr")
    assert lr.paper == pytest.approx(byol.optim.base_lr * batch / 256) and lr.value == small["byol"]["optim.lr"]
    line = next(ln for ln in _block(text, "byol") if ln.strip().startswith("optim.lr "))
    assert f"{format_value(lr.paper)} -> {format_value(lr.value)}" in line


def test_every_preset_key_is_a_key_of_its_method():
    ms = plugins.methods()
    for preset in preset_names():
        sections = set(load_yaml(CONFIG_DIR / "presets" / f"{preset}.yaml")) - {"defaults"}
        assert sections <= set(ms), sections - set(ms)
        for name in ms:
            assert [c.key for c in preset_changes(name, preset) if c.source == "unknown"] == [], (preset, name)


def test_declared_backbone_needs_are_what_the_methods_refuse():
    from harness.models.backbones import build_backbone

    info = DataInfo("synthetic", 3, 32, 64, 4, (0.5,) * 3, (0.25,) * 3)
    declared = {n: e.cls for n, e in _builtins().items() if e.cls.requires.convnet or e.cls.requires.backbone}
    assert {"colorization", "cpc_v2", "pixcontrast", "jigsaw_clustering", "convmae"} <= set(declared)
    vit = build_backbone("vit_mini_p4", 3, 32)
    for name, cls in declared.items():
        with pytest.raises(ConfigError):
            cls(vit, cls.make_config({}), info)
            pytest.fail(f"{name} declares a convnet/backbone need but took a ViT")
    convmae = plugins.get_method("convmae").cls
    with pytest.raises(ConfigError, match="convvit"):
        convmae(build_backbone("cnn4", 3, 32), convmae.make_config({}), info)


def test_one_method_card():
    e = plugins.get_method("colorization")
    card = method_card("colorization")
    assert e.venue in card and e.paper in card and "colour images" in card and f"({e.family})" in card
    assert "preset=small overrides" in card
    assert "random_init" in method_card(RANDOM_INIT)
    with pytest.raises(ConfigError, match="did you mean 'simclr'"):
        method_card("simclrr")
