"""Every built-in suite resolves, and every method of the all-method suites trains a step with the
small preset on both kinds of data the suites use: 1-channel 28 px (Fashion-MNIST) and
3-channel 32 px (CIFAR-10)."""

import math

import pytest

from harness.core.config import CONFIG_DIR
from harness.data.domains import select_domains
from harness.data.sources import synthetic
from harness.run.suites import load_suite, suite_configs
from harness.train.config import resolve
from harness.train.trainer import Trainer

SUITES = sorted(p.stem for p in (CONFIG_DIR / "suites").glob("*.yaml"))


@pytest.mark.parametrize("name", SUITES)
def test_builtin_suites_resolve(name):
    cfgs = suite_configs(load_suite(name), {})
    assert cfgs and all(c.tracking.experiment == load_suite(name).name for c in cfgs)


def _all_methods():
    return load_suite("fashion_mnist_all").methods


def test_all_method_suites_cover_every_registered_method():
    from harness.run.plugins import methods

    builtin = {n for n, e in methods().items() if e.source.startswith("methods.")}  # not ones tests register
    colour_only = {n for n in builtin if methods()[n].cls.requires.color}
    assert colour_only == {"colorization", "cmc"}
    clips_only = {n for n in builtin if getattr(methods()[n].cls.requires, "clips", False)}   # video: clips_cpu
    assert set(_all_methods()) == builtin - colour_only - clips_only   # 1-channel data: colour-only methods refuse it
    assert set(load_suite("cifar10_cpu").methods) == builtin - clips_only
    assert clips_only <= set(load_suite("clips_cpu").methods)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_every_method_trains_with_the_small_preset(channels, size, tmp_path):
    ds = synthetic(n_train=64, n_test=16, image_size=size, channels=channels)
    suite = load_suite("fashion_mnist_all" if channels == 1 else "cifar10_cpu")
    # the preset's 4000 surrogate classes need 4000 images; 64 synthetic ones hold 32 classes
    small_data = {"exemplar_cnn": {"method_cfg.num_classes": 32},
                  # the suite names its teacher as a run (EXPERIMENT/mae); here: the mae trained just above
                  "feature_distillation": {"method_cfg.teacher": str(tmp_path / f"mae-{channels}" / "checkpoint.pt")},
                  # the suites' class names (cat, dog) are not synthetic's: two of its class indices instead
                  "cut": {"data.domains": ["0", "1"], "optim.batch_size": 16}}
    failures = []
    for m in suite.methods:
        over = {**suite.common, **suite.per_method.get(m, {}), "method": m, "data.name": "synthetic",
                "budget.kind": "steps", "budget.value": 1, "optim.batch_size": 32, "train.progress": False,
                **small_data.get(m, {})}
        cfg = resolve(over)
        try:
            data = select_domains(ds, cfg.data.domains) if cfg.data.domains else ds   # as load_dataset does
            res = Trainer(cfg, data, tmp_path / f"{m}-{channels}").fit()
            if not math.isfinite(res.final_loss):
                failures.append(f"{m}: loss {res.final_loss}")
        except Exception as e:  # noqa: BLE001 - collect every method's failure in one report
            failures.append(f"{m}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def test_run_methods_option_selects_validates_and_expands_all():
    from harness.cli import _method_list
    from harness.core.errors import ConfigError
    from harness.run.plugins import methods

    assert _method_list("simclr, byol") == ["simclr", "byol"]
    assert _method_list("all") == list(methods())
    with pytest.raises(ConfigError, match="unknown method 'simclx'.*valid choices"):
        _method_list("simclr,simclx")
