"""SIGKILL mid-run, then --resume: every pretext method (issue 15) ends with the weights and buffers
of an uninterrupted run, bit for bit (permutation sets, seed patches, colour priors, instance
classifiers included). The eight killed runs are separate processes, started together; the
uninterrupted references and the resumes run in this process, on the same threads."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from test_methods_pretext import PRETEXT, run_cfg

from harness.data.sources import synthetic
from harness.train.trainer import Trainer

STEPS = 30
DRIVER = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
from harness.run.plugins import load_plugins
load_plugins()
from harness.data.domains import select_domains
from harness.data.sources import synthetic
from harness.train.config import from_dict
from harness.train.trainer import Trainer
cfg = from_dict(json.loads(sys.argv[1]))
ds = synthetic(n_train=64, n_test=16, image_size=16)
Trainer(cfg, select_domains(ds, cfg.data.domains) if cfg.data.domains else ds, sys.argv[2]).fit()
"""


def _step(path):
    try:
        s = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001  (not written yet)
        return -1, False
    return s["step"], s["finished"]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    kill_then_resume(tmp_path, PRETEXT, run_cfg)


def kill_then_resume(tmp_path, names, make_cfg):
    """Start one process per method in ``names`` (configs from ``make_cfg(name, steps=..., ...)``), SIGKILL
    each after its step-2 checkpoint, resume it here and compare with an uninterrupted run here."""
    from harness.train.config import to_dict

    PRETEXT = list(names)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    cfgs = {n: make_cfg(n, steps=STEPS, train__checkpoint_every_steps=1) for n in PRETEXT}
    procs = {n: subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(to_dict(cfgs[n])), str(tmp_path / n),
                                  str(torch.get_num_threads())], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
             for n in PRETEXT}
    killed_at = {}
    pending = set(PRETEXT)
    deadline = time.time() + 300
    while pending and time.time() < deadline:
        for n in sorted(pending):
            step, finished = _step(tmp_path / n / "checkpoint.pt")
            if step >= 2 or procs[n].poll() is not None:
                procs[n].send_signal(signal.SIGKILL)
                procs[n].wait()
                killed_at[n] = _step(tmp_path / n / "checkpoint.pt")
                pending.discard(n)
        time.sleep(0.005)
    for p in procs.values():
        if p.poll() is None:
            p.kill()
    assert not pending, f"no checkpoint appeared for {sorted(pending)}"
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    for n in PRETEXT:
        if cfgs[n].data.domains:            # two image domains (CUT): the same class selection as the driver's
            from harness.data.domains import select_domains

            ds = select_domains(synthetic(n_train=64, n_test=16, image_size=16), cfgs[n].data.domains)
        step, finished = killed_at[n]
        assert 2 <= step < STEPS and not finished, (n, killed_at[n], procs[n].stderr.read()[-500:])
        full = Trainer(cfgs[n], ds, tmp_path / f"{n}-full")
        full.fit()
        resumed = Trainer(cfgs[n], ds, tmp_path / n)
        resumed.fit(resume=True)
        assert resumed.step == full.step == STEPS
        a, b = full.method.state_dict(), resumed.method.state_dict()
        bad = [k for k in a if not torch.equal(a[k], b[k])]
        assert not bad, (n, bad)
