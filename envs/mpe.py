"""Cooperative multi-agent particle worlds (PettingZoo's MPE, the ``mpe2`` package) as one
gymnasium env driven by a centralised policy: the agents' discrete actions form one
``MultiDiscrete`` action, their observations one vector, and they share one reward. The agents
are the action factors whose credit a learned action-dependent control variate can assign
(COMA, Foerster et al. 2018).

Needs the ``mpe`` extra (``pip install 'relax-rl[mpe]'``).
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import DependencyNotInstalled

REWARDS = ("sum", "mean")
#: an agent's moves in MPE: no-op, left, right, down, up
N_MOVES = 5
#: MPE's rendering objects (pygame's): not part of the world's state
_RENDERER = frozenset({"screen", "game_font", "viewer", "clock"})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> int:
    if not (_is_number(value) and math.isfinite(value) and value == int(value) and value >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class SimpleSpreadEnv(gym.Env):
    """MPE's ``simple_spread`` (Lowe et al. 2017): ``n_agents`` agents must cover as many
    landmarks, each agent choosing one of 5 moves a step. One joint action
    ``MultiDiscrete([5] * n_agents)``; the observation is the agents' own observations (velocity,
    position, landmarks and other agents relative to it) concatenated in agent order; the reward
    is the agents' rewards summed (or averaged). Each agent's reward is MPE's: ``1 - local_ratio``
    of the global reward (minus the summed distance from each landmark to its nearest agent) and
    ``local_ratio`` of its own (-1 a collision). Episodes are truncated after ``max_cycles``
    steps.

    :param n_agents: agents and landmarks (MPE's ``N``; default 3).
    :param max_cycles: steps an episode (MPE's default 25).
    :param local_ratio: weight of each agent's own collision penalty (MPE's default 0.5).
    :param reward: ``sum`` (default) or ``mean`` of the agents' rewards.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        n_agents: int = 3,
        max_cycles: int = 25,
        local_ratio: float = 0.5,
        reward: str = "sum",
        render_mode: str | None = None,
    ) -> None:
        n_agents, max_cycles = (
            _positive_int("n_agents", n_agents),
            _positive_int("max_cycles", max_cycles),
        )
        if not (_is_number(local_ratio) and 0.0 <= local_ratio <= 1.0):
            raise ValueError(f"local_ratio must be in [0, 1], got {local_ratio!r}")
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; valid: {', '.join(REWARDS)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unknown render_mode {render_mode!r}; valid: rgb_array")
        try:
            from mpe2 import simple_spread_v3
        except ImportError:
            raise DependencyNotInstalled(
                "mpe2 is not installed: relax_rl/SimpleSpread-v0 needs pip install 'relax-rl[mpe]'"
            ) from None
        self.n_agents, self.max_cycles = int(n_agents), int(max_cycles)
        self.reward_mode, self.render_mode = reward, render_mode
        self._world = simple_spread_v3.raw_env(
            N=self.n_agents,
            local_ratio=float(local_ratio),
            max_cycles=self.max_cycles,
            continuous_actions=False,
            render_mode=render_mode,
        )
        self.agents = list(self._world.possible_agents)
        obs_dim = sum(int(np.prod(self._world.observation_space(a).shape)) for a in self.agents)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(np.full(self.n_agents, N_MOVES, dtype=np.int64))

    def _observation(self) -> np.ndarray:
        return np.concatenate([self._world.observe(a) for a in self.agents]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # (seed None: the world's generator goes on, as gymnasium's envs do)
        self._world.reset(seed=seed)
        return self._observation(), {}

    def step(self, action: Any):
        action = np.asarray(action)
        if action.shape != (self.n_agents,):
            raise ValueError(f"action of shape {action.shape}; expected ({self.n_agents},)")
        if action.min() < 0 or action.max() >= N_MOVES:
            raise ValueError(f"each agent's move must be in [0, {N_MOVES - 1}], got {action}")
        for move in action:  # (MPE steps its world once every agent has moved, in agent order)
            self._world.step(int(move))
        rewards = np.array([self._world.rewards[a] for a in self.agents], dtype=np.float64)
        reward = float(rewards.sum() if self.reward_mode == "sum" else rewards.mean())
        terminated = any(self._world.terminations[a] for a in self.agents)
        truncated = any(self._world.truncations[a] for a in self.agents) and not terminated
        return self._observation(), reward, terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        return self._world.render()

    def close(self) -> None:
        self._world.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> SimpleSpreadEnv:
        """A copy in the same state (the variance decomposition restarts copies): MPE's envs
        pickle as their constructor call (gymnasium's EzPickle), a fresh world, so their state
        is copied here; the renderer's pygame objects are shared (each frame is drawn whole)."""
        clone = copy.copy(self)
        memo[id(self)] = clone
        world = object.__new__(type(self._world))
        for key, value in vars(self._world).items():
            shared = key in _RENDERER
            setattr(world, key, value if shared else copy.deepcopy(value, memo))
        clone._world = world
        clone._np_random = copy.deepcopy(self._np_random, memo)
        return clone
