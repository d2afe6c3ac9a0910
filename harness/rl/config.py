"""The agent loop's config (``sslbench rl key=value ...``): the game, the env-step budget, the CURL weight,
the agent's settings (``agent.*``), CURL's own (``method_cfg.*``), tracking and checkpoints.

Defaults are CURL's Atari agent (its code, curl_rainbow: data-efficient Rainbow, van Hasselt et al.,
2019) where this agent keeps the part, and the Atari 100k budget (100,000 agent steps = 400,000
frames). Precedence, lowest first: these defaults -> ``--config NAME`` (a YAML file, or one of
``harness/configs/rl/``: ``breakout_cpu``, the CPU budget) -> ``key=value``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.config import CONFIG_DIR, apply_dict, between, choices, load_yaml, ordered, positive, validate
from harness.core.errors import ConfigError, did_you_mean
from harness.core.schema import TrackingConfig


@dataclass
class AgentConfig:
    """A double DQN with dueling heads, n-step returns and a uniform replay buffer, epsilon-greedy."""

    lr: float = positive(1e-4)                 # Adam (curl_rainbow)
    adam_eps: float = positive(1.5e-4)
    batch_size: int = positive(32)
    gamma: float = between(0.99, 0, 1)
    n_step: int = positive(20)                 # multi-step return (data-efficient Rainbow: 20)
    target_update: int = positive(2000)        # env steps between copies of the online network to the target
    learn_start: int = positive(1600)          # env steps of experience before the first update
    update_every: int = positive(1)            # env steps per update (replay frequency)
    replay_capacity: int = positive(100_000)   # transitions kept (frames stored once, stacked on sampling)
    grad_clip: float = positive(10.0)          # max global gradient norm
    hidden: int = positive(256)                # the dueling heads' hidden width
    # epsilon-greedy exploration (data-efficient Rainbow explores by noisy nets; this agent does not have them):
    # linear from eps_start to eps_end over eps_decay_steps env steps
    eps_start: float = between(1.0, 0, 1)
    eps_end: float = between(0.1, 0, 1)
    eps_decay_steps: int = positive(5000)
    life_loss_terminal: bool = True            # a lost life ends the bootstrapped return (the episode goes on)
    reward_clip: float = positive(1.0, allow_zero=True)   # rewards clipped to [-c, c] for learning (0: no clip)

    checks = (ordered("eps_end", "eps_start"),)


@dataclass
class RLConfig:
    game: str | None = None                    # an ale-py ROM id: breakout, pong, ... (required)
    seed: int = 0
    backbone: str = "dqn_der"                  # the encoder shared by the Q-network and CURL
    env_steps: int = positive(100_000)         # the budget: agent steps (4 frames each); Atari 100k
    curl_weight: float = positive(1.0, allow_zero=True)   # the CURL loss's weight beside the Q loss; 0: off
    method_cfg: dict[str, Any] = field(default_factory=dict)   # CURL's config keys (methods/curl.py)
    agent: AgentConfig = field(default_factory=AgentConfig)
    last_episodes: int = positive(10)          # the reported training return: mean over the last K episodes
    eval_episodes: int = positive(5)           # evaluation at the end: seeded episodes, epsilon-greedy ...
    eval_epsilon: float = between(0.05, 0, 1)  # ... with this epsilon
    device: str = choices("auto", "cpu", "cuda", default="auto")
    threads: int | None = positive(None)       # torch.set_num_threads; None = torch's default
    checkpoint_every_seconds: float = positive(60.0, allow_zero=True)   # at the first episode end after this long
    progress: bool = True
    out_dir: str = "runs"
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="rl"))


# what does not change a result (left out of the run's identity)
NOT_RESULT = ("tracking.", "out_dir", "progress", "checkpoint_every_seconds", "threads", "device")
RL_CONFIGS = CONFIG_DIR / "rl"         # named agent configs (--config NAME)


def load_rl_yaml(spec: str) -> dict[str, Any]:
    """``--config``: a YAML file, or the name of one in ``harness/configs/rl/``."""
    if Path(spec).exists():
        return load_yaml(spec)
    named = RL_CONFIGS / f"{spec}.yaml"
    if named.exists():
        return load_yaml(named)
    avail = sorted(p.stem for p in RL_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"agent config '{spec}' not found (a YAML file, or one of harness/configs/rl/: "
                      f"{', '.join(avail)}){did_you_mean(spec, avail)}")


def resolve_rl(overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> RLConfig:
    """The config: defaults < ``base`` (a YAML's keys) < ``overrides``, every key checked."""
    cfg = RLConfig()
    apply_dict(cfg, base or {})
    apply_dict(cfg, overrides or {})
    validate(cfg)
    if not cfg.game:
        raise ConfigError("sslbench rl needs game=GAME (an ale-py ROM id, e.g. game=breakout or game=pong)")
    a = cfg.agent
    if a.learn_start < a.batch_size + a.n_step + 4:
        raise ConfigError(f"agent.learn_start={a.learn_start} is too early: the first update samples "
                          f"{a.batch_size} transitions that each need {a.n_step} steps after them; use at least "
                          f"{a.batch_size + a.n_step + 4}")
    if a.replay_capacity <= a.n_step + 4:
        raise ConfigError(f"agent.replay_capacity={a.replay_capacity} cannot hold an {a.n_step}-step return")
    return cfg


def to_dict(cfg: RLConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
