import pytest

from harness.core.config import flatten, parse_overrides
from harness.core.errors import ConfigError
from harness.train.config import RunConfig, resolve


def test_defaults_and_overrides():
    cfg = resolve(parse_overrides(["optim.lr=0.1", "budget.kind=steps", "budget.value=10", "eval.knn_k=[20, 200]", "seed=3"]))
    assert cfg.optim.lr == 0.1 and cfg.budget.kind == "steps" and cfg.budget.value == 10.0
    assert cfg.eval.knn_k == [20, 200] and cfg.seed == 3
    assert flatten(cfg)["optim.lr"] == 0.1


@pytest.mark.parametrize("item, fragment", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
    ("budget.kind=hours", "valid choices: epochs, steps, samples, seconds"),
    ("budget.value=-5", "must be > 0"),
    ("budget.value=abc", "expected float"),
    ("seed=1.5", "expected int"),
    ("nosuchsection.x=1", "unknown config key 'nosuchsection'"),
    ("optim=3", "is a section"),
    ("eval.protocols=[knn, nope]", "valid choices: knn, knn_lightly, linear, linear_lbfgs, finetune, semisup, align_uniform"),
])
def test_bad_values_name_the_key(item, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        resolve(parse_overrides([item]))


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["optim.lr"])


def test_preset_precedence():
    # preset < base (suite) < overrides
    cfg = resolve({"method": "simclr", "preset": "small"})
    assert cfg.method_cfg["temperature"] == 0.2
    cfg = resolve({"method_cfg.temperature": 0.5}, base={"method": "simclr", "preset": "small", "method_cfg.temperature": 0.3})
    assert cfg.method_cfg["temperature"] == 0.5
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve({"preset": "tiny"})


def test_method_config_validated():
    from harness.run.plugins import get_method

    cls = get_method("simclr").cls
    assert cls.make_config({"temperature": 0.3}).temperature == 0.3
    with pytest.raises(ConfigError, match="unknown config key 'method_cfg.temp'"):
        cls.make_config({"temp": 0.3})


def test_roundtrip_dict():
    from harness.train.config import from_dict, to_dict

    cfg = resolve({"optim.lr": 0.2, "method_cfg.temperature": 0.4})
    assert from_dict(to_dict(cfg)) == cfg
    assert isinstance(RunConfig().eval.protocols, list)
