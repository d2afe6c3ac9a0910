import sys
import textwrap

import pytest

from harness.core.errors import ConfigError
from harness.data.sources import DATASETS
from harness.method.registry import METHODS
from harness.run import plugins


def test_builtin_methods_have_family_and_paper():
    ms = plugins.methods()
    assert {"simclr"} <= set(ms)
    for e in ms.values():
        assert e.family and e.paper


def test_unknown_method_suggests():
    with pytest.raises(ConfigError, match="did you mean 'simclr'"):
        plugins.get_method("simclrr")


def test_third_party_plugin_through_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "my_ssl_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        import torch.nn.functional as F

        from harness import Method, OptimDefaults, ViewRecipe, mlp, positive, register_method

        @dataclass
        class Cfg:
            temperature: float = positive(0.5)

        @register_method("my_plugin_method", family="plugin", paper="Someone, 2026")
        class Mine(Method):
            """Two views, cosine of their projections pulled together (a toy objective on the public API)."""
            Config = Cfg
            optim = OptimDefaults("adamw", base_lr=1e-3, weight_decay=0.0)

            def __init__(self, backbone, cfg, info):
                super().__init__(backbone, cfg, info)
                self.head = mlp(backbone.num_features, 32, 16)

            def view_recipe(self, info):
                return ViewRecipe.simclr(info.image_size)

            def training_step(self, batch, step):
                z1, z2 = (F.normalize(self.head(self.backbone(x)), dim=1) for x in batch.views.images)
                return {"loss": -(z1 * z2).sum(1).mean() / self.cfg.temperature}
    '''))
    dist = tmp_path / "my_ssl_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ssl-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sslbench.methods]\nmine = my_ssl_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", False)
    try:
        entry = plugins.get_method("my_plugin_method")
        assert entry.family == "plugin" and entry.source == "my_ssl_plugin"
        # it trains like a built-in: its declared optimiser, its config validated by field metadata
        from harness.data.sources import synthetic
        from harness.train.config import resolve
        from harness.train.trainer import Trainer

        ds = synthetic(n_train=64, n_test=32, image_size=16)
        keys = {"method": "my_plugin_method", "data.name": "synthetic", "budget.kind": "steps", "budget.value": 2,
                "optim.batch_size": 16, "train.progress": False, "train.precision": "fp32"}
        cfg = resolve(keys)
        tr = Trainer(cfg, ds, tmp_path / "run")
        assert type(tr.optimizer).__name__ == "AdamW" and tr.base_lr == pytest.approx(1e-3 * 16 / 256)
        assert tr.fit().steps == 2
        with pytest.raises(ConfigError, match="method_cfg.temperature"):
            Trainer(resolve({**keys, "method_cfg.temperature": -1}), ds, tmp_path / "bad")
    finally:
        METHODS._items.pop("my_plugin_method", None)
        sys.modules.pop("my_ssl_plugin", None)


def test_backbones_registry_and_timm_names():
    from harness.models.backbones import build_backbone

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
        DATASETS.get("cifar11")
