import sys
import textwrap

import pytest

from harness import registry
from harness.errors import ConfigError


def test_builtin_methods_have_family_and_paper():
    ms = registry.methods()
    assert {"simclr"} <= set(ms)
    for e in ms.values():
        assert e.family and e.paper


def test_unknown_method_suggests():
    with pytest.raises(ConfigError, match="did you mean 'simclr'"):
        registry.get_method("simclrr")


def test_third_party_plugin_through_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "my_ssl_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from harness.method import Method
        from harness.registry import register_method

        @dataclass
        class Cfg:
            x: int = 1

        @register_method("my_plugin_method", family="plugin", paper="Someone, 2026")
        class Mine(Method):
            Config = Cfg
    '''))
    dist = tmp_path / "my_ssl_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ssl-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sslbench.methods]\nmine = my_ssl_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        entry = registry.get_method("my_plugin_method")
        assert entry.family == "plugin" and entry.source == "my_ssl_plugin"
    finally:
        registry._METHODS.pop("my_plugin_method", None)
        sys.modules.pop("my_ssl_plugin", None)


def test_backbones_registry_and_timm_names():
    from harness.backbones import build_backbone

    m = build_backbone("resnet18_cifar", 3, 32)
    assert m.num_features == 512 and m.conv1.stride == (1, 1)
    v = build_backbone("vit_mini_p4", 1, 28)
    assert v.patch_embed.num_patches == 49
    t = build_backbone("resnet10t", 3, 32)  # any timm name, random init
    assert t.num_features > 0
    with pytest.raises(ConfigError, match="unknown backbone 'resnet19'"):
        build_backbone("resnet19", 3, 32)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar11'"):
        registry.get_dataset_factory("cifar11")
