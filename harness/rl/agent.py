"""The agent loop: a data-efficient DQN on an Atari game with CURL as its auxiliary loss, budgeted in
environment steps, checkpointed and resumable to the same result.

What it keeps of CURL's Atari agent (curl_rainbow, on data-efficient Rainbow; van Hasselt et al., 2019):
the encoder (``dqn_der``), dueling Q heads (256 hidden), double Q-learning with a target network copied
every 2000 steps, 20-step returns, a replay buffer (100k), one update per environment step after 1600
steps of experience, Adam (1e-4, eps 1.5e-4), batch 32, gradient norm clipped at 10, rewards clipped to
[-1, 1], a lost life ending the bootstrapped return, and the CURL loss on two crops of the sampled
observations added to the Q loss (``curl_weight``, 1 in curl_rainbow except 0.01 for Pong, Boxing,
Freeway and Private Eye), the Q loss on the un-cropped observations. What it drops: distributional RL
(C51; here the Huber loss on Q-values), noisy nets (here epsilon-greedy, 1 -> 0.1 over 5000 steps) and
prioritised replay (here uniform). The CURL loss is the method plugin's own ``training_step`` on views
of its own recipe (``methods/curl.py``), its key encoder updated by its ``on_step_end``: the agent
shares the plugin's encoder, it does not re-implement CURL.

Determinism: episode k starts from ``reset(seed=episode_seed(seed, k))``; every random draw of step t
(exploration, replay sampling, CURL's crops) comes from a generator seeded by (seed, t). Checkpoints
are written at episode ends (the environment then holds no state worth saving) with the networks, the
optimiser, the replay buffer and the counters, so a run resumed after a kill ends exactly as an
uninterrupted one. Episode returns (and the losses) reach ``log_fn`` when the checkpoint that covers
them is written, so a resumed run logs each point once.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core import checkpoint as ckpt
from harness.core.device import resolve_device
from harness.core.errors import CheckpointError
from harness.data.atari import SIZE, STACK, FrameStack, episode_seed, make_env
from harness.method.contract import Batch, DataInfo, StepInfo
from harness.models.backbones import build_backbone
from harness.models.blocks import EMATeacher
from harness.models.heads import mlp
from harness.rl.config import RLConfig, to_dict
from harness.rl.replay import ReplayBuffer

CHECKPOINT_NAME = "checkpoint.pt"
EVAL_STREAM = 1_000_003     # evaluation episodes come from another stream than training's
LOG_EVERY = 1000            # env steps between loss points


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2**62)


class DuelingQ(nn.Module):
    """Q(o, .) = V(h) + A(h, .) - mean_a A(h, a), h = encoder(o) (Wang et al., 2016)."""

    def __init__(self, encoder: nn.Module, value: nn.Module, advantage: nn.Module):
        super().__init__()
        self.encoder, self.value, self.advantage = encoder, value, advantage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        a = self.advantage(h)
        return self.value(h) + a - a.mean(dim=1, keepdim=True)


class Agent(nn.Module):
    """The method plugin (CURL: the encoder, its projection, W, the key encoder), the dueling heads on the
    shared encoder, and the target network (a copy of encoder + heads, refreshed every ``target_update``)."""

    def __init__(self, method: nn.Module, n_actions: int, hidden: int):
        super().__init__()
        self.method = method
        d = method.encoder().num_features
        self.value = mlp(d, hidden, 1, layers=2, bn=False)
        self.advantage = mlp(d, hidden, n_actions, layers=2, bn=False)
        self.target = EMATeacher(self.online())

    def online(self) -> DuelingQ:
        # built on the fly (not a registered submodule), so weights are not listed twice
        return DuelingQ(self.method.encoder(), self.value, self.advantage)


def observation_input(obs: torch.Tensor) -> torch.Tensor:
    """uint8 observations -> the networks' input: pixels / 255 (the agent's normalisation, CURL's)."""
    return obs.float().div_(255.0)


