"""Distributed correctness: two processes (torchrun, gloo, CPU) compute the same loss and the same
gradients as one process on the same global batch, for methods whose losses need the whole batch
(in-batch negatives, cross-correlation, Sinkhorn codes) and global BatchNorm; and so do two "nodes"
(two torchrun launches, --nnodes=2, one rendezvous on 127.0.0.1), each rank seeing its global rank."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

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


def _assert_same_step(single, ddp, method, world=2):
    assert single["world"] == 1 and ddp["world"] == world
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


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_process(results, method):
    single, ddp = results[method]
    _assert_same_step(single, ddp, method)


# ----------------------------------------------------------------------------- two nodes on one machine

NODE_METHOD = "simclr"     # its loss needs every node's negatives (gather with gradient) and global BN
NODE_TIMEOUT = 150         # seconds for the whole two-node launch (it takes ~10 s on 2 cores)

# the worker each node's torchrun starts: the same ddp_step.py, with init_from_env wrapped to write down
# what this rank saw (torchrun's env and the process group's rank / world size), and an alarm so that a
# worker orphaned by a killed torchrun (its workers live in their own sessions) cannot outlive the test
NODE_WORKER = """
import json, os, runpy, signal, sys
signal.alarm({timeout})
from harness.core import distributed as d
_init = d.init_from_env
def _spy(device):
    ok = _init(device)
    env = {{k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")}}
    seen = {{"node": int(os.environ["SSLBENCH_TEST_NODE"]), "env": env, "rank": d.rank(),
             "world": d.world_size(), "is_main": d.is_main(), "initialised": ok}}
    with open(os.path.join(sys.argv[1], "rank_%d.json" % d.rank()), "w") as f:
        json.dump(seen, f)
    return ok
d.init_from_env = _spy
runpy.run_path({script!r}, run_name="__main__")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args(rdzv: str, node: int, port: int) -> list[str]:
    if rdzv == "static":      # what a cluster runs with a fixed head node: MASTER_ADDR/PORT + --node_rank
        return [f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}"]
    # c10d rendezvous (torchrun's recommended multi-node form): node ranks are assigned at the rendezvous
    return ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=sslbench-test-{port}"]


def _stop(p: subprocess.Popen) -> None:
    """SIGTERM torchrun (it stops its workers), then SIGKILL it if it has not gone within 15 s."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _launch_two_nodes(rdzv: str, out, worker) -> tuple[list, bool, list[str]]:
    """Start node 0 and node 1 (one torchrun each, concurrently); returns their exit codes, whether the
    launch ran past NODE_TIMEOUT, and each node's output. A node that fails stops the other at once."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = _free_port()
    procs, logs, timed_out = [], [], False
    try:
        for node in (0, 1):
            logs.append(open(out / f"node{node}.log", "w"))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   "--max_restarts=0", *_node_args(rdzv, node, port), str(worker), str(out), NODE_METHOD]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**env, "SSLBENCH_TEST_NODE": str(node)},
                                          stdout=logs[-1], stderr=subprocess.STDOUT))
        deadline = time.monotonic() + NODE_TIMEOUT
        while True:
            rcs = [p.poll() for p in procs]
            if all(rc is not None for rc in rcs) or any(rc not in (None, 0) for rc in rcs):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            _stop(p)
        for f in logs:
            f.close()
    return [p.returncode for p in procs], timed_out, [(out / f"node{n}.log").read_text() for n in range(len(procs))]


@pytest.fixture(scope="module")
def node_reference(tmp_path_factory):
    one = tmp_path_factory.mktemp("node_ref")
    _run([sys.executable, SCRIPT, str(one), NODE_METHOD], one)
    return torch.load(one / f"{NODE_METHOD}.pt")


@pytest.mark.parametrize("rdzv", ["static", "c10d"])
def test_two_nodes_equal_one_process(node_reference, tmp_path, rdzv):
    """Two 'nodes' (--nnodes=2 --nproc_per_node=1, two torchrun launches on one machine) train one
    step to the same loss and gradients as one process, and each rank sees its global rank."""
    worker = tmp_path / "node_worker.py"
    worker.write_text(NODE_WORKER.format(timeout=NODE_TIMEOUT + 30, script=SCRIPT))
    for attempt in range(2):       # once more with a new port if another process took the one picked
        out = tmp_path / f"try{attempt}"
        out.mkdir()
        rcs, timed_out, logs = _launch_two_nodes(rdzv, out, worker)
        busy = any("address already in use" in log.lower() or "eaddrinuse" in log.lower() for log in logs)
        if rcs == [0, 0] or not busy:
            break
    tails = "\n".join(f"--- node {n} (exit {rc}), last lines:\n{log[-2500:]}" for n, (rc, log) in enumerate(zip(rcs, logs)))
    assert not timed_out and rcs == [0, 0], \
        f"two-node torchrun ({rdzv}) {'ran past %d s' % NODE_TIMEOUT if timed_out else 'failed'}: exit codes {rcs}\n{tails}"
    seen = {r: json.loads((out / f"rank_{r}.json").read_text()) for r in (0, 1)}
    for r, s in seen.items():
        # the global rank (not LOCAL_RANK, 0 on both nodes) decides the batch slice and the one writer
        assert s["initialised"] and s["rank"] == r and s["world"] == 2 and s["is_main"] == (r == 0), (r, s)
        assert s["env"] == {"RANK": str(r), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
                            "GROUP_RANK": str(s["node"])}, (r, s)
    assert {s["node"] for s in seen.values()} == {0, 1}, seen     # one rank on each node
    if rdzv == "static":
        assert all(s["node"] == r for r, s in seen.items()), seen  # --node_rank=0 holds global rank 0
    _assert_same_step(node_reference, torch.load(out / f"{NODE_METHOD}.pt"), NODE_METHOD)


def test_init_from_env_uses_local_rank_for_the_gpu_and_rank_for_the_rest(monkeypatch):
    """On node 1 of two with two GPUs each, global rank 3 is LOCAL_RANK 1: it takes cuda:1, and the
    process group (hence rank(), is_main(), the batch slice) gets its rank from RANK, via torchrun's env."""
    import harness.core.distributed as hd

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(hd.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(hd.dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(hd.torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    assert hd.init_from_env("cuda")
    assert ("init", {"backend": "nccl"}) in calls and ("set_device", 1) in calls
    calls.clear()
    assert hd.init_from_env("cpu")
    assert calls == [("init", {"backend": "gloo"})]


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
