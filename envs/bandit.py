"""A one-step contextual bandit: where an action-dependent control variate has a clean job.

Each episode draws one of ``n_contexts`` contexts uniformly (observed one-hot), the agent picks
one of ``n_actions`` arms and receives the fixed reward ``r[c, a]`` (drawn once from N(0, 1) with
``reward_seed``, no reward noise) and the episode ends. All of the gradient's variance then comes
from the context and the sampled arm, so a state baseline removes the first and only an
action-dependent control variate can touch the second (issue 10's ladder: 2, 10, 50 arms).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ContextualBanditEnv(gym.Env):
    """One-step bandit with one-hot contexts and a fixed N(0, 1) reward table.

    :param n_contexts: number of contexts (observation size).
    :param n_actions: number of arms.
    :param reward_seed: seed of the reward table (the same table in every copy of the env).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        n_contexts: int = 8,
        n_actions: int = 10,
        reward_seed: int = 0,
        render_mode: str | None = None,
    ) -> None:
        if n_contexts < 1 or n_actions < 2:
            raise ValueError(
                f"need n_contexts >= 1 and n_actions >= 2, got {n_contexts} and {n_actions}"
            )
        self.render_mode = render_mode
        self.n_contexts, self.n_actions = int(n_contexts), int(n_actions)
        self.rewards = np.random.default_rng(reward_seed).standard_normal(
            (self.n_contexts, self.n_actions)
        )
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.n_contexts,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.n_actions)
        self.context = 0

    def observe(self, context: int) -> np.ndarray:
        obs = np.zeros(self.n_contexts, dtype=np.float32)
        obs[context] = 1.0
        return obs

    @property
    def optimal_return(self) -> float:
        """Expected return of the best policy (mean over contexts of the best arm)."""
        return float(self.rewards.max(1).mean())

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.context = int(self.np_random.integers(self.n_contexts))
        return self.observe(self.context), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(int(action)):
            raise ValueError(f"action {action!r} is not in 0..{self.n_actions - 1}")
        reward = float(self.rewards[self.context, int(action)])
        return self.observe(self.context), reward, True, False, {}

    def render(self) -> np.ndarray:
        """A blank frame (nothing to show; SB3 asks for ``rgb_array``)."""
        return np.zeros((8, 8, 3), dtype=np.uint8)


class GaussianBanditEnv(gym.Env):
    """A one-step continuous bandit with a known policy gradient: observe a constant 1, answer
    ``a`` in ``Box(-bound, bound, (d,))``, receive ``-|a - target|^2`` (summed over the
    dimensions; the env sees the clipped action). For ``a ~ N(mean, std^2)`` far inside the
    bounds, ``E[r] = -|mean - target|^2 - |std|^2``: the exact gradient that LAX, REINFORCE and
    A2C are tested against.

    :param d: action dimensions.
    :param target: the best action (every dimension).
    :param bound: the action bounds.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(
        self, d: int = 2, target: float = 0.5, bound: float = 10.0, render_mode: str | None = None
    ) -> None:
        if d < 1 or bound <= 0:
            raise ValueError(f"need d >= 1 and bound > 0, got d={d}, bound={bound}")
        self.render_mode = render_mode
        self.target = float(target)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-bound, bound, shape=(d,), dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return np.ones(1, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        reward = -float(np.square(np.asarray(action, dtype=np.float64) - self.target).sum())
        return np.ones(1, dtype=np.float32), reward, True, False, {}

    def render(self) -> np.ndarray:
        """A blank frame (nothing to show; SB3 asks for ``rgb_array``)."""
        return np.zeros((8, 8, 3), dtype=np.uint8)
