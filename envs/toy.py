"""The seed's toy problem as a one-step gymnasium bandit.

Action ``b`` in {0, 1}; reward ``-(b - t)^2``; every episode is one step. With a Bernoulli policy
``pi(b = 1) = theta``, maximising the expected return is the toy's minimisation of
``E[(b - t)^2]`` (Grathwohl et al. 2018, Sec. 6.1): an RL-shaped check of the estimators.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class BernoulliToyEnv(gym.Env):
    """One-step bandit with reward ``-(action - target)^2`` and a constant observation."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, target: float = 0.499, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"target t={target} is outside [0, 1]")
        self.target = float(target)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._obs = np.ones(1, dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return self._obs.copy(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(int(action)):
            raise ValueError(f"action {action!r} is not in {{0, 1}}")
        reward = -((float(action) - self.target) ** 2)
        return self._obs.copy(), reward, True, False, {}

    def render(self) -> np.ndarray:
        """A blank frame (these envs have nothing to show; SB3 asks for ``rgb_array``)."""
        return np.zeros((8, 8, 3), dtype=np.uint8)
