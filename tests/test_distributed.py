"""Distributed correctness: two processes (torchrun, gloo, CPU) compute the same loss and the same
gradients as one process on the same global batch, for methods whose losses need the whole batch
(in-batch negatives, cross-correlation, Sinkhorn codes) and global BatchNorm."""

import os
import subprocess
import sys

import pytest
import torch

from harness.core.distributed import GlobalBatchNorm, convert_to_global_bn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "helpers", "ddp_step.py")
METHODS = ["simclr", "moco_v3", "swav", "barlow_twins"]


def _run(cmd, tmp):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    _run([sys.executable, SCRIPT, str(one), *METHODS], one)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, str(two), *METHODS], two)
    return {m: (torch.load(one / f"{m}.pt"), torch.load(two / f"{m}.pt")) for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_process(results, method):
    single, ddp = results[method]
    assert single["world"] == 1 and ddp["world"] == 2
    assert ddp["global_bn"] and not single["global_bn"]
    assert abs(single["loss"] - ddp["loss"]) <= 1e-5 * max(1.0, abs(single["loss"])), (single["loss"], ddp["loss"])
    assert single["grads"].keys() == ddp["grads"].keys() and len(single["grads"]) > 10
    # per tensor, with the tolerance scaled to the largest gradient of the model: a bias feeding a
    # BatchNorm has a true gradient of 0, and both runs show only float rounding there
    top = max(g.abs().max().item() for g in single["grads"].values())
    for name, g in single["grads"].items():
        h = ddp["grads"][name]
        assert torch.allclose(g, h, rtol=1e-3, atol=1e-5 * top), f"{method}: gradient of {name} differs " \
            f"(max |diff| {(g - h).abs().max().item():.3g}, max |g| {g.abs().max().item():.3g}, model max {top:.3g})"
    flat1 = torch.cat([g.flatten() for g in single["grads"].values()])
    flat2 = torch.cat([ddp["grads"][n].flatten() for n in single["grads"]])
    assert (flat1 - flat2).norm() <= 1e-4 * flat1.norm()

def test_global_bn_is_plain_bn_on_one_process():
    torch.manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    ref.load_state_dict(bn.state_dict())
    convert_to_global_bn(bn)
    assert isinstance(bn[1], GlobalBatchNorm)
    x = torch.randn(8, 3, 5, 5)
    assert torch.allclose(bn(x), ref(x))
    assert torch.allclose(bn[1].running_var, ref[1].running_var)
    assert set(bn.state_dict()) == set(ref.state_dict())
