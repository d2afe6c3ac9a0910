"""The agent loop (``sslbench rl``): the replay buffer's stacks and n-step returns against a hand
computation, the config's one-line errors, and a run on a real game (Breakout) killed by SIGKILL that
resumes from its checkpoint (networks, optimiser, replay buffer, counters) to exactly the weights,
returns and evaluation of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness.cli import main
from harness.core.errors import ConfigError
from harness.rl.agent import AgentLoop
from harness.rl.config import resolve_rl
from harness.rl.replay import ReplayBuffer
from harness.run.plugins import get_method


def test_replay_stacks_and_n_step_returns_match_a_hand_computation():
    rb = ReplayBuffer(capacity=64, n_step=3, gamma=0.5, side=2, stack=4)
    # episode A: transitions 0..4 (a stop after 2: a lost life), episode B starts at 5
    for t in range(10):
        first = 0 if t < 5 else 5
        rb.add(torch.full((2, 2), t, dtype=torch.uint8), action=t % 3, reward=float(t), stop=t in (2, 4), episode_first=first)
    obs = rb.observations(torch.tensor([0, 2, 6]))
    assert obs[:, :, 0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 1, 2], [5, 5, 5, 6]]   # clamped to the episode's start
    gen = torch.Generator().manual_seed(0)
    idx, o, a, ret, nxt, disc = rb.sample(256, gen)
    for i, r, d, n in zip(idx.tolist(), ret.tolist(), disc.tolist(), nxt[:, -1, 0, 0].tolist()):
        hand = {0: (0 + 0.5 * 1 + 0.25 * 2, 0.0), 1: (1 + 0.5 * 2, 0.0), 2: (2, 0.0), 3: (3 + 0.5 * 4, 0.0),
                4: (4, 0.0), 5: (5 + 0.5 * 6 + 0.25 * 7, 0.125), 6: (6 + 0.5 * 7 + 0.25 * 8, 0.125)}[i]
        assert abs(r - hand[0]) < 1e-6 and abs(d - hand[1]) < 1e-9, i
        if d > 0:
            assert n == i + 3                                           # bootstraps from o_{t+n}
    assert set(idx.tolist()) == set(range(7))                           # t + n must be stored
    state = rb.state_dict()
    back = ReplayBuffer(64, 3, 0.5, side=2, stack=4)
    back.load_state_dict(state)
    assert torch.equal(back.observations(torch.arange(10)), rb.observations(torch.arange(10)))


def test_config_errors_are_one_line(capsys):
    with pytest.raises(ConfigError, match="needs game=GAME"):
        resolve_rl({})
    with pytest.raises(ConfigError, match="eps_end <= eps_start"):
        resolve_rl({"game": "pong", "agent.eps_end": 0.5, "agent.eps_start": 0.2})
    assert main(["rl", "game=pong", "curl_weight=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslbench: error:") and "curl_weight" in err[0]


TINY = {"game": "breakout", "env_steps": 420, "agent.learn_start": 60, "agent.batch_size": 8, "agent.n_step": 3,
        "agent.target_update": 50, "agent.replay_capacity": 1000, "agent.eps_decay_steps": 200, "eval_episodes": 1,
        "checkpoint_every_seconds": 0, "progress": False, "threads": 1, "method_cfg.proj_hidden": 32,
        "method_cfg.proj_dim": 16, "agent.hidden": 32}
DRIVER = """
import json, sys, torch
torch.set_num_threads(1)
from harness.run.plugins import get_method
from harness.rl.agent import AgentLoop
from harness.rl.config import resolve_rl
AgentLoop(resolve_rl(json.loads(sys.argv[1])), get_method("curl").cls, sys.argv[2]).fit()
"""


def _state(path):
    try:
        s = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001  (not written yet)
        return -1, False
    return s["step"], s["finished"]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(TINY), str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, killed = time.time() + 240, None
    while time.time() < deadline and killed is None:
        step, finished = _state(tmp_path / "killed" / "checkpoint.pt")
        if step > 0 or proc.poll() is not None:      # the first episode end's checkpoint
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = _state(tmp_path / "killed" / "checkpoint.pt")
        time.sleep(0.005)
    if proc.poll() is None:
        proc.kill()
    assert killed is not None and 0 < killed[0] < TINY["env_steps"] and not killed[1], (killed, proc.stderr.read()[-500:])
    torch.set_num_threads(1)
    cls = get_method("curl").cls
    full = AgentLoop(resolve_rl(TINY), cls, tmp_path / "full")
    a = full.fit()
    resumed = AgentLoop(resolve_rl(TINY), cls, tmp_path / "killed")
    b = resumed.fit(resume=True)
    assert a.env_steps == b.env_steps == TINY["env_steps"] and a.returns == b.returns and a.eval_returns == b.eval_returns
    assert full.updates == resumed.updates == TINY["env_steps"] - TINY["agent.learn_start"] + 1
    sa, sb = full.agent.state_dict(), resumed.agent.state_dict()
    bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not bad, bad
    assert any(k.startswith("method.key_encoder.") for k in sa) and any(k.startswith("target.") for k in sa)


def test_rl_table_averages_seeds_per_configuration(tmp_path, capsys):
    from harness.tracking.runs import TrackedRun

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for seed, (last, ev) in enumerate([(1.0, 2.0), (3.0, 4.0)]):
        run = TrackedRun("rl", f"r{seed}", uri, params={"seed": seed, "env_steps": 100, "curl_weight": 1.0,
                                                        "backbone": "dqn_der"},
                         tags={"game": "pong", "method": "curl", "sslbench.config_id": "abcdef123"})
        run.log_metrics({"rl/return_last": last, "rl/eval_return": ev}, step=100)
        run.end("FINISHED")
    assert main(["rl-table", f"tracking.uri={uri}", "--out", str(tmp_path / "results")]) == 0
    md = (tmp_path / "results" / "rl" / "rl_returns.md").read_text()
    assert "| pong | curl (curl_weight=1.0) | dqn_der | 100 | 0,1 | abcdef | 2.00 ± " in md   # mean of 1 and 3
    assert "3.00 ± " in md and "(n=2)" in md
