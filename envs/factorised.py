"""Tasks with many independent binary action dimensions: where an action-dependent control
variate over the whole action has most to remove (each bit's score term carries the noise of
the other ``d - 1`` bits).

- :class:`MultiBinaryMatchEnv` (``relax_rl/MultiBinaryMatch-v0``): a one-step contextual bandit,
  match a random target of ``d`` bits.
- :class:`ParallelCartPoleEnv` (``relax_rl/ParallelCartPole-v0``): ``d`` independent CartPoles
  steered at once, a real MDP whose action dimension is a dial (``d = 1`` is CartPole-v1).

Both expose ``get_state`` / ``set_state`` so that the variance decomposition can restart them
from a stored state.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class MultiBinaryMatchEnv(gym.Env):
    """Each episode draws a target ``t ~ Bernoulli(0.5)^d`` (observed as floats); the agent
    answers ``d`` bits and gets ``mean_i 1[a_i = t_i] + sigma * N(0, 1)``; the episode ends.

    A random policy gets 0.5, the optimal one 1; ``reward_threshold`` 0.95.

    :param d: bits per action (default 32).
    :param sigma: standard deviation of the reward noise (default 0).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, d: int = 32, sigma: float = 0.0, render_mode: str | None = None) -> None:
        if int(d) != d or d < 1:
            raise ValueError(f"d must be a positive integer, got {d!r}")
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        self.render_mode = render_mode
        self.d, self.sigma = int(d), float(sigma)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.d,), dtype=np.float32)
        self.action_space = spaces.MultiBinary(self.d)
        self.target = np.zeros(self.d, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.target = self.np_random.integers(0, 2, self.d).astype(np.float32)
        return self.target.copy(), {}

    def expected_reward(self, action: np.ndarray) -> float:
        return float(np.mean(np.asarray(action, dtype=np.float32) == self.target))

    def step(self, action: np.ndarray):
        action = np.asarray(action)
        if action.shape != (self.d,):
            raise ValueError(f"action of shape {action.shape}; expected ({self.d},)")
        reward = self.expected_reward(action)
        if self.sigma > 0:
            reward += self.sigma * float(self.np_random.standard_normal())
        return self.target.copy(), reward, True, False, {}

    def get_state(self) -> dict[str, Any]:
        """What :meth:`set_state` needs to put the env back here (the target)."""
        return {"target": self.target.copy()}

    def set_state(self, state: dict[str, Any]) -> np.ndarray:
        """Restore a state from :meth:`get_state`; returns its observation."""
        self.target = np.asarray(state["target"], dtype=np.float32).copy()
        return self.target.copy()

    def render(self) -> np.ndarray:
        """A blank frame (nothing to show; SB3 asks for ``rgb_array``)."""
        return np.zeros((8, 8, 3), dtype=np.uint8)


class ParallelCartPoleEnv(gym.Env):
    """``d`` independent CartPole-v1 systems (the same physics, vectorised), one bit of action
    each (push left or right). Observation: the ``4 d`` concatenated states. Reward per step:
    the fraction of poles that were up when it began (CartPole-v1 pays +1 for the step on which
    its pole falls too). A pole that falls (angle beyond 12 degrees or cart beyond 2.4) stays
    down until the episode ends (its state frozen, its bit ignored); the episode ends when
    every pole is down, or is cut at 500 steps (registered with ``max_episode_steps=500``).
    So ``d = 1`` is CartPole-v1 exactly, a perfect policy earns 500 whatever ``d`` and
    ``reward_threshold`` 475 is CartPole-v1's rule.

    Why not reset a fallen pole on its own (the issue's first sketch): a fall would then cost
    one step's reward, and a random policy (a fall every ~22 steps) would earn ~477 > 475.

    :param d: number of poles (default 4).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    # CartPole-v1's constants (Barto, Sutton & Anderson 1983, as gymnasium has them).
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    theta_limit, x_limit = 12 * 2 * math.pi / 360, 2.4

    def __init__(self, d: int = 4, render_mode: str | None = None) -> None:
        if int(d) != d or d < 1:
            raise ValueError(f"d must be a positive integer, got {d!r}")
        self.render_mode = render_mode
        self.d = int(d)
        big = np.finfo(np.float32).max
        one = np.array([self.x_limit * 2, big, self.theta_limit * 2, big], dtype=np.float32)
        high = np.tile(one, self.d)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.MultiBinary(self.d)
        self.state = np.zeros((self.d, 4), dtype=np.float64)
        self.up = np.ones(self.d, dtype=bool)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-0.05, 0.05, size=(self.d, 4))
        self.up = np.ones(self.d, dtype=bool)
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return self.state.astype(np.float32).reshape(-1)

    def step(self, action: np.ndarray):
        action = np.asarray(action)
        if action.shape != (self.d,):
            raise ValueError(f"action of shape {action.shape}; expected ({self.d},)")
        x, x_dot, theta, theta_dot = self.state.T
        force = np.where(action > 0, self.force_mag, -self.force_mag)
        cos, sin = np.cos(theta), np.sin(theta)
        total_mass = self.masspole + self.masscart
        polemass_length = self.masspole * self.length
        temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
        theta_acc = (self.gravity * sin - cos * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * cos**2 / total_mass)
        )
        x_acc = temp - polemass_length * theta_acc * cos / total_mass
        # Euler steps, CartPole-v1's default integrator
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * x_acc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * theta_acc
        moved = np.stack([x, x_dot, theta, theta_dot], axis=1)
        reward = float(self.up.mean())  # the poles up when the step began
        self.state = np.where(self.up[:, None], moved, self.state)  # a fallen pole stays put
        fell = self.up & ((np.abs(x) > self.x_limit) | (np.abs(theta) > self.theta_limit))
        self.up = self.up & ~fell
        return self._obs(), reward, not self.up.any(), False, {"poles_up": int(self.up.sum())}

    def get_state(self) -> dict[str, Any]:
        return {"state": self.state.copy(), "up": self.up.copy()}

    def set_state(self, state: dict[str, Any]) -> np.ndarray:
        self.state = np.array(state["state"], dtype=np.float64)
        self.up = np.array(state["up"], dtype=bool)
        return self._obs()

    def render(self) -> np.ndarray:
        return np.zeros((8, 8, 3), dtype=np.uint8)