@dataclass
class RLResult:
    checkpoint: Path
    env_steps: int
    episodes: int
    seconds: float
    returns: list[float]
    last_mean: float               # mean return of the last K training episodes
    eval_returns: list[float] = field(default_factory=list)

    @property
    def eval_mean(self) -> float:
        return float(np.mean(self.eval_returns)) if self.eval_returns else float("nan")


class AgentLoop:
    def __init__(self, cfg: RLConfig, method_cls: type, run_dir: str | Path,
                 log_fn: Callable[[dict[str, float], int], None] | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.log_fn = log_fn or (lambda metrics, step: None)
        self.device = resolve_device(cfg.device)
        self.env = make_env(cfg.game)            # an unknown game fails here, before anything is written
        self.n_actions = int(self.env.action_space.n)
        torch.manual_seed(cfg.seed)
        backbone = build_backbone(cfg.backbone, STACK, SIZE)
        # the agent's observations are pixels / 255: the method sees the same normalisation in its views
        self.info = DataInfo(f"atari-{cfg.game}", STACK, SIZE, cfg.agent.replay_capacity, 1,
                             mean=(0.0,) * STACK, std=(1.0,) * STACK)
        self.method = method_cls(backbone, method_cls.make_config(dict(cfg.method_cfg)), self.info)
        self.recipe = self.method.view_recipe(self.info)
        self.recipe.check(STACK, SIZE, method_cls.name)
        self.agent = Agent(self.method, self.n_actions, cfg.agent.hidden).to(self.device)
        params = [p for p in self.agent.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.agent.lr, eps=cfg.agent.adam_eps, foreach=True)
        self.replay = ReplayBuffer(cfg.agent.replay_capacity, cfg.agent.n_step, cfg.agent.gamma)
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        self.step = 0              # env steps taken
        self.updates = 0
        self.episodes = 0
        self.returns: list[float] = []
        self.elapsed = 0.0
        self.eval_returns: list[float] = []
        self._pending: list[tuple[dict[str, float], int]] = []
        self._losses: dict[str, list[float]] = {"q_loss": [], "curl_loss": []}
        self._restored: bool | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self, finished: bool) -> dict[str, Any]:
        return {"format": ckpt.FORMAT_VERSION, "kind": "rl", "model": self.agent.state_dict(),
                "optimizer": self.optimizer.state_dict(), "replay": self.replay.state_dict(), "step": self.step,
                "updates": self.updates, "episodes": self.episodes, "returns": torch.tensor(self.returns, dtype=torch.float64),
                "elapsed": self.elapsed, "finished": finished, "rng": torch.get_rng_state(),
                "eval_returns": torch.tensor(self.eval_returns, dtype=torch.float64), "config": to_dict(self.cfg)}

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        if state.get("kind") != "rl":
            raise CheckpointError(f"{path} is not an agent checkpoint (written by 'sslbench rl'); rerun without --resume")
        saved, now = dict(state["config"]), to_dict(self.cfg)
        ignore = ("tracking", "out_dir", "progress", "checkpoint_every_seconds", "threads", "device", "preset")
        diff = sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k))
        if diff:
            raise CheckpointError(f"cannot resume: {path} was written with another config ({', '.join(diff[:4])}); "
                                  "rerun without --resume to start over")
        try:
            self.agent.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.replay.load_state_dict(state["replay"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot resume from {path} ({str(e)[:120]}); rerun without --resume") from None
        self.step, self.updates, self.episodes = int(state["step"]), int(state["updates"]), int(state["episodes"])
        self.returns = [float(r) for r in state["returns"]]
        self.eval_returns = [float(r) for r in state["eval_returns"]]
        self.elapsed = float(state["elapsed"])
        torch.set_rng_state(state["rng"])

    def save(self, finished: bool = False) -> None:
        """Write the checkpoint atomically, then hand the metrics it covers to ``log_fn``."""
        ckpt.save_atomic(self.state_dict(finished), self.checkpoint_path)
        pending, self._pending = self._pending, []
        for metrics, step in pending:
            self.log_fn(metrics, step)

    def restore(self) -> bool:
        """Continue from the run folder's checkpoint (once). Returns whether there was one."""
        if self._restored is None:
            self._restored = self.checkpoint_path.exists()
            if self._restored:
                self.load_state(ckpt.load(self.checkpoint_path, map_location=str(self.device)), self.checkpoint_path)
            else:
                print(f"sslbench: no checkpoint at {self.checkpoint_path}; starting from scratch", file=sys.stderr)
        return self._restored

    def run_params(self) -> dict[str, Any]:
        out = {f"method_config.{k}": v for k, v in dataclasses.asdict(self.method.cfg).items()}
        out.update({"rl.n_actions": self.n_actions, "rl.method": type(self.method).name,
                    "rl.resolved.device": self.device.type})
        return out

    # ------------------------------------------------------------------ acting
    def epsilon(self) -> float:
        a = self.cfg.agent
        return a.eps_end + (a.eps_start - a.eps_end) * max(0.0, 1.0 - self.step / a.eps_decay_steps)

    @torch.no_grad()
    def act(self, q: DuelingQ, obs: np.ndarray, epsilon: float, gen: torch.Generator) -> int:
        explore = float(torch.rand((), generator=gen)) < epsilon
        action = int(torch.randint(0, self.n_actions, (), generator=gen))   # drawn either way: one stream
        if explore:
            return action
        x = observation_input(torch.from_numpy(obs)[None].to(self.device))
        return int(q(x).argmax(dim=1))

    # ------------------------------------------------------------------ learning
    def learn(self) -> None:
        cfg, a = self.cfg, self.cfg.agent
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, self.step, 1))
        idx, obs, actions, returns, next_obs, discounts = self.replay.sample(a.batch_size, gen)
        online = self.agent.online()
        x = observation_input(obs.to(self.device))
        q = online(x).gather(1, actions.to(self.device)[:, None])[:, 0]
        with torch.no_grad():   # double Q: the online network picks, the target network values
            xn = observation_input(next_obs.to(self.device))
            best = online(xn).argmax(dim=1, keepdim=True)
            target = returns.to(self.device) + discounts.to(self.device) * self.agent.target(xn).gather(1, best)[:, 0]
        loss = q_loss = F.smooth_l1_loss(q, target)
        info = StepInfo(self.updates, self.step / cfg.env_steps, cfg.env_steps, gen)
        if cfg.curl_weight > 0:
            views = self.recipe(obs, gen, self.info.mean, self.info.std)     # drawn on the CPU (its generator)
            views.images = [v.to(self.device) for v in views.images]
            curl = self.method.training_step(Batch(views, idx), info)["loss"]
            loss = q_loss + cfg.curl_weight * curl
            self._losses["curl_loss"].append(float(curl.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in self.agent.parameters() if p.requires_grad], a.grad_clip)
        self.optimizer.step()
        if cfg.curl_weight > 0:
            self.method.on_step_end(info)      # the key encoder's EMA
        self._losses["q_loss"].append(float(q_loss.detach()))
        self.updates += 1

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> RLResult:
        cfg, a = self.cfg, self.cfg.agent
        if resume:
            self.restore()
        if self.step >= cfg.env_steps:       # finished before: the evaluation (deterministic) is all that may be left
            if not self.eval_returns:
                self.eval_returns = self.evaluate()
                self.save(finished=True)
            return self.result()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.agent.train()
        last_save = time.perf_counter()
        t_start = time.perf_counter() - self.elapsed
        stack = FrameStack()
        bar = _Progress(cfg.env_steps, self.step) if cfg.progress else None
        while self.step < cfg.env_steps:
            # an episode: seeded by its index, so a resumed run replays it exactly
            frame, info = self.env.reset(seed=episode_seed(cfg.seed, self.episodes))
            obs, first, lives = stack.reset(frame), self.step, int(info.get("lives", 0))
            ep_return, ep_len, done = 0.0, 0, False
            while not done and self.step < cfg.env_steps:
                gen = torch.Generator().manual_seed(step_seed(cfg.seed, self.step))
                action = self.act(self.agent.online(), obs, self.epsilon(), gen)
                frame, reward, terminated, truncated, info = self.env.step(action)
                life_lost = int(info.get("lives", 0)) < lives
                lives = int(info.get("lives", 0))
                done = terminated or truncated
                stop = done or (a.life_loss_terminal and life_lost)
                r = max(-a.reward_clip, min(a.reward_clip, reward)) if a.reward_clip > 0 else reward
                self.replay.add(obs[-1], action, r, stop, first)
                obs = stack.push(frame)
                self.step += 1
                ep_return += reward
                ep_len += 1
                if self.step >= a.learn_start and self.step % a.update_every == 0:
                    self.learn()
                if self.step >= a.learn_start and (self.step - a.learn_start) % a.target_update == 0:
                    self.agent.target.update(self.agent.online(), 0.0)    # a hard copy
                if self.step % LOG_EVERY == 0:
                    self._log_losses()
                if bar is not None:
                    bar.update(self.step, self.episodes, self.returns, cfg.last_episodes)
            if done:
                self.episodes += 1
                self.returns.append(ep_return)
                self._pending.append(({"rl/episode_return": ep_return, "rl/episode_length": ep_len,
                                       "rl/epsilon": self.epsilon()}, self.step))
                self.elapsed = time.perf_counter() - t_start
                if time.perf_counter() - last_save >= cfg.checkpoint_every_seconds and self.step < cfg.env_steps:
                    self.save()
                    last_save = time.perf_counter()
        if bar is not None:
            bar.close()
        self._log_losses()
        self.elapsed = time.perf_counter() - t_start
        self.save(finished=True)     # the budget is spent: what is left is the (deterministic) evaluation
        self.eval_returns = self.evaluate()
        self.save(finished=True)
        return self.result()

    def _log_losses(self) -> None:
        point = {f"rl/{k}": float(np.mean(v)) for k, v in self._losses.items() if v}
        if point:
            self._pending.append((point, self.step))
        self._losses = {k: [] for k in self._losses}

    def result(self) -> RLResult:
        k = self.cfg.last_episodes
        last = float(np.mean(self.returns[-k:])) if self.returns else float("nan")
        return RLResult(self.checkpoint_path, self.step, self.episodes, self.elapsed, list(self.returns), last,
                        list(self.eval_returns))

    @torch.no_grad()
    def evaluate(self) -> list[float]:
        """``eval_episodes`` seeded episodes (their own seed stream) with epsilon-greedy ``eval_epsilon``."""
        cfg = self.cfg
        q = self.agent.online()
        self.agent.eval()
        out, stack = [], FrameStack()
        for k in range(cfg.eval_episodes):
            frame, _ = self.env.reset(seed=episode_seed(cfg.seed + EVAL_STREAM, k))
            obs, total, done, t = stack.reset(frame), 0.0, False, 0
            while not done:
                gen = torch.Generator().manual_seed(step_seed(cfg.seed + EVAL_STREAM, t, k + 2))
                frame, reward, terminated, truncated, _ = self.env.step(self.act(q, obs, cfg.eval_epsilon, gen))
                obs = stack.push(frame)
                total += reward
                done = terminated or truncated
                t += 1
            out.append(total)
        self.agent.train()
        return out


class _Progress:
    """A tqdm bar over env steps with the recent mean return (stderr)."""

    def __init__(self, total: int, start: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=start, unit="step", file=sys.stderr, mininterval=2.0, leave=False)
        self.last = start

    def update(self, step: int, episodes: int, returns: list[float], k: int) -> None:
        self.bar.update(step - self.last)
        self.last = step
        if returns and step % 500 == 0:
            self.bar.set_postfix_str(f"episodes {episodes}, return(last {k}) {np.mean(returns[-k:]):.2f}")

    def close(self) -> None:
        self.bar.close()
