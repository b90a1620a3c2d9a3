"""Small envs whose exact policy gradient is computable, for testing estimators in RL form."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ChainEnv(gym.Env):
    """A chain of ``length`` cells walked for exactly ``horizon`` steps from cell 0.

    Action 1 moves right, 0 moves left (walls at both ends). Reward: ``+1`` for each step that
    ends in the last cell, ``-0.1`` for each other step. Observation: one-hot cell followed by
    one-hot time, so the state is Markov. With ``2**horizon`` action sequences the exact
    expected return, and so the exact policy gradient, is a finite sum.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, length: int = 3, horizon: int = 3, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.length, self.horizon = length, horizon
        self.observation_space = spaces.Box(0.0, 1.0, shape=(length + horizon,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.pos = self.t = 0

    def observe(self, pos: int, t: int) -> np.ndarray:
        obs = np.zeros(self.length + self.horizon, dtype=np.float32)
        obs[pos] = 1.0
        obs[self.length + min(t, self.horizon - 1)] = 1.0
        return obs

    def transition(self, pos: int, action: int) -> tuple[int, float]:
        """Next cell and reward of ``action`` taken in cell ``pos``."""
        nxt = min(pos + 1, self.length - 1) if action == 1 else max(pos - 1, 0)
        return nxt, (1.0 if nxt == self.length - 1 else -0.1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pos = self.t = 0
        return self.observe(0, 0), {}

    def step(self, action: int):
        self.pos, reward = self.transition(self.pos, int(action))
        self.t += 1
        return self.observe(self.pos, self.t), reward, self.t >= self.horizon, False, {}

    def render(self) -> np.ndarray:
        """A blank frame (these envs have nothing to show; SB3 asks for ``rgb_array``)."""
        return np.zeros((8, 8, 3), dtype=np.uint8)
