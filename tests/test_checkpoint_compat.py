"""Checkpoints written before the layered layout still load: every method's state-dict keys and
shapes equal the ones the previous layout produced (tests/data/state_dict_keys.json, written by
the code at commit bae94e0 for the same configs)."""

import json
from pathlib import Path

import pytest
import torch

from harness.data.sources import synthetic
from harness.train.build import build_method, data_info
from harness.train.config import resolve

KEYS = json.loads((Path(__file__).parent / "data" / "state_dict_keys.json").read_text())


@pytest.mark.parametrize("name", sorted(KEYS))
def test_state_dict_keys_and_shapes_are_unchanged(name):
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    cfg = resolve({"method": name, "data.name": "synthetic", **KEYS[name]["overrides"]})
    torch.manual_seed(0)
    got = {k: list(v.shape) for k, v in build_method(cfg, data_info(ds)).state_dict().items()}
    assert got == KEYS[name]["keys"]
