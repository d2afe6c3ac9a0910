"""The agent's replay buffer: every transition once, frames stored once, n-step returns on sampling.

Transition ``t`` (a global counter) keeps the newest frame of the observation the action was taken in,
the action, the (clipped) reward that followed, whether the return stops there (game over, or a lost
life with ``life_loss_terminal``), whether the episode ended there, and the index of its episode's first
transition. The observation of ``t`` is rebuilt as the stack of frames ``t-3 .. t``, each clamped to
its episode's first frame (as :class:`harness.data.atari.FrameStack` fills a stack at reset). A ring
of ``capacity`` slots; a sampled ``t`` keeps its 3 frames of history and its n next transitions in the
ring.

The n-step target of ``t``: R = sum_{j<k} gamma^j r_{t+j} up to the first stop k (inclusive) or n steps,
and, when no stop came within n steps, the bootstrap gamma^n Q(o_{t+n}) (``discount`` = gamma^n, else 0;
an episode cut by the frame limit is treated as a stop, a simplification). Its whole state is tensors
(:meth:`state_dict`), so a checkpoint carries it.
"""

from __future__ import annotations

import torch

from harness.data.atari import SIZE, STACK


class ReplayBuffer:
    def __init__(self, capacity: int, n_step: int, gamma: float, side: int = SIZE, stack: int = STACK):
        self.capacity, self.n_step, self.gamma, self.stack = int(capacity), int(n_step), float(gamma), int(stack)
        self.frames = torch.zeros(self.capacity, side, side, dtype=torch.uint8)
        self.actions = torch.zeros(self.capacity, dtype=torch.int64)
        self.rewards = torch.zeros(self.capacity, dtype=torch.float32)
        self.stops = torch.zeros(self.capacity, dtype=torch.bool)      # the return stops after this transition
        self.first = torch.zeros(self.capacity, dtype=torch.int64)     # global index of its episode's first transition
        self.count = 0                                                 # transitions added so far

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def add(self, frame, action: int, reward: float, stop: bool, episode_first: int) -> None:
        s = self.count % self.capacity
        self.frames[s] = torch.as_tensor(frame)
        self.actions[s] = action
        self.rewards[s] = reward
        self.stops[s] = stop
        self.first[s] = episode_first
        self.count += 1

    def observations(self, idx: torch.Tensor) -> torch.Tensor:
        """The stacked observations (B, STACK, H, W) uint8 of global indices ``idx``."""
        offsets = torch.arange(self.stack - 1, -1, -1)                 # 3, 2, 1, 0 frames back
        first = self.first[idx % self.capacity]
        frames = torch.maximum(idx[:, None] - offsets[None, :], first[:, None])
        return self.frames[frames % self.capacity]

    def sampleable(self) -> tuple[int, int]:
        """The global indices [lo, hi) that can be sampled: history and the n next transitions in the ring."""
        lo = max(0, self.count - self.capacity + self.stack)
        return lo, self.count - self.n_step

    def sample(self, batch: int, generator: torch.Generator):
        """A uniform batch (with replacement): (indices, observations uint8, actions, n-step returns, next observations uint8,
        discounts gamma^n or 0)."""
        lo, hi = self.sampleable()
        if hi <= lo:
            raise ValueError("the replay holds no transition with its n next ones yet")
        idx = torch.randint(lo, hi, (batch,), generator=generator)
        ahead = idx[:, None] + torch.arange(self.n_step)[None, :]      # t .. t+n-1
        slots = ahead % self.capacity
        stops = self.stops[slots]
        # alive[j]: no stop strictly before j (so reward j counts); the bootstrap needs no stop in all n
        alive = torch.cat([torch.ones(batch, 1, dtype=torch.bool), ~stops], dim=1).cumprod(dim=1).bool()
        powers = self.gamma ** torch.arange(self.n_step, dtype=torch.float32)
        returns = (self.rewards[slots] * powers * alive[:, :-1]).sum(dim=1)
        discounts = alive[:, -1].float() * self.gamma ** self.n_step
        nxt = idx + self.n_step
        return idx, self.observations(idx), self.actions[idx % self.capacity], returns, self.observations(nxt), discounts

    def state_dict(self) -> dict:
        n = len(self)
        return {"capacity": self.capacity, "count": self.count, "frames": self.frames[:n].clone(),
                "actions": self.actions[:n].clone(), "rewards": self.rewards[:n].clone(),
                "stops": self.stops[:n].clone(), "first": self.first[:n].clone()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"a replay of capacity {state['capacity']}, this one holds {self.capacity}")
        n = len(state["frames"])
        for name in ("frames", "actions", "rewards", "stops", "first"):
            getattr(self, name)[:n] = state[name]
        self.count = int(state["count"])
